"""Every dataset check: one ``Problem`` a defect, naming the file.

``check_coco``, ``check_voc``, ``check_imagefolder`` and ``check_cifar`` read every annotation and decode every image
of a dataset (``tools/check_data.py``). ``check_flowers`` and the per-item checks below them (``image_problem``,
``voc_item_problems``, ``read_coco_annotations``, ``coco_reference_problems``) also serve ``prepare.verify``
(``tools/prepare_data.py --verify``), which counts a finished download against the expected sizes and reads image
headers only.
Training and evaluation do not stop on such defects: they apply the policy in ``data/io/skip.py``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import DataError
from .coco import coco_structure_problems, crowd_flag
from .io.images import load_rgb

__all__ = ["Problem", "OVERFLOW_TOLERANCE", "image_problem", "label_map_problems", "voc_item_problems",
           "read_coco_annotations", "coco_reference_problems", "check_coco", "check_coco_dataset", "check_voc",
           "check_imagefolder", "check_cifar", "check_flowers"]


# Boxes may overflow the image by this many pixels before check_data reports them: real COCO boxes often end a
# fraction of a pixel past the border (float rounding), and training clips them anyway.
OVERFLOW_TOLERANCE = 1.0
_ORIENTATION_TAG = 0x0112  # EXIF orientation; 5..8 turn the image by 90°


@dataclass(frozen=True)
class Problem:
    """One defect: the file it is in, a kind (``missing_file``, ``unreadable_image``, ...) and a readable detail.

    ``value`` is the offending value alone where there is one (a label map's mode, its values outside the classes),
    for reports that list it without the sentence around it (``prepare.verify``)."""

    file: str
    kind: str
    detail: str
    value: Any = field(default=None, compare=False)

    def __str__(self) -> str:
        return f"{self.file}: [{self.kind}] {self.detail}"


def _read_header(path: Path) -> tuple[int, int]:
    """The upright (H, W) from the header alone (EXIF orientation applied, pixels not decoded)."""
    with Image.open(path) as im:
        w, h = im.size
        turned = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1) in (5, 6, 7, 8)
    return (w, h) if turned else (h, w)


def image_problem(path: Path, decode: bool = True) -> tuple[Problem | None, tuple[int, int] | None]:
    """Whether an image can be used → (problem or None, upright (H, W) or None).

    Args:
        path: the image file.
        decode: decode every pixel, EXIF-upright, as training does (finds truncated and corrupt files); ``False``
            reads the header only (finds missing files and files that are not images, at a fraction of the cost).
    """
    try:
        if not decode:
            return None, _read_header(path)
        image = load_rgb(path)
    except FileNotFoundError:
        return Problem(str(path), "missing_file", "image file does not exist"), None
    except ValueError as e:  # load_rgb's one error for a file it cannot read
        return Problem(str(path), "unreadable_image", str(e).split(": ", 1)[-1]), None
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:  # the header read's own errors
        return Problem(str(path), "unreadable_image", f"{type(e).__name__}: {e}"), None
    return None, (int(image.shape[0]), int(image.shape[1]))


def label_map_problems(path: Path, size: tuple[int, int] | None, num_classes: int,
                       modes: Sequence[str]) -> list[Problem]:
    """A label map's problems: missing, unreadable, of a mode not in ``modes`` (colours, not class indices), of
    another size than its image (``size`` (H, W), when known), values outside 0..K-1 and 255."""
    from .io.labels import IGNORE_INDEX

    if not path.is_file():
        return [Problem(str(path), "missing_file", "label map does not exist")]
    try:
        with Image.open(path) as im:
            mode = im.mode
            label = np.array(im)
    except (OSError, SyntaxError, ValueError) as e:
        return [Problem(str(path), "unreadable_label", f"{type(e).__name__}: {e}")]
    if mode not in modes:
        return [Problem(str(path), "label_mode", f"mode {mode!r}, expected {' or '.join(modes)} (class indices, not "
                        "colours)", mode)]
    problems = []
    if size is not None and label.shape[:2] != size:
        problems.append(Problem(str(path), "mask_size_mismatch", f"mask is {label.shape[0]}x{label.shape[1]} (HxW) "
                                f"but its image is {size[0]}x{size[1]}"))
    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        problems.append(Problem(str(path), "mask_values", f"values {bad[:8].tolist()} outside 0..{num_classes - 1} "
                                f"and {IGNORE_INDEX} (ignore)", bad.tolist()))
    return problems


def voc_item_problems(root: Path, image_id: str, label_dir: str, num_classes: int,
                      decode: bool = True) -> tuple[list[Problem], list[Problem]]:
    """(image problems, label map problems) of one id of a VOC-layout folder ``root``; labels in ``label_dir``
    (``SegmentationClass``: palette PNGs; ``SegmentationClassAug``: palette or grey, as SBD's release has them)."""
    problem, size = image_problem(root / "JPEGImages" / f"{image_id}.jpg", decode)
    modes = ("P", "L") if label_dir == "SegmentationClassAug" else ("P",)
    return [problem] if problem else [], label_map_problems(root / label_dir / f"{image_id}.png", size, num_classes,
                                                            modes)


# ------------------------------------------------------------------------------------------------------------ COCO
def read_coco_annotations(ann_file: Path) -> tuple[dict | None, list[Problem]]:
    """The parsed annotation file, or None and the problems that make it unusable as a whole (missing, not JSON,
    not shaped as COCO annotations: training refuses such a file)."""
    if not ann_file.is_file():
        return None, [Problem(str(ann_file), "missing_file", "annotation file does not exist")]
    try:
        data = json.loads(ann_file.read_bytes())
    except (OSError, ValueError) as e:  # unreadable, not JSON, or not UTF-8
        return None, [Problem(str(ann_file), "unreadable_annotations", f"{type(e).__name__}: {e}")]
    structure = coco_structure_problems(data)
    return (None if structure else data), [Problem(str(ann_file), "unreadable_annotations", p) for p in structure]


def coco_reference_problems(data: dict, ann_file: Path, image_dir: Path) -> list[Problem]:
    """Annotations of images the file does not list (``orphan_annotation``, in the annotation file) and of
    categories it does not define (``unknown_category``, in the image's file)."""
    cat_ids = {c.get("id") for c in data.get("categories", [])}
    files = {img.get("id"): image_dir / str(img.get("file_name")) for img in data["images"]}
    problems = []
    for a in data.get("annotations", []):
        if a.get("image_id") not in files:
            problems.append(Problem(str(ann_file), "orphan_annotation",
                                    f"annotation {a.get('id')} refers to image_id {a.get('image_id')}, not listed"))
        elif a.get("category_id") not in cat_ids:
            problems.append(Problem(str(files[a.get("image_id")]), "unknown_category", f"annotation {a.get('id')}: "
                                    f"category_id {a.get('category_id')} is not in the categories {sorted(cat_ids)}"))
    return problems


def _box_problems(where: str, ann: dict, size: tuple[int, int] | None) -> list[Problem]:
    bbox = ann.get("bbox")
    aid = ann.get("id")
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return [Problem(where, "malformed_box", f"annotation {aid}: bbox {bbox!r} is not [x, y, w, h]")]
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError, OverflowError):
        return [Problem(where, "malformed_box", f"annotation {aid}: bbox {bbox!r} is not numeric")]
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return [Problem(where, "nonfinite_box", f"annotation {aid}: bbox {bbox} has NaN/inf")]
    if w < 0 or h < 0:
        return [Problem(where, "negative_box", f"annotation {aid}: bbox {bbox} has negative width or height")]
    if w == 0 or h == 0:
        return [Problem(where, "degenerate_box", f"annotation {aid}: bbox {bbox} has zero area")]
    if size is not None:
        hh, ww = size
        t = OVERFLOW_TOLERANCE
        if x < -t or y < -t or x + w > ww + t or y + h > hh + t:
            return [Problem(where, "out_of_bounds_box",
                            f"annotation {aid}: bbox {bbox} (xywh) leaves the {ww}x{hh} image by more than {t:g} px")]
    return []


def _annotated_size(img: dict) -> tuple[int, int] | None:
    """The image entry's (height, width) when both are positive whole numbers of a plausible product, else None."""
    hw = (img.get("height"), img.get("width"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v == int(v) and v > 0
               for v in hw):
        return None
    h, w = int(hw[0]), int(hw[1])  # type: ignore[arg-type]
    return (h, w) if h * w < 2**31 else None


def check_coco(root: str | os.PathLike, split: str, masks: bool | None = False,
               scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of ``<root>/<split>`` + ``<root>/annotations/instances_<split>.json`` (COCO layout).

    Args:
        root, split: the dataset folder and the split (image folder) name.
        masks: also check the instance masks (``data/masks.py``: polygons outside the image, RLE of another size
            than the image, empty or malformed masks); ``None``: when the file has segmentations.
        scanned: gets one line saying what was read (for the report).
    """
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    data, problems = read_coco_annotations(ann_file)
    if data is None:
        return problems
    return check_coco_dataset(data, ann_file, root / split, masks, scanned)


def check_coco_dataset(data: dict, ann_file: Path, image_dir: Path, masks: bool | None = False,
                       scanned: list[str] | None = None, boxes_without_masks: bool = False) -> list[Problem]:
    """``check_coco``'s checks of a parsed COCO dict whose images are in ``image_dir`` (``ann_file``: the file or
    folder it came from, named in messages; ``data/formats`` reads every labelling-tool format into such a dict).
    An annotation with a ``source`` (``file:line``) is named by it instead of its image; with
    ``boxes_without_masks`` (formats that mix boxes and polygons), only annotations with a segmentation have their
    mask checked."""
    if not image_dir.is_dir():
        return [Problem(str(image_dir), "missing_file", f"image folder does not exist ({ann_file.name} lists "
                        f"{len(data['images'])} image(s) in it)")]
    images, anns = data["images"], data.get("annotations", [])
    if masks is None:
        masks = any(a.get("segmentation") for a in anns)
    if scanned is not None:
        scanned.append(f"{image_dir}: {len(images)} image(s), {len(anns)} annotation(s)"
                       + (" with masks" if masks else "") + f" ({ann_file.name})")
    problems = coco_reference_problems(data, ann_file, image_dir)
    by_image: dict[object, list[dict]] = {}
    for a in anns:
        by_image.setdefault(a.get("image_id"), []).append(a)
    for img in images:
        path = image_dir / str(img.get("file_name"))
        problem, size = image_problem(path)
        if problem:
            problems.append(problem)
        expected = (img.get("height"), img.get("width"))
        if size is not None and None not in expected and size != tuple(expected):
            problems.append(Problem(str(path), "size_mismatch", f"image is {size[0]}x{size[1]} (HxW) but "
                                    f"{ann_file.name} says {expected[0]}x{expected[1]}"))
            size = None  # boxes are in the annotated frame, which is unknown: no bounds check
        for a in by_image.get(img.get("id"), []):
            problems += _box_problems(str(a.get("source") or path), a, size)
            if crowd_flag(a.get("iscrowd", 0)) is None:
                problems.append(Problem(str(path), "malformed_iscrowd", f"annotation {a.get('id')}: iscrowd "
                                        f"{a['iscrowd']!r} is not 0 or 1 (training treats it as not crowd)"))
            if masks and not (boxes_without_masks and a.get("segmentation") is None):
                from .masks import segmentation_problems

                h, w = _annotated_size(img) or size or (None, None)
                for text in segmentation_problems(a, h, w, OVERFLOW_TOLERANCE):
                    kind, detail = text.split(": ", 1)
                    problems.append(Problem(str(a.get("source") or path), kind, detail))
    return problems


# ------------------------------------------------------------------------------------------------------------- VOC
def check_voc(root: str | os.PathLike, split: str, num_classes: int,
              scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of a VOC-layout split: images, palette label maps (mode, size, values in 0..K-1 ∪ {255}).
    ``scanned`` gets one line saying what was read (for the report)."""
    from .voc import find_voc_root, resolve_split

    root = find_voc_root(root)
    split, label_dir = resolve_split(root, split)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        return [Problem(str(list_file), "missing_file", "split list does not exist")]
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if scanned is not None:
        scanned.append(f"{root}: split {split!r}, {len(ids)} image(s) and label map(s) ({label_dir})")
    problems: list[Problem] = []
    for sid in ids:
        image_problems, label_problems = voc_item_problems(root, sid, label_dir, num_classes)
        problems += image_problems + label_problems
    return problems


# -------------------------------------------------------------------------------------------------- classification
def check_imagefolder(root: str | os.PathLike, splits: Sequence[str],
                      scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of ``<root>/<split>/<class>/*.jpg`` splits (torchvision's ImageFolder): images that cannot be
    decoded, class folders without an image (ImageFolder refuses them), splits whose classes differ (training
    refuses them)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    root = Path(root)
    problems: list[Problem] = []
    first: tuple[str, list[str]] | None = None
    for split in splits:
        folder = root / split
        if not folder.is_dir():
            problems.append(Problem(str(folder), "missing_file", "split folder does not exist"))
            continue
        try:
            classes, class_to_idx = find_classes(str(folder))
        except FileNotFoundError:  # no class folder at all
            problems.append(Problem(str(folder), "missing_file", "no class folder in it (expected <split>/<class>/"
                                    "*.jpg)"))
            continue
        samples = make_dataset(str(folder), class_to_idx, IMG_EXTENSIONS, allow_empty=True)
        if scanned is not None:
            scanned.append(f"{folder}: {len(samples)} image(s) in {len(classes)} class folder(s)")
        filled = {label for _, label in samples}
        problems += [Problem(str(folder / c), "empty_class", "class folder without an image file (torchvision's "
                             "ImageFolder refuses it)") for i, c in enumerate(classes) if i not in filled]
        if first is None:
            first = (split, classes)
        elif classes != first[1]:
            missing, extra = sorted(set(first[1]) - set(classes)), sorted(set(classes) - set(first[1]))
            problems.append(Problem(str(folder), "class_mismatch", f"classes differ from split {first[0]!r}'s: "
                                    f"missing {missing[:5]}, extra {extra[:5]} (training refuses such splits)"))
        for path, _ in samples:
            problem, _ = image_problem(Path(path))
            if problem:
                problems.append(problem)
    return problems


def _cifar_problem(path: Path, err: Exception) -> Problem:
    """A batch or meta file that cannot be read, from the reader's error."""
    if isinstance(err, FileNotFoundError):
        return Problem(str(path), "missing_file", "CIFAR-10 file does not exist")
    if isinstance(err, OSError):
        return Problem(str(path), "unreadable_file", repr(err))
    text = str(err)  # a DataError already names the file: keep the rest
    return Problem(str(path), "malformed_cifar", text.removeprefix(f"{path}: "))


def check_cifar(root: str | os.PathLike, scanned: list[str] | None = None,
                counts: dict[str, int] | None = None) -> list[Problem]:
    """Every problem of CIFAR-10's python batches under ``<root>/cifar-10-batches-py``: files that are missing,
    unreadable or not CIFAR-10 batches (read by training's own reader), labels outside 0..9, a ``batches.meta``
    without class names. ``counts`` gets the images per split (``train``, ``test``) and the ``class names``."""
    from torchvision.datasets import CIFAR10

    from .classification.datasets import read_cifar_images, read_cifar_label_names

    base = Path(root) / CIFAR10.base_folder
    counts = {} if counts is None else counts
    problems: list[Problem] = []
    for split, files in (("train", CIFAR10.train_list), ("test", CIFAR10.test_list)):
        counts[split] = 0
        for name, _ in files:
            try:  # a planted payload is refused, a malformed batch is one DataError
                _, labels = read_cifar_images(base / name)
            except (OSError, DataError) as err:
                problems.append(_cifar_problem(base / name, err))
                continue
            counts[split] += len(labels)
            if labels and (min(labels) < 0 or max(labels) > 9):
                span = f"{min(labels)}..{max(labels)}"
                problems.append(Problem(str(base / name), "label_values", f"labels {span} outside 0..9", span))
    try:
        counts["class names"] = len(read_cifar_label_names(base / "batches.meta"))
    except (OSError, DataError) as err:
        problems.append(_cifar_problem(base / "batches.meta", err))
    if scanned is not None:
        scanned.append(f"{base}: {counts['train']} train and {counts['test']} test image(s)")
    return problems


def check_flowers(root: str | os.PathLike, counts: dict[str, int] | None = None) -> list[Problem]:
    """Every problem of torchvision's Flowers102 layout under ``<root>/flowers-102``: ``.mat`` files that cannot be
    read, labels outside 1..102, split ids without their image. ``counts`` gets the ``images`` in ``jpg/``, the
    ``labels`` and the ids of each split (``train``, ``val``, ``test``)."""
    import scipy.io

    base = Path(root) / "flowers-102"
    counts = {} if counts is None else counts
    counts["images"] = sum(1 for _ in (base / "jpg").glob("*.jpg"))
    try:
        labels = np.ravel(scipy.io.loadmat(base / "imagelabels.mat")["labels"])
        setid = scipy.io.loadmat(base / "setid.mat")
        splits = {split: np.ravel(setid[key]) for split, key in (("train", "trnid"), ("val", "valid"),
                                                                 ("test", "tstid"))}
    except (OSError, ValueError, KeyError) as err:
        return [Problem(str(base), "unreadable_file", repr(err))]
    counts["labels"] = labels.size
    problems = []
    if labels.size and (labels.min() < 1 or labels.max() > 102):
        span = f"{labels.min()}..{labels.max()}"
        problems.append(Problem(str(base / "imagelabels.mat"), "label_values", f"labels {span} outside 1..102", span))
    for split, ids in splits.items():
        counts[split] = ids.size
        for i in ids:
            path = base / "jpg" / f"image_{i:05d}.jpg"
            if not path.is_file():
                problems.append(Problem(str(path), "missing_file", "image file does not exist"))
    return problems
