"""Which dataset layouts a folder holds, from its files alone (``mnv2-check-data PATH``).

The layouts are those the readers take: COCO (``annotations/instances_<split>.json`` beside ``<split>/``), PASCAL VOC
segmentation (the ``VOC2012`` folder or the ``VOCdevkit`` above it), CIFAR-10's python batches, the labelling tools'
detection layouts (YOLO, VOC XML, CVAT, LabelMe, Label Studio: ``data/formats``), and torchvision's ImageFolder
(``<split>/<class>/*.jpg``), the last only where none of the others is found (a COCO or VOC folder holds folders of
images too).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layout", "LOOKED_FOR", "detect_layouts"]

LOOKED_FOR = ("COCO (annotations/instances_<split>.json and <split>/ image folders)",
              "VOC (JPEGImages/, SegmentationClass/ or SegmentationClassAug/, ImageSets/Segmentation/<split>.txt; "
              "or a VOCdevkit holding VOC2012/)",
              "ImageFolder (<split>/<class>/*.jpg)",
              "CIFAR-10 python batches (cifar-10-batches-py/)",
              "YOLO (data.yaml, images/, labels/)", "VOC XML (Annotations/, ImageSets/Main/)",
              "CVAT (annotations.xml, images/)", "LabelMe (<split>/*.json)", "Label Studio (<split>.json, images/)")
_CIFAR_FILES = ("batches.meta", "data_batch_1", "test_batch")


@dataclass(frozen=True)
class Layout:
    """A dataset found in a folder: its ``data.format``, the folder its reader takes (``data.root``) and its splits."""

    format: str
    root: Path
    splits: tuple[str, ...]


def _coco(path: Path) -> Layout | None:
    files = sorted((path / "annotations").glob("instances_*.json"))
    splits = tuple(f.stem.removeprefix("instances_") for f in files)
    return Layout("coco", path, splits) if splits else None


def _read_ids(path: Path) -> set[str]:
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


def _voc(path: Path) -> Layout | None:
    for root in (path, path / "VOC2012"):
        lists = root / "ImageSets" / "Segmentation"
        if not ((root / "JPEGImages").is_dir() and lists.is_dir()):
            continue
        label_dirs = {d for d in ("SegmentationClass", "SegmentationClassAug") if (root / d).is_dir()}
        if not label_dirs:
            continue
        # Smallest list first; a list whose ids earlier ones (of the same label folder) already cover is not read
        # again: VOC's trainval is train + val. trainaug reads SegmentationClassAug, so it needs that folder.
        splits, covered = [], {d: set() for d in label_dirs}
        for f in sorted(lists.glob("*.txt"), key=lambda f: (f.stat().st_size, f.stem)):
            label_dir = "SegmentationClassAug" if f.stem == "trainaug" else "SegmentationClass"
            ids = _read_ids(f)
            if label_dir in label_dirs and not (ids and ids <= covered[label_dir]):
                splits.append(f.stem)
                covered[label_dir] |= ids
        return Layout("voc", root, tuple(sorted(splits))) if splits else None
    return None


def _label_tool(path: Path) -> Layout | None:
    """A labelling tool's detection layout (``data/formats``: YOLO, VOC XML, CVAT, LabelMe, Label Studio)."""
    from ..errors import DataError
    from .formats import LABEL_TOOL_FORMATS, detect_format, format_splits

    fmt = detect_format(path)
    if fmt not in LABEL_TOOL_FORMATS:
        return None
    try:
        splits = format_splits(fmt, path)
    except DataError:  # an unreadable data.yaml / annotations.xml: check_data reports it on a default split
        splits = ("train",) if fmt != "cvat" else ("default",)
    return Layout(fmt, path, splits)


def _cifar(path: Path) -> Layout | None:
    for base in (path / "cifar-10-batches-py", path):
        if any((base / name).is_file() for name in _CIFAR_FILES):
            return Layout("cifar10", base.parent, ("train", "test"))
    return None


def _class_folder(folder: Path) -> str:
    """``"images"`` if it holds image files (directly), ``"empty"`` if it holds no file at all, else ``"other"``."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    if not files:
        return "empty"
    return "images" if any(f.suffix.lower() in IMG_EXTENSIONS for f in files) else "other"


def _imagefolder(path: Path) -> Layout | None:
    """Splits: sub-folders whose sub-folders (the classes) hold images directly, or nothing (an empty class is a
    problem check_data reports), and at least one of them images."""
    splits = []
    for split in sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")):
        kinds = {_class_folder(d) for d in split.iterdir() if d.is_dir() and not d.name.startswith(".")}
        if "images" in kinds and "other" not in kinds:
            splits.append(split.name)
    return Layout("imagefolder", path, tuple(splits)) if splits else None


def detect_layouts(path: str | os.PathLike) -> list[Layout]:
    """The dataset layouts in ``path`` (COCO, VOC, CIFAR-10, else ImageFolder); empty when none is recognised."""
    path = Path(path).expanduser()
    found = [layout for detect in (_coco, _voc, _cifar, _label_tool) if (layout := detect(path)) is not None]
    if any(layout.format == "voc" for layout in found):  # VOC2012 also holds Annotations/: its layout is VOC's
        found = [layout for layout in found if layout.format != "voc_xml"]
    if not found and (layout := _imagefolder(path)) is not None:
        found.append(layout)
    return found
