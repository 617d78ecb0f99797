"""Dataset checks (``tools/check_data.py``): every defect of a split, one ``Problem`` a defect, naming the file.

``check_coco`` / ``check_voc`` read every annotation and decode every image of a split and return one ``Problem``
per defect, naming the file.
Training and evaluation do not stop on such defects: they apply the policy in ``data/io/skip.py``.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .coco import coco_structure_problems
from .io.images import load_rgb

__all__ = ["Problem", "check_coco", "check_voc", "OVERFLOW_TOLERANCE"]


# Boxes may overflow the image by this many pixels before check_data reports them: real COCO boxes often end a
# fraction of a pixel past the border (float rounding), and training clips them anyway.
OVERFLOW_TOLERANCE = 1.0


@dataclass(frozen=True)
class Problem:
    """One defect: the file it is in, a kind (``missing_file``, ``unreadable_image``, ...) and a readable detail."""

    file: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: [{self.kind}] {self.detail}"


def _image_problem(path: Path) -> tuple[Problem | None, tuple[int, int] | None]:
    """Decode the image (EXIF-upright, as training does) → (problem, (H, W))."""
    try:
        image = load_rgb(path)
    except FileNotFoundError:
        return Problem(str(path), "missing_file", "image file does not exist"), None
    except ValueError as e:
        return Problem(str(path), "unreadable_image", str(e).split(": ", 1)[-1]), None
    return None, (int(image.shape[0]), int(image.shape[1]))


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


def check_coco(root: str | os.PathLike, split: str, masks: bool = False,
               scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of ``<root>/<split>`` + ``<root>/annotations/instances_<split>.json`` (COCO layout); with
    ``masks``, also of the instance masks (``data/masks.py``: polygons outside the image, RLE of another size than
    the image, empty or malformed masks). ``scanned`` gets one line saying what was read (for the report)."""
    root = Path(root)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        return [Problem(str(ann_file), "missing_file", "annotation file does not exist")]
    try:
        data = json.loads(ann_file.read_bytes())
    except ValueError as e:  # not JSON, or not UTF-8
        return [Problem(str(ann_file), "unreadable_annotations", f"{type(e).__name__}: {e}")]
    structure = coco_structure_problems(data)
    if structure:  # training refuses such a file (DataError): nothing below could be trusted
        return [Problem(str(ann_file), "unreadable_annotations", p) for p in structure]
    images, anns, cats = data["images"], data.get("annotations", []), data.get("categories", [])
    cat_ids = {c.get("id") for c in cats}
    if scanned is not None:
        scanned.append(f"{root / split}: {len(images)} image(s), {len(anns)} annotation(s)"
                       + (" with masks" if masks else "") + f" ({ann_file.name})")
    by_image: dict[object, list[dict]] = {}
    problems: list[Problem] = []
    known = {img.get("id") for img in images}
    for a in anns:
        if a.get("image_id") not in known:
            problems.append(Problem(str(ann_file), "orphan_annotation",
                                    f"annotation {a.get('id')} refers to image_id {a.get('image_id')}, not listed"))
        else:
            by_image.setdefault(a.get("image_id"), []).append(a)
    for img in images:
        path = root / split / str(img.get("file_name"))
        problem, size = _image_problem(path)
        if problem:
            problems.append(problem)
        expected = (img.get("height"), img.get("width"))
        if size is not None and None not in expected and size != tuple(expected):
            problems.append(Problem(str(path), "size_mismatch", f"image is {size[0]}x{size[1]} (HxW) but "
                                    f"{ann_file.name} says {expected[0]}x{expected[1]}"))
            size = None  # boxes are in the annotated frame, which is unknown: no bounds check
        for a in by_image.get(img.get("id"), []):
            if a.get("category_id") not in cat_ids:
                problems.append(Problem(str(path), "unknown_category", f"annotation {a.get('id')}: category_id "
                                        f"{a.get('category_id')} is not in the categories {sorted(cat_ids)}"))
            problems += _box_problems(str(path), a, size)
            if masks:
                from .masks import segmentation_problems

                h, w = _annotated_size(img) or size or (None, None)
                for text in segmentation_problems(a, h, w, OVERFLOW_TOLERANCE):
                    kind, detail = text.split(": ", 1)
                    problems.append(Problem(str(path), kind, detail))
    return problems


def check_voc(root: str | os.PathLike, split: str, num_classes: int,
              scanned: list[str] | None = None) -> list[Problem]:
    """Every problem of a VOC-layout split: images, palette label maps (mode, size, values in 0..K-1 ∪ {255}).
    ``scanned`` gets one line saying what was read (for the report)."""
    from .io.labels import IGNORE_INDEX
    from .voc import find_voc_root, resolve_split

    root = find_voc_root(root)
    split, label_dir = resolve_split(root, split)
    list_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not list_file.is_file():
        return [Problem(str(list_file), "missing_file", "split list does not exist")]
    modes = ("P", "L") if label_dir == "SegmentationClassAug" else ("P",)
    problems: list[Problem] = []
    ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
    if scanned is not None:
        scanned.append(f"{root}: split {split!r}, {len(ids)} image(s) and label map(s) ({label_dir})")
    for sid in ids:
        problem, size = _image_problem(root / "JPEGImages" / f"{sid}.jpg")
        if problem:
            problems.append(problem)
        label_path = root / label_dir / f"{sid}.png"
        if not label_path.is_file():
            problems.append(Problem(str(label_path), "missing_file", "label map does not exist"))
            continue
        try:
            with Image.open(label_path) as im:
                mode = im.mode
                label = np.array(im)
        except (OSError, SyntaxError, ValueError) as e:
            problems.append(Problem(str(label_path), "unreadable_label", f"{type(e).__name__}: {e}"))
            continue
        if mode not in modes:
            problems.append(Problem(str(label_path), "label_mode", f"mode {mode!r}, expected {' or '.join(modes)} "
                                    "(class indices, not colours)"))
            continue
        if size is not None and label.shape[:2] != size:
            problems.append(Problem(str(label_path), "mask_size_mismatch", f"mask is {label.shape[0]}x"
                                    f"{label.shape[1]} (HxW) but its image is {size[0]}x{size[1]}"))
        bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
        if bad.size:
            problems.append(Problem(str(label_path), "mask_values", f"values {bad[:8].tolist()} outside "
                                    f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore)"))
    return problems
