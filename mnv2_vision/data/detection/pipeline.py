"""The detection pipeline as the data modules run it: same augmentation distribution as ``transforms.py``, several
times less CPU per image (docs/design.md#input-pipeline; measured in ``tools/benchmark.py --data``).

The albumentations pipeline of ``transforms.py`` (the reference) decodes the whole JPEG, jitters colour on the full
image, pastes it into a zoom-out canvas up to 4 × 4 times its area, crops, flips and resizes. Here every random
choice is drawn first, from the box coordinates and the image size in the file header alone, with the same functions
and ranges (``ssd_crop``, ``zoom_out_geometry``, ``JITTER_RANGES``, ...) in the same order; then:

1. the JPEG is decoded once, at the smallest DCT scale 1/k (k ∈ 1, 2, 4, 8) that still gives at least one decoded
   pixel per output pixel over the crop (``decode.reduction_factor``), so no resolution the output needs is lost;
2. canvas, crop, flip and resize are one resampling of the decoded pixels: ``cv2.resize`` of the crop when it lies
   inside the image at full scale (exactly the reference's arithmetic), otherwise one ``cv2.warpAffine`` with the
   mean colour as border (the canvas is never built; 4-channel pixels, which OpenCV's warp runs ~2.5× faster);
3. colour jitter on the network-sized image, only where the image shows (not on the canvas fill), ``pixels.py``;
4. one normalisation into a contiguous channel-first tensor.

Boxes follow the reference's rules exactly: centre-inside-the-crop, clipping, and albumentations' check after each
step (boxes under 1 px wide or high in the original, the crop and the output frame are dropped).

Evaluation pipelines (``train=False``, and ``"none"``) never decode below full size: their output equals the
reference's (same decoder, same resize; normalisation within 2.4e-7).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from ..io.decode import EncodedImage, reduction_factor
from ..io.pixels import Jitter, Normalizer, apply_jitter, uint8_chw
from .transforms import (DETECTION_PRESETS, FLIP_P, JITTER_P, JITTER_RANGES, ZOOM_OUT_P, ZOOM_OUT_RANGE, ssd_crop,
                         zoom_out_geometry)

__all__ = ["FastDetectionTransform", "fast_detection_transform"]

cv2.setNumThreads(0)  # one thread per loader worker; OpenCV's pool oversubscribes the CPU (albumentations#1246)
_EPS = 1e-7  # albumentations' tolerance in its 1-pixel size check


@dataclass(frozen=True)
class _Plan:
    """Every random choice for one sample, in the coordinates of the upright full-size image."""

    jitter: Jitter | None
    canvas: tuple[int, int, int, int] | None  # zoom-out (canvas_h, canvas_w, left, top)
    crop: tuple[int, int, int, int]  # (x0, y0, x1, y1) in canvas (or image) pixels
    flip: bool


class _Decoded:
    """An already decoded array behind ``EncodedImage``'s interface (factor 1 only)."""

    is_jpeg = False

    def __init__(self, image: np.ndarray) -> None:
        self.image = image
        self.size = (int(image.shape[0]), int(image.shape[1]))

    def decode(self, factor: int = 1, channels: int = 3) -> np.ndarray:
        return self.image


def _keep_min_size(boxes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    return keep & (boxes[:, 2] - boxes[:, 0] >= 1 - _EPS) & (boxes[:, 3] - boxes[:, 1] >= 1 - _EPS)


class FastDetectionTransform:
    """A detection preset (``"ssdlite"`` | ``"light"`` | ``"none"``; evaluation when ``train=False``) drawing the same
    augmentation distribution as ``detection_transform`` of ``transforms.py``; see the module docstring.

    Call it on a decoded ``(H, W, 3)`` uint8 image like the reference, or on an ``EncodedImage`` through
    ``from_file`` (what ``CocoDetection`` does), which decodes only what the output needs. Both return
    ``(image float32 (3, h, w) normalised, boxes float32 (G', 4) xyxy, labels int64 (G',))``. ``set_random_seed``
    reseeds its one random stream (per sample, from ``data/resumable.py``).

    Args:
        preset: augmentation policy name.
        train: training pipeline if True, else evaluation (resize and normalise only).
        image_size: network input side (square) or ``(H, W)``.
        mean, std: normalisation, fractions of 255; zoom-out fills with the mean colour.
        max_factor: largest DCT reduction allowed when augmenting (1 = always decode full size).
        normalize: False returns the uint8 ``(3, h, w)`` image, for a data module that normalises whole batches on
            the device (``Normalizer.batch``).
    """

    def __init__(self, preset: str, train: bool, image_size: int | tuple[int, int],
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 max_factor: int = 8, normalize: bool = True) -> None:
        if preset not in DETECTION_PRESETS:
            raise ValueError(f"unknown detection augmentation preset {preset!r}; choose from {list(DETECTION_PRESETS)}")
        self.preset, self.train = preset, train
        self.out_h, self.out_w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        augment = train and preset != "none"
        self.jitter_p = JITTER_P if augment else 0.0
        self.flip_p = FLIP_P if augment else 0.0
        self.zoom_p = ZOOM_OUT_P if augment and preset == "ssdlite" else 0.0
        self.crop = augment and preset == "ssdlite"
        self.max_factor = max_factor if augment else 1
        self.fill = tuple(round(m * 255) for m in mean)
        self.normalizer = Normalizer(mean, std)
        self.normalize = self.normalizer if normalize else uint8_chw
        self._rng = random.Random(0)

    def set_random_seed(self, seed: int) -> None:
        self._rng = random.Random(seed)

    # ------------------------------------------------------------------------------------------- random choices
    def plan(self, h: int, w: int, boxes: np.ndarray) -> _Plan:
        """Draw one sample's choices for an ``h`` × ``w`` image with ``(G, 4)`` xyxy pixel boxes, in the
        reference's order: colour jitter, zoom-out, IoU crop, flip."""
        rng = self._rng
        jitter = None
        if self.jitter_p and rng.random() < self.jitter_p:
            factors = [rng.uniform(*JITTER_RANGES[k]) for k in ("brightness", "contrast", "saturation", "hue")]
            order = [0, 1, 2, 3]
            rng.shuffle(order)
            jitter = (*factors, order)
        canvas, ch, cw, shifted = None, h, w, boxes
        if self.zoom_p and rng.random() < self.zoom_p:
            canvas = zoom_out_geometry(rng, h, w, ZOOM_OUT_RANGE)
            ch, cw, left, top = canvas
            shifted = boxes + np.array([left, top, left, top], dtype=np.float64)
        crop = ssd_crop(rng, ch, cw, shifted) if self.crop else (0, 0, cw, ch)
        flip = bool(self.flip_p) and rng.random() < self.flip_p
        return _Plan(jitter, canvas, crop, flip)

    def boxes(self, plan: _Plan, boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The boxes and labels in the output frame, by the reference's rules (module docstring)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        keep = np.ones(len(b), bool)
        if plan.canvas is not None:
            left, top = plan.canvas[2:]
            b = b + np.array([left, top, left, top], dtype=np.float64)
        x0, y0, x1, y1 = plan.crop
        if self.crop:
            cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
            keep &= (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
        b = np.clip(b - np.array([x0, y0, x0, y0], dtype=np.float64), 0, [x1 - x0, y1 - y0] * 2)
        keep = _keep_min_size(b, keep)
        b = b * np.array([self.out_w / (x1 - x0), self.out_h / (y1 - y0)] * 2)
        keep = _keep_min_size(b, keep)
        if plan.flip:
            b = np.stack([self.out_w - b[:, 2], b[:, 1], self.out_w - b[:, 0], b[:, 3]], axis=1)
        return b[keep].astype(np.float32), np.asarray(labels, dtype=np.int64).reshape(-1)[keep]

    # ------------------------------------------------------------------------------------------- pixels
    def render(self, source: EncodedImage | _Decoded, plan: _Plan) -> np.ndarray:
        """The uint8 ``(out_h, out_w, 3)`` network input of ``plan``: one decode, one resampling, then colour."""
        return self.photometric(*self.resample(source, plan), plan)

    def decode_factor(self, source: EncodedImage | _Decoded, plan: _Plan) -> int:
        """The DCT reduction for ``plan``: at least one decoded pixel per output pixel over the crop."""
        x0, y0, x1, y1 = plan.crop
        return reduction_factor(max(self.out_w / (x1 - x0), self.out_h / (y1 - y0)),
                                self.max_factor if source.is_jpeg else 1)

    def resample(self, source: EncodedImage | _Decoded, plan: _Plan, image: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], tuple[int, int]]:
        """Decode (unless ``image``, decoded by ``decode_factor`` and ``warps``, is given) and resample once:
        ``(output uint8 (out_h, out_w, 3), the decoded image, shown rows, shown columns)``."""
        oh, ow = self.out_h, self.out_w
        x0, y0, x1, y1 = plan.crop
        cw, ch = x1 - x0, y1 - y0
        k = self.decode_factor(source, plan)
        if not self.warps(plan, k):  # the crop lies inside the image: the reference's own crop + resize
            image = source.decode(1, 3) if image is None else image
            out = cv2.resize(image[y0:y1, x0:x1], (ow, oh), interpolation=cv2.INTER_LINEAR)
            return (cv2.flip(out, 1) if plan.flip else out), image, (0, oh), (0, ow)
        image = source.decode(k, 4) if image is None else image
        left, top = plan.canvas[2:] if plan.canvas is not None else (0, 0)
        # Output pixel index o ↦ decoded pixel index: centres (o + 0.5) scale by crop/output, then by 1/k.
        ax, ay = cw / (ow * k), ch / (oh * k)
        bx = ((ow - 0.5 if plan.flip else 0.5) * cw / ow + x0 - left) / k - 0.5
        by = (0.5 * ch / oh + y0 - top) / k - 0.5
        matrix = np.array([[-ax if plan.flip else ax, 0.0, bx], [0.0, ay, by]])
        border = cv2.BORDER_CONSTANT if plan.canvas is not None else cv2.BORDER_REPLICATE
        out = cv2.warpAffine(image, matrix, (ow, oh), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=border, borderValue=(*self.fill, 0))
        if out.shape[2] == 4:
            out = cv2.cvtColor(out, cv2.COLOR_RGBA2RGB)
        h, w = source.size
        return out, image, _shown(oh, ch / oh, y0 - top, h, False), _shown(ow, cw / ow, x0 - left, w, plan.flip)

    @staticmethod
    def warps(plan: _Plan, factor: int) -> bool:
        """Whether ``plan`` needs the affine warp (zoom-out canvas or a reduced decode) rather than crop + resize."""
        return plan.canvas is not None or factor != 1

    def photometric(self, out: np.ndarray, image: np.ndarray, rows: tuple[int, int], cols: tuple[int, int],
                    plan: _Plan) -> np.ndarray:
        """Colour jitter on the output pixels that show the image (``rows`` × ``cols``); statistics from ``image``."""
        if plan.jitter is None or rows[1] <= rows[0] or cols[1] <= cols[0]:
            return out
        if rows == (0, out.shape[0]) and cols == (0, out.shape[1]):
            return apply_jitter(out, plan.jitter, image)
        # Only the image, not the zoom-out fill (the reference jitters before the canvas exists).
        region = np.ascontiguousarray(out[rows[0]:rows[1], cols[0]:cols[1]])
        out[rows[0]:rows[1], cols[0]:cols[1]] = apply_jitter(region, plan.jitter, image)
        return out

    # ------------------------------------------------------------------------------------------- calls
    def from_file(self, source: EncodedImage | _Decoded, boxes: np.ndarray,
                  labels: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """Augment an image known by its header (``EncodedImage``); its pixels are decoded once, as needed."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        keep = _keep_min_size(boxes, np.ones(len(boxes), bool))  # albumentations' check before the first step
        boxes, labels = boxes[keep], labels[keep]
        h, w = source.size
        plan = self.plan(h, w, boxes)
        out_boxes, out_labels = self.boxes(plan, boxes, labels)
        image = self.normalize(self.render(source, plan))
        return image, torch.from_numpy(out_boxes), torch.from_numpy(out_labels)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        return self.from_file(_Decoded(np.ascontiguousarray(image)), boxes, labels)

    def __repr__(self) -> str:
        return (f"FastDetectionTransform(preset={self.preset!r}, train={self.train}, "
                f"size=({self.out_h}, {self.out_w}), max_factor={self.max_factor})")


def _shown(n: int, step: float, origin: float, extent: int, flip: bool) -> tuple[int, int]:
    """The output index range ``[lo, hi)`` along one axis whose pixel centres fall inside the image
    (canvas coordinate ``(o + 0.5) * step + origin`` in ``[0, extent)``), mirrored when flipped."""
    pos = (np.arange(n) + 0.5) * step + origin
    inside = np.nonzero((pos >= 0) & (pos < extent))[0]
    if inside.size == 0:
        return 0, 0
    lo, hi = int(inside[0]), int(inside[-1]) + 1
    return (n - hi, n - lo) if flip else (lo, hi)


def fast_detection_transform(preset: str, train: bool, image_size: int | tuple[int, int],
                             mean: Sequence[float] = (0.485, 0.456, 0.406),
                             std: Sequence[float] = (0.229, 0.224, 0.225),
                             normalize: bool = True) -> FastDetectionTransform:
    """``detection_transform``'s presets (same arguments, same distribution), fast; what the data module uses."""
    return FastDetectionTransform(preset, train, image_size, mean, std, normalize=normalize)
