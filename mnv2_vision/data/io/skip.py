"""The bad-sample policy that training and evaluation apply (``tools/check_data.py`` reports the same
defects, ``data/verify.py``).

Training does not stop on a defective sample; it applies one policy instead (docs: "Running like a product"):

- box outside the image: clipped to the image (``CocoDetection``; sub-pixel overflows are common in real COCO);
- box with no area (zero/negative width or height, or nothing left after clipping) or a NaN/inf coordinate: dropped,
  with one warning per image file;
- image that cannot be used as annotated (missing, unreadable, corrupt or truncated file, size differing from the
  annotation file, a category id outside the label map, a VOC mask of the wrong size/mode or with values outside
  ``0..K-1`` ∪ {255}): skipped, with one warning naming the file. In training the loader returns the next usable
  sample instead (``load_or_skip``, ``on_bad="replace"``), so batches keep their size; in validation and evaluation
  the image is left out (``on_bad="drop"``: the collate drops the ``Skipped`` record and lists it in the batch), so
  every usable image is scored exactly once and the skipped files are reported. Labels are never rewritten: an
  image whose labels cannot be trusted is left out, not "repaired";
- COCO instance masks painted into semantic labels (``data/masks.py``): a polygon outside the image is clipped by
  the rasteriser; an RLE of another size than its image skips the image (as above); an instance whose mask is empty
  or malformed (an RLE whose counts do not add up to its size or are of the wrong type, a size that is not two
  positive integers, a polygon far outside the image) has its box region set to 255 (ignore), with one warning per
  file naming the annotation; the rest of the image is used;
- an annotation file that is not JSON or not shaped as COCO annotations (``coco_structure_problems``: entries that
  are not objects, image or category ids that are not integers, ...) is refused as a whole: ``DataError`` naming the
  file and its first defect.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, TypeVar

from ...errors import DataError

__all__ = ["Skipped", "load_or_skip", "BAD_POLICIES"]

# What a dataset does with an unusable item: raise (datasets used directly), give the next usable item instead
# (training), or return a ``Skipped`` record (validation / evaluation: the image is left out and reported).
BAD_POLICIES = ("raise", "replace", "drop")

log = logging.getLogger("mnv2_vision")
T = TypeVar("T")


@dataclass(frozen=True)
class Skipped:
    """An unusable item left out of validation / evaluation: its file (or id) and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name} ({self.reason})"


def load_or_skip(load: Callable[[int], T], index: int, length: int, name: Callable[[int], str],
                 warned: set[str], policy: str = "replace") -> T | Skipped:
    """``load(index)``; when that sample is unusable (``ValueError``/``OSError``: missing, corrupt, mislabelled),
    one warning per bad file (per process: each DataLoader worker has its own copy of the dataset), then by
    ``policy``: ``"replace"`` the next usable sample (wrapping around), ``"drop"`` a ``Skipped`` record, ``"raise"``
    the error."""
    if policy not in BAD_POLICIES:
        raise ValueError(f"on_bad must be one of {BAD_POLICIES}, got {policy!r}")
    if policy != "replace":
        try:
            return load(index)
        except (ValueError, OSError) as e:
            if policy == "raise":
                raise
            key = name(index)
            if key not in warned:
                warned.add(key)
                log.warning("skipping %s: %s", key, e)
            return Skipped(key, str(e).replace(f"{key}: ", "").replace(f" {key}", ""))
    for k in range(length):
        i = (index + k) % length
        try:
            return load(i)
        except (ValueError, OSError) as e:
            key = name(i)
            if key not in warned:
                warned.add(key)
                log.warning("skipping %s: %s", key, e)
    raise DataError(f"none of the {length} samples could be loaded (see the warnings above); "
                    "run tools/check_data.py on this dataset")
