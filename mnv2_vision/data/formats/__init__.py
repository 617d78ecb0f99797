"""Detection labels in the formats labelling tools export, read into one form: a COCO dataset dict.

``read_split(fmt, root, split)`` returns a ``FormatSplit`` (the dict, the folder its image names are relative to,
and the problems found) that ``CocoDetection`` takes in place of an annotation file, so training, evaluation, the
painted masks and ``check_data`` work on every format alike. ``write_splits`` writes such dicts in any format
(``tools/convert_data.py``). Conventions of each format are in its module's docstring:

========== ==============================================================================================
format     layout
========== ==============================================================================================
coco       ``annotations/instances_<split>.json`` + ``<split>/`` images
yolo       ``data.yaml`` (names, train/val paths) + ``images/<split>/`` + ``labels/<split>/*.txt``
voc_xml    ``Annotations/*.xml`` + ``JPEGImages/`` + ``ImageSets/Main/<split>.txt``
cvat       ``annotations.xml`` (CVAT for images 1.1; split = ``subset``) + ``images/``
labelme    ``<split>/*.json`` beside the images
labelstudio ``<split>.json`` (Label Studio JSON export) + ``images/``
========== ==============================================================================================
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..verify import Problem
from .builder import CocoBuilder, FormatSplit, Place
from .cvat import CVAT_FILE, cvat_names, cvat_splits, read_cvat, write_cvat
from .labelme import labelme_names, labelme_splits, read_labelme, write_labelme
from .labelstudio import labelstudio_names, labelstudio_splits, read_labelstudio, write_labelstudio
from .voc_xml import read_voc_xml, voc_xml_names, voc_xml_splits, write_voc_xml
from .yolo import find_data_yaml, read_yolo, write_yolo, yolo_names, yolo_splits

__all__ = ["DETECTION_FORMATS", "LABEL_TOOL_FORMATS", "FormatSplit", "CocoBuilder", "read_split", "format_splits",
           "format_names", "detect_format", "write_splits", "read_for_training",
           "check_format", "dataset_kwargs"]

log = logging.getLogger("mnv2_vision")

LABEL_TOOL_FORMATS = ("yolo", "voc_xml", "cvat", "labelme", "labelstudio")
DETECTION_FORMATS = ("coco", *LABEL_TOOL_FORMATS)


def _check(fmt: str) -> None:
    if fmt not in DETECTION_FORMATS:
        raise ValueError(f"unknown detection format {fmt!r}; choose from {list(DETECTION_FORMATS)}")


def read_split(fmt: str, root: str | os.PathLike, split: str) -> FormatSplit:
    """``split`` of the ``fmt`` dataset at ``root`` as a COCO dict, with the problems the reader found."""
    _check(fmt)
    root = Path(root)
    if fmt == "coco":
        return _read_coco(root, split)
    if fmt == "yolo":
        return read_yolo(root, split)
    if fmt == "voc_xml":
        return read_voc_xml(root, split)
    if fmt == "cvat":
        return read_cvat(root, split)
    if fmt == "labelme":
        return read_labelme(root, split)
    return read_labelstudio(root, split)


def read_for_training(fmt: str, root: str | os.PathLike, split: str) -> FormatSplit:
    """``read_split`` for training and evaluation: a problem that loses labels (an unparsable file, an unknown
    class, a malformed box) is a ``DataError`` naming the first and counting the rest; the others (an image
    without labels, a label file without its image, a shape of another kind) leave that item out with one
    warning."""
    from ...errors import DataError

    result = read_split(fmt, root, split)
    if result.fatal:
        first, more = result.fatal[0], len(result.fatal) - 1
        raise DataError(f"{first}" + (f" (and {more} more)" if more else "")
                        + "; tools/check_data.py lists every one")
    if result.problems:
        log.warning("%s: %d item(s) left out (%s); tools/check_data.py lists every one", result.source,
                    len(result.problems), "; ".join(str(p) for p in result.problems[:3])
                    + (" ..." if len(result.problems) > 3 else ""))
    return result


def dataset_kwargs(fmt: str, root: str | os.PathLike, split: str) -> dict:
    """``CocoDetection``'s keyword arguments for ``split`` of a ``fmt`` dataset: none for COCO (it reads its
    file), else the labels read into a COCO dict (``read_for_training``) and where they came from."""
    if fmt == "coco":
        return {}
    read = read_for_training(fmt, root, split)
    return {"data": read.data, "image_dir": read.image_dir, "source": read.source}


def check_format(fmt: str, root: str | os.PathLike, split: str, scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of ``split`` of a labelling-tool dataset, one per file or annotation: what its reader could
    not use (unparsable or empty files, unknown classes, images without labels, label files without images) and
    then ``check_coco_dataset``'s checks of what it read (images that cannot be decoded or differ in size from
    their labels, boxes outside the image, polygons)."""
    from ...errors import DataError
    from ..verify import check_coco_dataset

    try:
        read = read_split(fmt, root, split)
    except DataError as e:  # the dataset as a whole: data.yaml missing, split not listed, XML not parsable
        return [Problem(str(root), "unreadable_annotations", str(e))]
    return read.problems + check_coco_dataset(read.data, read.source, read.image_dir, None, scanned,
                                              boxes_without_masks=True)


def _read_coco(root: Path, split: str) -> FormatSplit:
    from ...errors import DataError
    from ..coco import annotation_file
    from ..verify import read_coco_annotations

    path = annotation_file(root, split)
    data, problems = read_coco_annotations(path)
    if data is None:
        raise DataError(f"cannot read COCO annotations {path}: {problems[0].detail}")
    return FormatSplit(data, root / split, path, [])


def format_splits(fmt: str, root: str | os.PathLike) -> tuple[str, ...]:
    """The split names the ``fmt`` dataset at ``root`` holds."""
    _check(fmt)
    root = Path(root)
    if fmt == "coco":
        return tuple(sorted(f.stem.removeprefix("instances_") for f in (root / "annotations").glob("instances_*.json")))
    return {"yolo": yolo_splits, "voc_xml": voc_xml_splits, "cvat": cvat_splits, "labelme": labelme_splits,
            "labelstudio": labelstudio_splits}[fmt](root)


def format_names(fmt: str, root: str | os.PathLike, split: str | None = None) -> list[str]:
    """The class names of the ``fmt`` dataset at ``root``, in label order (label ``i`` is ``names[i - 1]``);
    COCO: of ``split``'s annotation file, by category id."""
    _check(fmt)
    root = Path(root)
    if fmt == "coco":
        cats = read_split("coco", root, split or format_splits("coco", root)[0]).data.get("categories", [])
        return [str(c["name"]) for c in sorted(cats, key=lambda c: c["id"])]
    return {"yolo": yolo_names, "voc_xml": voc_xml_names, "cvat": cvat_names, "labelme": labelme_names,
            "labelstudio": labelstudio_names}[fmt](root)


def detect_format(root: str | os.PathLike) -> str | None:
    """The labelling-tool format of the folder ``root`` from its files alone, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    if find_data_yaml(root) is not None and ((root / "labels").is_dir() or (root / "images").is_dir()):
        return "yolo"
    if (root / "Annotations").is_dir() and (root / "ImageSets" / "Main").is_dir():
        return "voc_xml"
    if (root / CVAT_FILE).is_file():
        return "cvat"
    if any((root / "annotations").glob("instances_*.json")):
        return "coco"
    if (root / "images").is_dir() and any(root.glob("*.json")):
        return "labelstudio"
    if any(root.glob("*/*.json")):
        return "labelme"
    return None


def write_splits(fmt: str, splits: dict[str, tuple[dict, Path]], out: Path, place: Place) -> None:
    """Write ``splits`` (name → (COCO dict, folder its image names are relative to)) as a ``fmt`` dataset in
    ``out``; ``place(src, dst)`` puts each image (a link or a copy)."""
    _check(fmt)
    if fmt == "coco":
        for split, (data, image_dir) in splits.items():
            for img in data["images"]:
                place(image_dir / img["file_name"], out / split / img["file_name"])
            clean = {**data, "annotations": [{k: v for k, v in a.items() if k != "source"}
                                             for a in data.get("annotations", [])]}
            (out / "annotations").mkdir(parents=True, exist_ok=True)
            (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(clean))
        return
    writer = {"yolo": write_yolo, "voc_xml": write_voc_xml, "cvat": write_cvat, "labelme": write_labelme,
              "labelstudio": write_labelstudio}[fmt]
    writer(splits, out, place)


