"""Label maps as files: class indices in 8-bit PNGs (VOC's palette PNGs), 255 = ignore.

Read as indices, never as colours: a mode-"P" PNG's pixel values are the labels, and any colour conversion (cv2,
``.convert("RGB")`` / ``"L"``) would turn them into colours or luminances. Written with VOC's palette attached, so
the indices are kept and the file still looks like a VOC mask in a viewer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ...files import save_image
from .decode import png_indices

__all__ = ["IGNORE_INDEX", "voc_palette", "read_label", "write_label"]

IGNORE_INDEX = 255  # segmentation pixels that neither count in the loss nor in mIoU (VOC's object boundaries)


def voc_palette() -> list[int]:
    """PASCAL VOC's 256-colour map (768 ints): the bits of each index interleaved into R, G, B from the top bit."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_label(path: str | os.PathLike, num_classes: int, modes: Sequence[str] = ("P",),
               pillow: bool = False) -> np.ndarray:
    """Read a label PNG as its (H, W) uint8 indices; wrong mode, unreadable file or bad values raise naming it.

    ``pillow``: always decode with Pillow (the reference that the fast path, ``png_indices`` of ``io/decode.py``, is
    tested and timed against)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label map not found: {path}")
    # Unfiltered 8-bit PNGs (VOC's): ~4× faster than Pillow, the same indices (``io/decode.py``)
    fast = None if pillow else png_indices(path.read_bytes())
    if fast is not None and fast[0] in modes:
        label = fast[1]
    else:
        try:
            with Image.open(path) as img:
                mode = img.mode
                if mode not in modes:
                    raise ValueError(f"label map {path} has mode {mode!r}; expected {' or '.join(map(repr, modes))} "
                                     "(class indices, e.g. VOC's palette PNGs). An RGB or converted grayscale mask "
                                     "holds colours, not labels: convert it to indices first")
                label = np.array(img)
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot read label map {path}: {type(e).__name__}: {e}") from e
    # Fast check first: uint8 v + 1 wraps 255 (ignore) to 0, so every value is valid iff max(v + 1) ≤ K (two SIMD
    # passes, ~0.05 ms at VOC size; the boolean indexing below costs ~0.5 ms and only runs to report bad values).
    if label.dtype == np.uint8 and label.size and int(np.add(label, 1, dtype=np.uint8).max()) <= num_classes:
        return label
    valid = label[label != IGNORE_INDEX]
    if valid.size and int(valid.max()) >= num_classes:
        bad = np.unique(valid[valid >= num_classes])[:8].tolist()
        raise ValueError(f"label map {path} has values {bad} outside 0..{num_classes - 1} (and {IGNORE_INDEX} = "
                         "ignore); wrong num_classes, or a colour mask instead of class indices?")
    return label


def write_label(path: str | os.PathLike, label: np.ndarray) -> Path:
    """Write (H, W) integer labels as a VOC palette PNG (indices kept, colours for viewing).

    The palette is attached before saving: a mode-"P" image saved without one does not keep its indices (design notes).
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must fit 0..255 for a palette PNG, got {label.min()}..{label.max()}")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    return save_image(img, path)
