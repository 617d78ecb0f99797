"""Semantic label maps painted from COCO instance annotations (polygons, RLE, crowd RLE) with ``pycocotools.mask``.

Conventions (design notes; torchvision ``references/segmentation/coco_utils.py``, the public form of TF DeepLab's COCO
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
- A malformed mask (``MalformedMaskError``: an RLE whose ``size`` is not two positive integers, whose counts are of
  another type or whose run lengths are negative or do not add up to height × width; a polygon with a point farther
  outside the image than the image's own size; a segmentation that is neither polygons nor RLE) is treated as an
  empty one: that instance is skipped and its box region is 255. The rest of the image is still usable.

Polygons are validated here before they reach pycocotools: ``frPyObjects`` reads a list whose first entry has four
numbers as *boxes*, not as a polygon. Polygon points outside the image are clipped by the rasteriser. RLEs are
validated too: pycocotools decodes whatever it is given, reading past a counts string cut inside a run length and
leaving pixels uninitialised when the runs cover fewer than height × width (a cut string gave labels from random
memory), and its polygon rasteriser overflows on coordinates far outside the image.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from .io.labels import IGNORE_INDEX

__all__ = ["VOC20_CATEGORY_IDS", "MASK_MODES", "MalformedMaskError", "mask_label_map", "rle_runs",
           "annotation_rle", "paint_semantic", "segmentation_problems"]

# COCO ids of the 20 VOC classes, in VOC order (docs/design.md#coco-masks): label i ↔ VOC20_CATEGORY_IDS[i - 1].
VOC20_CATEGORY_IDS: tuple[int, ...] = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
MASK_MODES = ("voc20", "all")
# pycocotools accumulates a run length's 5-bit chunks in a C int: six chunks hold every value it writes (< 2**29), a
# seventh overflows it. RLE sizes are capped so that every run length fits the uint32 it is stored in.
_MAX_RUN_CHARS = 6
_MAX_PIXELS = 2**31 - 1


class MalformedMaskError(ValueError):
    """An annotation's mask that cannot be read as written (see the module docstring): only that instance is
    skipped."""


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
        except (TypeError, ValueError, OverflowError):
            continue
        if all(math.isfinite(v) for v in values):
            out.append(values)
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def rle_runs(counts: str | bytes) -> np.ndarray:
    """The run lengths (int64) of a compressed COCO counts string, decoded as pycocotools' ``rleFrString``
    (maskApi.c) does: characters ``'0'..'o'`` carry 6 bits (char - 48), 5 of data, 0x20 = "more chunks follow",
    0x10 in a run's last chunk = negative; runs after the third are stored as the difference to the run two before.
    Raises ``MalformedMaskError`` for a character out of range, a string that ends inside a run length or a run
    of more than ``_MAX_RUN_CHARS`` characters (on which the C decoder reads past the end or overflows)."""
    if isinstance(counts, str):
        if not counts.isascii():
            raise MalformedMaskError("RLE counts string has non-ASCII characters (valid: '0'..'o')")
        counts = counts.encode("ascii")
    c = np.frombuffer(counts, np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, np.int64)
    bad = (c < 0) | (c > 63)
    if bad.any():
        raise MalformedMaskError(f"RLE counts string has the character {chr(counts[int(np.argmax(bad))])!r} "
                                 "(valid: '0'..'o')")
    last = (c & 0x20) == 0  # the last chunk of each run length
    if not last[-1]:
        raise MalformedMaskError("RLE counts string ends inside a run length (cut short?)")
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    chars = ends - starts + 1
    if chars.max() > _MAX_RUN_CHARS:
        raise MalformedMaskError(f"RLE counts string has a run length of {int(chars.max())} characters (at most "
                                 f"{_MAX_RUN_CHARS})")
    chunk = np.arange(c.size) - np.repeat(starts, chars)  # each character's place in its run length
    values = np.add.reduceat((c & 0x1F) << (5 * chunk), starts)
    values -= ((c[ends] & 0x10) != 0) << (5 * chars)  # sign-extend the negative ones
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # runs[i] = values[i] + runs[i - 2] for i > 2
    runs[2::2] = np.cumsum(values[2::2])
    return runs


def _rle_size(size: Any) -> list[int]:
    """``size`` as ``[height, width]``; ``MalformedMaskError`` unless it is two positive integers."""
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(_is_int(v) and v > 0 for v in size):
        raise MalformedMaskError(f"RLE size {size!r} is not two positive integers (height, width)")
    h, w = int(size[0]), int(size[1])
    if h * w > _MAX_PIXELS:
        raise MalformedMaskError(f"RLE size {[h, w]} has {h * w} pixels, more than {_MAX_PIXELS}")
    return [h, w]


def _check_counts(counts: Any, height: int, width: int) -> None:
    """``MalformedMaskError`` unless ``counts`` (string or list) are non-negative run lengths adding up to
    ``height`` × ``width``: what pycocotools needs to neither read past them nor leave pixels unwritten."""
    if isinstance(counts, (str, bytes)):
        runs = rle_runs(counts)
        negative = int(runs.min()) if runs.size and runs.min() < 0 else None
        total = int(runs.sum())
    elif isinstance(counts, list):
        if not all(_is_int(v) for v in counts):
            bad = next(v for v in counts if not _is_int(v))
            raise MalformedMaskError(f"RLE counts list holds {bad!r}, not an integer run length")
        negative = min(counts) if counts and min(counts) < 0 else None
        total = sum(counts)
    else:
        raise MalformedMaskError(f"RLE counts of type {type(counts).__name__} are neither a string nor a list of "
                                 "run lengths")
    if negative is not None:
        raise MalformedMaskError(f"RLE counts hold a negative run length ({negative})")
    if total != height * width:
        raise MalformedMaskError(f"RLE counts sum to {total} pixels, not {height}x{width} = {height * width} (cut "
                                 "short, or of another mask?)")


def _check_polygons(polygons: list[list[float]], height: int, width: int) -> None:
    """``MalformedMaskError`` for a point farther outside the image than its own size: pycocotools' rasteriser
    walks every edge in fifth-pixel steps with C ints (1e8 takes seconds and gigabytes, 1e9 crashes it)."""
    xs = [v for p in polygons for v in p[0::2]]
    ys = [v for p in polygons for v in p[1::2]]
    if min(xs) < -width or max(xs) > 2 * width or min(ys) < -height or max(ys) > 2 * height:
        raise MalformedMaskError(f"polygon points span x {min(xs):g}..{max(xs):g}, y {min(ys):g}..{max(ys):g}, "
                                 f"farther outside the {width}x{height} image than its size")


def annotation_rle(ann: dict, height: int, width: int) -> dict | None:
    """The compressed RLE of one annotation's ``segmentation`` in an image of ``height`` × ``width``, or ``None``
    when it holds nothing to rasterise (missing, empty, or only malformed polygons).

    Raises ``ValueError`` (naming the annotation) for an RLE of another size than the image, and its subclass
    ``MalformedMaskError`` for a malformed mask (module docstring); nothing unchecked reaches pycocotools.
    """
    try:
        return _annotation_rle(ann, height, width)
    except MalformedMaskError as e:
        raise MalformedMaskError(f"annotation {ann.get('id')}: {e}") from None


def _annotation_rle(ann: dict, height: int, width: int) -> dict | None:
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = _valid_polygons(seg)
        if not polygons:
            return None
        _check_polygons(polygons, height, width)
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        size = _rle_size(seg["size"])
        if size != [height, width]:
            raise ValueError(f"annotation {ann.get('id')}: RLE size {size} (HxW) differs from the image's "
                             f"{[height, width]}")
        counts = seg["counts"]
        _check_counts(counts, height, width)
        if isinstance(counts, list):  # uncompressed RLE (COCO stores crowd regions this way)
            return mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        return {"size": size, "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if seg is None or seg == []:
        return None
    raise MalformedMaskError(f"segmentation of type {type(seg).__name__} is neither polygons nor RLE")


def _box_region(ann: dict, height: int, width: int) -> tuple[slice, slice] | None:
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return None
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
    return (slice(y0, y1), slice(x0, x1)) if x1 > x0 and y1 > y0 else None


def _ignore_box(unknown: np.ndarray, ann: dict) -> None:
    """Mark the annotation's box region unknown (255): an instance is there, but not where its mask says."""
    region = _box_region(ann, *unknown.shape)
    if region is not None:
        unknown[region] = True


def paint_semantic(anns: Sequence[dict], height: int, width: int, cat_to_label: dict[int, int],
                   malformed: list[str] | None = None) -> tuple[np.ndarray, list[Any]]:
    """The ``(H, W)`` uint8 label map of one image's annotations, and the ids of selected instances whose mask was
    empty (their box region is 255; see the module docstring for every rule).

    Args:
        anns: the image's COCO annotations (all categories; unselected ones are skipped).
        height, width: the image size the annotations refer to.
        cat_to_label: category id → label (``mask_label_map``).
        malformed: gets one ``"annotation <id>: <reason>"`` per selected instance whose mask is malformed; those
            instances are skipped like empty ones (box region 255). ``None``: such a mask raises
            ``MalformedMaskError`` instead, so that no caller skips one without saying so.
    """
    label = np.zeros((height, width), np.uint8)
    count = np.zeros((height, width), np.uint16)
    unknown = np.zeros((height, width), bool)
    empty: list[Any] = []
    for ann in anns:
        lab = cat_to_label.get(ann.get("category_id"))
        if lab is None:
            continue
        try:
            rle = annotation_rle(ann, height, width)
        except MalformedMaskError as e:
            if malformed is None:
                raise
            malformed.append(str(e))
            _ignore_box(unknown, ann)  # a crowd's extent is unknown too: its box is the best bound there is
            continue
        m = mask_utils.decode(rle).astype(bool) if rle is not None else None
        if ann.get("iscrowd", 0):
            if m is not None:
                unknown |= m
            continue
        if m is None or not m.any():
            empty.append(ann.get("id"))
            _ignore_box(unknown, ann)
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
            try:
                _check_polygons(polygons, height, width)
            except MalformedMaskError as e:
                return problems + [f"malformed_mask: annotation {aid}: {e} (training skips this instance)"]
            if min(xs) < -tolerance or min(ys) < -tolerance or max(xs) > width + tolerance or \
                    max(ys) > height + tolerance:
                problems.append(f"polygon_outside_image: annotation {aid}: points span x {min(xs):g}..{max(xs):g}, "
                                f"y {min(ys):g}..{max(ys):g}, beyond the {width}x{height} image by more than "
                                f"{tolerance:g} px (training clips them)")
            elif float(mask_utils.area(annotation_rle(ann, height, width))) == 0:
                problems.append(f"empty_mask: annotation {aid}: its polygons cover no pixel")
        return problems
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        try:
            size = _rle_size(seg["size"])
        except MalformedMaskError as e:
            return [f"malformed_mask: annotation {aid}: {e}"]
        if height is not None and width is not None and size != [height, width]:
            return [f"mask_size_mismatch: annotation {aid}: RLE size {size} (HxW) but the image is "
                    f"{[height, width]}"]
        try:
            rle = annotation_rle(ann, *size)  # validated before pycocotools measures it
        except MalformedMaskError as e:
            return [f"malformed_mask: {e}"]
        area = float(mask_utils.area(rle)) if rle is not None else 0.0
        return [] if area > 0 else [f"empty_mask: annotation {aid}: its RLE covers no pixel"]
    return [f"malformed_mask: annotation {aid}: segmentation of type {type(seg).__name__} is neither polygons nor "
            "RLE"]
