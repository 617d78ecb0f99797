"""Fast image decoding for the data pipelines: libjpeg-turbo through simplejpeg, optionally at a reduced DCT scale,
and label PNGs through zlib-ng.

Pillow and simplejpeg both decode JPEGs with libjpeg-turbo (accurate integer IDCT, fancy upsampling) and give
bit-identical pixels (``tests/test_fast_pipeline.py`` checks this on the real subsets), but simplejpeg writes straight
into a numpy array and can decode at 1/2, 1/4 or 1/8 of the size in the DCT domain; Pillow's ``np.asarray`` and the
copy ``ImageOps.exif_transpose`` makes cost about as much as the decode itself (measured on ``coco128``: 6.4 ms per
image through ``load_rgb`` against 2.6 ms here, one core).

Only baseline RGB/grayscale JPEGs take this path; anything else (PNG, CMYK JPEGs, 16-bit images, files Pillow cannot
identify as JPEG) is decoded by ``images.load_rgb``, so the conversions and error messages stay those of every other
reader. The EXIF orientation is applied as ``load_rgb`` applies it.

Label maps (VOC's palette PNGs) are mostly a deflate stream of unfiltered rows: libpng and Pillow store palette rows
unfiltered. Pillow inflates them one row per call and copies the result twice on its way to numpy (0.8 ms for a
640×480 map); ``png_indices`` inflates the whole stream at once with zlib-ng (0.06 ms) and returns those rows. Only
that simple case takes this path; other PNGs (filtered rows, other depths, interlaced, animated) go to Pillow.
"""
from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg
from mnv2_runtime.images import to_rgb as runtime_to_rgb
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from zlib_ng import zlib_ng

from .images import load_rgb

__all__ = ["DCT_FACTORS", "EncodedImage", "decode_rgb", "png_indices", "reduction_factor", "to_rgb"]

DCT_FACTORS = (1, 2, 4, 8)  # libjpeg-turbo's fast power-of-two scales (other n/8 scales are slower)
_ORIENTATION_TAG = 0x0112


def reduction_factor(needed_scale: float, max_factor: int = 8) -> int:
    """The largest DCT factor k in ``DCT_FACTORS`` (≤ ``max_factor``) with 1/k ≥ ``needed_scale``.

    ``needed_scale`` is the number of output pixels per source pixel (the larger of the two axes): a decode at 1/k
    then still has at least one decoded pixel per output pixel, so no resolution the output needs is lost.
    """
    k = 1
    for f in DCT_FACTORS:
        if f <= max_factor and needed_scale * f <= 1.0 + 1e-9:
            k = f
    return k


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to a stored-frame array, as ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.transpose(1, 0, 2)
    elif orientation == 6:
        arr = arr.transpose(1, 0, 2)[:, ::-1]
    elif orientation == 7:
        arr = arr[::-1, ::-1].transpose(1, 0, 2)
    elif orientation == 8:
        arr = arr.transpose(1, 0, 2)[::-1]
    else:
        return arr
    return np.ascontiguousarray(arr)


class EncodedImage:
    """One image file whose header has been read but whose pixels are decoded only on ``decode``.

    ``size`` is the upright ``(H, W)`` (after EXIF orientation), known before decoding, so a pipeline can choose its
    geometry first and then decode only at the resolution it needs. Missing files raise ``FileNotFoundError``,
    unreadable ones ``ValueError``, both naming the file (training's bad-data policy, ``data/io/skip.py``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"image not found: {self.path}")
        self._data: bytes | None = None
        self._pixels: np.ndarray | None = None
        self.orientation = 1
        data = self.path.read_bytes()
        mode = None
        try:
            if data[:2] != b"\xff\xd8":
                raise ValueError("not a JPEG")
            if b"Exif\x00\x00" not in data:  # no EXIF block anywhere, so no orientation: the 10 µs header read
                h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
                mode = {"YCbCr": "RGB", "RGB": "RGB", "Gray": "L"}.get(colorspace)
                if Image.MAX_IMAGE_PIXELS and h * w > Image.MAX_IMAGE_PIXELS:  # Pillow's bomb check: load_rgb's way
                    mode = None
            else:  # Pillow parses the EXIF orientation (~0.1 ms)
                with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
                    mode, (w, h) = im.mode, im.size
                    self.orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            mode = None  # not a JPEG read this way: load_rgb decides (and names the file if it fails)
        if mode in ("RGB", "L") and 1 <= self.orientation <= 8:
            self._data, self.stored_size = data, (h, w)
            self.size: tuple[int, int] = (w, h) if self.orientation >= 5 else (h, w)
        else:
            self._pixels = load_rgb(self.path)
            self.size = (int(self._pixels.shape[0]), int(self._pixels.shape[1]))

    @property
    def is_jpeg(self) -> bool:
        """True when ``decode`` can reduce in the DCT domain (factors > 1)."""
        return self._data is not None

    def decode(self, factor: int = 1, channels: int = 3) -> np.ndarray:
        """The upright uint8 image at 1/``factor`` of its size (``ceil(H / factor)`` × ``ceil(W / factor)``).

        Args:
            factor: a DCT factor in ``DCT_FACTORS``; only 1 for images that are not plain JPEGs (``is_jpeg``).
            channels: 3 (RGB) or 4 (RGB plus an unused fourth byte, which OpenCV's warps process ~2.5× faster).
        """
        if factor not in DCT_FACTORS or (factor != 1 and not self.is_jpeg):
            raise ValueError(f"{self.path}: cannot decode at 1/{factor}")
        if channels not in (3, 4):
            raise ValueError(f"channels must be 3 or 4, got {channels}")
        if self._pixels is not None:
            return self._pixels if channels == 3 else np.dstack([self._pixels, self._pixels[..., :1]])
        h, w = self.stored_size
        want = (-(-h // factor), -(-w // factor))
        try:
            arr = simplejpeg.decode_jpeg(self._data, colorspace="RGB" if channels == 3 else "RGBX",
                                         min_height=want[0], min_width=want[1], min_factor=factor, strict=True)
        except ValueError as e:  # corrupt or truncated data (strict: libjpeg's warnings are errors, as in Pillow)
            raise ValueError(f"cannot read image {self.path}: {e}") from e
        if arr.shape[:2] != want:
            raise ValueError(f"cannot read image {self.path}: decoded {arr.shape[:2]} at 1/{factor}, expected {want}")
        return _orient(arr, self.orientation)


def decode_rgb(path: str | os.PathLike) -> np.ndarray:
    """``load_rgb(path)`` (same pixels, same errors), faster for JPEGs: the whole upright ``(H, W, 3)`` uint8 image."""
    return EncodedImage(path).decode()


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_MODES = {3: "P", 0: "L"}  # 8-bit colour types whose pixels are one byte: palette indices, grey levels


def png_indices(data: bytes) -> tuple[str, np.ndarray] | None:
    """``(Pillow's mode, (H, W) uint8 pixels)`` of an 8-bit palette or grey, non-interlaced PNG whose rows are all
    stored unfiltered; ``None`` for any other file, or one whose chunks, checksums or data do not add up (Pillow
    then reads it, and reports what is wrong with it).

    The pixels are Pillow's ``np.array(Image.open(...))`` exactly (``tests/test_fast_pipeline.py``); every chunk's
    CRC is checked here, and the deflate stream's Adler-32 by zlib-ng.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view, pos, header, stream = memoryview(data), 8, None, []
    while True:
        if pos + 12 > len(data):
            return None  # truncated before IEND
        length = int.from_bytes(view[pos:pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data) or zlib.crc32(view[pos + 4:end]) != int.from_bytes(view[end:end + 4], "big"):
            return None
        kind = bytes(view[pos + 4:pos + 8])
        if kind == b"IHDR":
            if length != 13 or header is not None:
                return None
            header = bytes(view[pos + 8:end])
        elif kind == b"IDAT":
            stream.append(view[pos + 8:end])
        elif kind == b"IEND":
            break
        elif kind == b"acTL":  # animated: Pillow decides which frame is the image
            return None
        pos = end + 4
    if header is None or not stream:
        return None
    w, h = int.from_bytes(header[:4], "big"), int.from_bytes(header[4:8], "big")
    depth, colour, compression, filtering, interlace = header[8:13]
    if (depth != 8 or colour not in _PNG_MODES or (compression, filtering, interlace) != (0, 0, 0) or not w or not h
            or (Image.MAX_IMAGE_PIXELS and w * h > Image.MAX_IMAGE_PIXELS)):
        return None
    try:
        raw = zlib_ng.decompress(b"".join(stream), bufsize=h * (w + 1))
    except zlib_ng.error:
        return None
    if len(raw) != h * (w + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(h, w + 1)
    if rows[:, 0].any():  # a row filter (Sub, Up, Average, Paeth) to undo: Pillow's job
        return None
    return _PNG_MODES[colour], rows[:, 1:].copy()  # contiguous and writable, like np.array(img)


def to_rgb(item: Any) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 RGB array from a path, PIL image, numpy array or tensor, converted as training reads
    files: EXIF orientation, grayscale / RGBA / palette / CMYK / 16-bit to RGB.

    Arrays are HWC (or HW grayscale) RGB, uint8 or 16-bit (65535 → 255) or float in [0, 1]; tensors are CHW
    (torchvision's layout), uint8 or float in [0, 1]. Besides paths (decoded here, faster) and tensors, the
    conversions are ``mnv2_runtime.images.to_rgb``'s."""
    if isinstance(item, (str, os.PathLike)):
        return decode_rgb(item)  # load_rgb's pixels and errors, faster for JPEGs
    if isinstance(item, Tensor):
        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        item = t.numpy()
    try:
        return runtime_to_rgb(item)
    except TypeError:
        raise TypeError(f"cannot read an image from {type(item).__name__}; give a path, a folder, a PIL image, an "
                        "(H, W, 3) uint8 array or a (3, H, W) tensor") from None
