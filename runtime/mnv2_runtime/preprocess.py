"""The network input of an image, exactly as ``mnv2_vision`` evaluates (so the runtime's detections are
``tools/eval_det.py``'s).

Detection: the evaluation preset of ``mnv2_vision.data.detection.pipeline`` (``FastDetectionTransform`` with
``train=False``): the whole upright image resized to the square input with OpenCV's ``cv2.resize(...,
INTER_LINEAR)``, then ``(x − 255·mean) · 1 / (255·std)`` in float32, channel-first. Segmentation: the whole image at
its own size, ``(x / 255 − mean) / std`` (the predictor's arithmetic).

``resize_linear`` is OpenCV's bilinear resize of uint8 images re-done in numpy, to the bit: OpenCV computes it in
fixed point, and so does this. Per output column (and row) the source position ``(d + 0.5) · scale − 0.5`` is taken
in float32 (``scale = 1 / (out / in)`` in float64), split into an integer tap ``s`` and a fraction ``f``; the two
weights are ``round(2048 · (1 − f))`` and ``round(2048 · f)`` (half to even). Columns outside the image take the edge
pixel with weight 2048, rows outside it the edge row. The horizontal pass sums in int32 (scale 2048); the vertical
pass is OpenCV's SIMD kernel, ``((r0 >> 4) · b0 >> 16) + ((r1 >> 4) · b1 >> 16)``, rounded ``(v + 2) >> 2`` and
saturated to uint8. OpenCV's exact 2× downscale (its area average) gives the same numbers.
``tests/test_runtime.py`` compares it with ``cv2.resize`` on every source size up to 1,200 pixels for the usual
input sizes and on random images and sizes. Why not depend on OpenCV: its wheel (opencv-python-headless) installs
~170 MB, as much as numpy, Pillow and ONNX Runtime together.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["resize_linear", "normalize", "detection_input", "segmentation_input"]

_COEF_BITS = 11  # OpenCV's INTER_RESIZE_COEF_BITS: weights in units of 1/2048


def _taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tap index s, fixed-point weights of s and s + 1) for each of ``dst`` outputs along an axis of ``src``
    pixels, before any clamping at the edges."""
    scale = 1.0 / (dst / src)
    pos = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(pos).astype(np.int64)
    frac = pos - s.astype(np.float32)
    one = np.float32(1 << _COEF_BITS)
    return s, np.rint((np.float32(1) - frac) * one).astype(np.int32), np.rint(frac * one).astype(np.int32)


def resize_linear(image: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """``cv2.resize(image, (W, H), interpolation=cv2.INTER_LINEAR)`` of a uint8 ``(h, w, C)`` image, bit for bit
    (module docstring); ``size`` is ``(H, W)``."""
    oh, ow = int(size[0]), int(size[1])
    h, w, c = image.shape
    if (oh, ow) == (h, w):
        return image.copy()
    sx, ax0, ax1 = _taps(w, ow)
    outside = (sx < 0) | (sx >= w - 1)  # OpenCV takes the edge pixel alone there
    ax0[outside], ax1[outside] = 1 << _COEF_BITS, 0
    sx = np.clip(sx, 0, w - 1)
    channels = np.arange(c)
    cols0 = (sx[:, None] * c + channels).ravel()  # in the (h, w·C) view of the image
    cols1 = (np.minimum(sx + 1, w - 1)[:, None] * c + channels).ravel()
    sy, by0, by1 = _taps(h, oh)
    # rows are clamped and their weights kept; each source row needed is resampled horizontally once
    rows, at = np.unique(np.clip(np.concatenate([sy, sy + 1]), 0, h - 1), return_inverse=True)
    picked = np.take(np.ascontiguousarray(image).reshape(h, w * c), rows, axis=0)
    sums = np.take(picked, cols0, axis=1).astype(np.int32)
    sums *= np.repeat(ax0, c)
    sums += np.take(picked, cols1, axis=1) * np.repeat(ax1, c)
    sums >>= 4
    top = np.take(sums, at[:oh], axis=0)
    top *= by0[:, None]
    top >>= 16
    bottom = np.take(sums, at[oh:], axis=0)
    bottom *= by1[:, None]
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    return np.minimum(top, 255).astype(np.uint8).reshape(oh, ow, c)


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 ``(H, W, 3)`` → float32 ``(3, H, W)`` ``(x − 255·mean) · (1 / (255·std))``, the data pipelines'
    normalisation (``mnv2_vision.data.io.pixels.Normalizer``) to the bit: the same float32 constants and operations."""
    shift = np.array([255.0 * m for m in mean], dtype=np.float32)[:, None, None]
    scale = np.array([1.0 / (255.0 * s) for s in std], dtype=np.float32)[:, None, None]
    out = np.empty((3, *image.shape[:2]), dtype=np.float32)
    out[...] = image[:, :, :3].transpose(2, 0, 1)
    out -= shift
    out *= scale
    return out


def detection_input(image: np.ndarray, size: Sequence[int], mean: Sequence[float],
                    std: Sequence[float]) -> np.ndarray:
    """The float32 ``(3, H, W)`` network input of an uint8 RGB image for a detector of input ``size`` ``(H, W)``:
    the evaluation preset (module docstring)."""
    return normalize(resize_linear(image, size), mean, std)


def segmentation_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The float32 ``(3, H, W)`` network input of an uint8 RGB image for a segmentation model at the image's own
    size: ``(x / 255 − mean) / std``, the predictor's float32 arithmetic."""
    x = np.empty((3, *image.shape[:2]), dtype=np.float32)
    x[...] = image[:, :, :3].transpose(2, 0, 1)
    x /= np.float32(255.0)
    x -= np.array(mean, dtype=np.float32)[:, None, None]
    x /= np.array(std, dtype=np.float32)[:, None, None]
    return x
