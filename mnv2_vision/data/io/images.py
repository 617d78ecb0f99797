"""Robust image loading shared by every dataset and tool.

Real datasets contain grayscale, palette, RGBA, CMYK and 16-bit images, and phone photos whose pixels are stored
sideways with an EXIF orientation tag. Annotation tools show such photos upright, so their boxes and masks are in the
upright frame: the orientation has to be applied before anything else (detectron2 ``read_image`` does the same).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["load_rgb", "pil_to_rgb"]


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
