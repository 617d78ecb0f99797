"""Semantic label maps painted from COCO instance annotations (polygons, RLE, crowd RLE) with ``pycocotools.mask``.

Conventions (spec §7; torchvision ``references/segmentation/coco_utils.py``, the public form of TF DeepLab's COCO
pre-training on the VOC classes):

- ``"voc20"``: the 20 PASCAL VOC classes, label ``i`` for COCO category ``VOC20_CATEGORY_IDS[i - 1]`` (VOC order:
  aeroplane = 5, bicycle = 2, ... tv = 72); every other category is background (0). ``"all"``: every category of
  the label map, labels ``1..C`` in its order (``CocoDetection`` passes its detection label map: sorted ids).
- Pixels covered by two or more selected (non-crowd) instances are 255: which one is in front is unknown.
- Crowd regions (``iscrowd`` 1) of a selected category are 255: labels of uncertain extent. A crowd of an
  unselected category is background like the rest of that category.
- A selected instance whose mask is empty (no pixel, or no usable polygon: fewer than three points) while its box
  says an object is there: the box region is 255, so the object is neither learnt as background nor invented.
- An RLE whose ``size`` differs from the image's is an error naming the annotation: the mask cannot be trusted.

Polygons are validated here before they reach pycocotools: ``frPyObjects`` reads a list whose first entry has four
numbers as *boxes*, not as a polygon. Polygon points outside the image are clipped by the rasteriser.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["VOC20_CATEGORY_IDS", "MASK_MODES", "IGNORE_INDEX", "mask_label_map", "annotation_rle",
           "paint_semantic", "segmentation_problems"]

# COCO category ids of the 20 VOC classes, in VOC label order (spec §7): label i ↔ VOC20_CATEGORY_IDS[i - 1].
VOC20_CATEGORY_IDS: tuple[int, ...] = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
MASK_MODES = ("voc20", "all")
IGNORE_INDEX = 255


def mask_label_map(mode: str, category_ids: Iterable[int]) -> dict[int, int]:
    """COCO category id → semantic label for ``mode`` (``"voc20"``, or ``"all"``: ``category_ids`` in their order
    become 1..C); ids not in the map are background."""
    if mode == "voc20":
        return {cid: i + 1 for i, cid in enumerate(VOC20_CATEGORY_IDS)}
    if mode == "all":
        ids = list(dict.fromkeys(int(c) for c in category_ids))
        if len(ids) >= IGNORE_INDEX:
            raise ValueError(f"masks='all' needs fewer than {IGNORE_INDEX} categories (labels are uint8 with "
                             f"{IGNORE_INDEX} = ignore), the file has {len(ids)}")
        return {cid: i + 1 for i, cid in enumerate(ids)}
    raise ValueError(f"unknown mask mode {mode!r}; choose from {list(MASK_MODES)}")


def _valid_polygons(polygons: Sequence[Any]) -> list[list[float]]:
    """The polygons that can be rasterised: flat lists of ≥ 3 finite (x, y) points."""
    out = []
    for poly in polygons:
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
            continue
        try:
            values = [float(v) for v in poly]
        except (TypeError, ValueError):
            continue
        if all(math.isfinite(v) for v in values):
            out.append(values)
    return out


def annotation_rle(ann: dict, height: int, width: int) -> dict | None:
    """The compressed RLE of one annotation's ``segmentation`` in an image of ``height`` × ``width``, or ``None``
    when it holds nothing to rasterise (missing, empty, or only malformed polygons).

    Raises ``ValueError`` (naming the annotation) for an RLE of another size than the image or of unknown shape.
    """
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = _valid_polygons(seg)
        if not polygons:
            return None
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = [int(v) for v in seg["size"]]
        if size != [height, width]:
            raise ValueError(f"annotation {ann.get('id')}: RLE size {size} (HxW) differs from the image's "
                             f"{[height, width]}")
        counts = seg["counts"]
        if isinstance(counts, list):  # uncompressed RLE (COCO stores crowd regions this way)
            return mask_utils.frPyObjects(seg, height, width)
        return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if seg is None or seg == []:
        return None
    raise ValueError(f"annotation {ann.get('id')}: segmentation of type {type(seg).__name__} is neither polygons "
                     "nor RLE")


def _box_region(ann: dict, height: int, width: int) -> tuple[slice, slice] | None:
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    return (slice(y0, y1), slice(x0, x1)) if x1 > x0 and y1 > y0 else None


def paint_semantic(anns: Sequence[dict], height: int, width: int,
                   cat_to_label: dict[int, int]) -> tuple[np.ndarray, list[Any]]:
    """The ``(H, W)`` uint8 label map of one image's annotations, and the ids of selected instances whose mask was
    empty (their box region is 255; see the module docstring for every rule).

    Args:
        anns: the image's COCO annotations (all categories; unselected ones are skipped).
        height, width: the image size the annotations refer to.
        cat_to_label: category id → label (``mask_label_map``).
    """
    label = np.zeros((height, width), np.uint8)
    count = np.zeros((height, width), np.uint16)
    unknown = np.zeros((height, width), bool)
    empty: list[Any] = []
    for ann in anns:
        lab = cat_to_label.get(ann.get("category_id"))
        if lab is None:
            continue
        rle = annotation_rle(ann, height, width)
        m = mask_utils.decode(rle).astype(bool) if rle is not None else None
        if ann.get("iscrowd", 0):
            if m is not None:
                unknown |= m
            continue
        if m is None or not m.any():
            empty.append(ann.get("id"))
            region = _box_region(ann, height, width)
            if region is not None:
                unknown[region] = True
            continue
        label[m] = lab
        count += m
    label[(count > 1) | unknown] = IGNORE_INDEX
    return label, empty


def segmentation_problems(ann: dict, height: int | None, width: int | None, tolerance: float = 1.0) -> list[str]:
    """What is wrong with one annotation's ``segmentation`` (empty list: nothing), as ``"kind: detail"`` strings
    (kinds ``polygon_outside_image``, ``mask_size_mismatch``, ``empty_mask``, ``malformed_mask``). ``height``/
    ``width`` ``None``: the image size is unknown and only the size-independent checks run."""
    aid = ann.get("id")
    seg = ann.get("segmentation")
    if seg is None or seg == []:
        return [f"empty_mask: annotation {aid} has no segmentation"]
    if isinstance(seg, list):
        polygons = _valid_polygons(seg)
        problems = []
        if len(polygons) < len(seg):
            problems.append(f"malformed_mask: annotation {aid}: {len(seg) - len(polygons)} of {len(seg)} polygon(s) "
                            "are not flat lists of ≥ 3 finite (x, y) points")
        if not polygons:
            return problems + [f"empty_mask: annotation {aid} has no usable polygon"]
        if height is not None and width is not None:
            xs = [v for p in polygons for v in p[0::2]]
            ys = [v for p in polygons for v in p[1::2]]
            if min(xs) < -tolerance or min(ys) < -tolerance or max(xs) > width + tolerance or \
                    max(ys) > height + tolerance:
                problems.append(f"polygon_outside_image: annotation {aid}: points span x {min(xs):g}..{max(xs):g}, "
                                f"y {min(ys):g}..{max(ys):g}, beyond the {width}x{height} image by more than "
                                f"{tolerance:g} px (training clips them)")
            elif float(mask_utils.area(annotation_rle(ann, height, width))) == 0:
                problems.append(f"empty_mask: annotation {aid}: its polygons cover no pixel")
        return problems
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = [int(v) for v in seg["size"]]
        if height is not None and width is not None and size != [height, width]:
            return [f"mask_size_mismatch: annotation {aid}: RLE size {size} (HxW) but the image is "
                    f"{[height, width]}"]
        try:
            rle = annotation_rle(ann, *size)
            area = float(mask_utils.area(rle)) if rle is not None else 0.0
        except (ValueError, TypeError) as e:
            return [f"malformed_mask: annotation {aid}: {e}"]
        return [] if area > 0 else [f"empty_mask: annotation {aid}: its RLE covers no pixel"]
    return [f"malformed_mask: annotation {aid}: segmentation of type {type(seg).__name__} is neither polygons nor "
            "RLE"]
