"""Images as the models were trained on them: a path, a folder, a PIL image or an array → upright ``(H, W, 3)``
uint8 RGB, with the conversions every dataset reader of ``mnv2_vision`` applies (it imports them from here).

Real datasets and phone photos contain grayscale, palette, RGBA, CMYK and 16-bit images, and pixels stored sideways
with an EXIF orientation tag. Annotation tools show such photos upright, so their boxes and masks are in the upright
frame: the orientation is applied before anything else (detectron2 ``read_image`` does the same).

Files are decoded by Pillow. ``mnv2_vision``'s data pipelines decode baseline JPEGs with simplejpeg instead (faster,
and at reduced DCT scales); both wrap libjpeg-turbo with the accurate integer IDCT and fancy upsampling and give
bit-identical pixels (``tests/test_fast_pipeline.py`` checks this on the real subsets).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "load_rgb", "pil_to_rgb", "array_to_rgb", "to_rgb", "expand_inputs"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16-bit or float single-channel array to 0..255 (a plain cast would wrap or saturate)."""
    if arr.dtype == np.uint8:
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.nan_to_num(arr.astype(np.float64))
        peak = 1.0 if arr.size == 0 or arr.max() <= 1.0 else 255.0
        return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # Integer modes ("I;16*", and "I", which older Pillow gives 16-bit PNGs) hold 16-bit data: 65535 → 255 always.
    # Scaling by the image's own maximum would make its brightness depend on its brightest pixel (one pixel at 256
    # blacked out an image whose other pixels were 0..255).
    arr = np.clip(arr.astype(np.int64), 0, 65535)
    return (arr // 257).astype(np.uint8)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """An upright ``(H, W, 3)`` uint8 RGB array from an opened PIL image: EXIF orientation applied; grayscale,
    palette (with or without transparency), RGBA/LA, CMYK and 16-bit/float images converted to RGB (alpha dropped)."""
    img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        gray = _to_uint8(np.asarray(img))
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # Pillow warns when a palette image with transparency goes straight to RGB
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as an upright ``(H, W, 3)`` uint8 RGB array (``pil_to_rgb``'s conversions).

    Missing, unreadable, corrupt or truncated files raise ``ValueError`` (``FileNotFoundError`` for a missing one)
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here with their name rather than later
            arr = pil_to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"cannot read image {path}: decoded to an array of shape {arr.shape}")
    return arr


def array_to_rgb(a: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from an ``(H, W, 3 or 4)`` or ``(H, W)`` grayscale array: uint8 as it is,
    16-bit scaled (65535 → 255), float in [0, 1] scaled and rounded; a fourth channel (alpha) is dropped."""
    shape = a.shape
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or 0 in a.shape[:2]:
        raise ValueError(f"expected an (H, W, 3) RGB image array, got shape {shape}")
    a = a[:, :, :3]
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if a.dtype == np.uint16:
        return (a // 257).astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1:
            return np.round(a * 255).astype(np.uint8)
        raise ValueError("a float image must hold values in [0, 1] (torchvision's convention)")
    raise ValueError(f"unsupported image dtype {a.dtype}; give uint8, uint16 or float in [0, 1]")


def to_rgb(item: Any) -> np.ndarray:
    """An upright ``(H, W, 3)`` uint8 RGB array from a path (``load_rgb``), a PIL image (``pil_to_rgb``) or a numpy
    array (``array_to_rgb``: HWC, or HW grayscale)."""
    if isinstance(item, (str, os.PathLike)):
        return load_rgb(item)
    if isinstance(item, Image.Image):
        return pil_to_rgb(item)
    if isinstance(item, np.ndarray):
        return array_to_rgb(item)
    raise TypeError(f"cannot read an image from {type(item).__name__}; give a path, a folder, a PIL image or an "
                    "(H, W, 3) uint8 array")


def expand_inputs(inputs: Any) -> list[Any]:
    """One entry per image: a folder becomes its images (sorted), a 4-D array its batch, a list its items.

    A folder's images are its entries with an image suffix (``IMAGE_SUFFIXES``) that are not folders (nothing below
    it is read, so a symlink cycle such as ``a/up -> ..`` is never followed); a broken symlink among them stays, and
    reading it raises naming the file. A missing path raises ``FileNotFoundError`` naming it."""
    if isinstance(inputs, (str, os.PathLike)):
        p = Path(inputs)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
            if not files:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
            return files
        if not p.exists():
            raise FileNotFoundError(f"no such image or folder: {p}")
        return [p]
    if not isinstance(inputs, Image.Image) and getattr(inputs, "ndim", None) == 4:  # an array batch (or a tensor's)
        return list(inputs)
    if isinstance(inputs, (list, tuple)):
        return [x for item in inputs for x in expand_inputs(item)]
    return [inputs]
