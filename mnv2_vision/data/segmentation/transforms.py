"""Mask-aware albumentations pipelines for segmentation (TF DeepLab's recipe), and the padding collate.

Training: random scale in ``scale_range`` → pad to the crop size (image with the mean pixel, so it normalises to 0;
mask with 255 = ignore, so padding never counts) → random crop → horizontal flip → normalise. Masks are always
resampled with nearest neighbour, so no label is invented at object edges.

Evaluation: the full image, only normalised. The network accepts any size, so nothing is resized or padded for the
forward pass (padding would leak into the image-pooling branch and make the result depend on the batch).

``SegTrainTransform`` is the albumentations reference; the data module runs ``FastSegTrainTransform``, which draws the
same scale, padding, crop position and flip but resamples only the 513² crop, straight from the decoded image (the
reference scales the whole image, up to 2 × 2 times its area, then pads, crops and flips copies of it).
"""
from __future__ import annotations

import random
from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from ..io.skip import Skipped
from ..io.decode import EncodedImage
from ..io.pixels import Normalizer, stack_images, uint8_chw
from ..detection.transforms import seed_compose
from ..io.labels import IGNORE_INDEX

__all__ = ["SegTrainTransform", "SegEvalTransform", "FastSegTrainTransform", "FastSegEvalTransform", "pad_collate"]

# OpenCV's own thread pool inside every DataLoader worker oversubscribes the CPU and can hang (albumentations#1246).
cv2.setNumThreads(0)


class _Pipeline:
    def __init__(self, ops: list[A.BasicTransform]) -> None:
        self.pipeline = A.Compose(ops)

    def set_random_seed(self, seed: int) -> None:
        """Reseed the augmentation RNG (``seed_compose``); the training sampler does it per sample."""
        seed_compose(self.pipeline, seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        out = self.pipeline(image=image, mask=mask)
        return out["image"], torch.as_tensor(out["mask"], dtype=torch.int64)


class SegTrainTransform(_Pipeline):
    """Random scale, pad with ignore, random crop ``crop_size``², flip, normalise.

    Args:
        crop_size: square training crop (513 in TF DeepLab).
        scale_range: (min, max) scale factor, uniform (0.5-2.0 in TF DeepLab).
        mean, std: normalisation in 0..1 units (ImageNet's, matching the pretrained backbone).
        flip_p: probability of a horizontal flip.
    """

    def __init__(self, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 flip_p: float = 0.5) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min ≤ max, got {tuple(scale_range)}")
        fill = tuple(255.0 * m for m in mean)
        self.crop_size = crop_size
        super().__init__([
            # RandomScale draws 1 + U(scale_limit): shift the range so the factor is U(lo, hi).
            A.RandomScale(scale_limit=(lo - 1.0, hi - 1.0), interpolation=cv2.INTER_LINEAR,
                          mask_interpolation=cv2.INTER_NEAREST, p=1.0),
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=cv2.BORDER_CONSTANT,
                          fill=fill, fill_mask=IGNORE_INDEX),
            A.RandomCrop(height=crop_size, width=crop_size),
            A.HorizontalFlip(p=flip_p),
            A.Normalize(mean=tuple(mean), std=tuple(std)),
            ToTensorV2(),
        ])


class SegEvalTransform(_Pipeline):
    """Normalise the full image; the mask is untouched."""

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        super().__init__([A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()])


class FastSegTrainTransform:
    """``SegTrainTransform``'s distribution (``tests/test_fast_pipeline.py``), resampling only the crop.

    Per sample, from one random stream: scale ``s`` ~ U(``scale_range``), scaled size ``int(H s)`` × ``int(W s)``,
    centred padding up to ``crop_size`` where it is smaller, crop offsets ``int((P − crop + 1) u)``, flip with
    probability ``flip_p`` — albumentations' own arithmetic. The crop is then one ``cv2.warpAffine`` of the image
    (bilinear, the scaled-pixel centres of ``cv2.resize``; 4-channel pixels, which OpenCV warps ~2.5× faster) and two
    index gathers of the mask (nearest, ``cv2.resize``'s ``floor(x · H / H')``: the reference's labels exactly), the
    flip folded into both; padding is the mean colour and 255 (ignore). Call it on arrays like the reference, or
    ``from_file`` on an ``EncodedImage``.
    """

    def __init__(self, crop_size: int, scale_range: Sequence[float] = (0.5, 2.0),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 flip_p: float = 0.5, normalize: bool = True) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range must satisfy 0 < min ≤ max, got {tuple(scale_range)}")
        self.crop_size, self.scale_range, self.flip_p = crop_size, (float(lo), float(hi)), flip_p
        self.fill = tuple(round(255.0 * m) for m in mean)
        self.normalizer = Normalizer(mean, std)
        # False: uint8 image and mask, normalised / widened per batch on the device by the data module
        self.normalize = self.normalizer if normalize else uint8_chw
        self.mask_dtype = torch.int64 if normalize else torch.uint8
        self._rng = random.Random(0)

    def set_random_seed(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def _canvas(self, channels: int) -> np.ndarray:
        """A crop-sized image of the fill colour (made once per channel count)."""
        canvases = self.__dict__.setdefault("_canvases", {})
        if channels not in canvases:
            canvases[channels] = np.full((self.crop_size, self.crop_size, channels), (*self.fill, 0)[:channels],
                                         np.uint8)
        return canvases[channels]

    def plan(self, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], bool]:
        """``((H', W') scaled size, (top, left) padding, (y0, x0) crop offset in the padded image, flip)``."""
        rng, c = self._rng, self.crop_size
        scale = rng.uniform(*self.scale_range)
        sh, sw = int(h * scale), int(w * scale)
        top = int((c - sh) / 2.0) if sh < c else 0
        left = int((c - sw) / 2.0) if sw < c else 0
        y0 = int((max(sh, c) - c + 1) * rng.random())
        x0 = int((max(sw, c) - c + 1) * rng.random())
        return (sh, sw), (top, left), (y0, x0), rng.random() < self.flip_p

    def from_file(self, source: EncodedImage, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        h, w = source.size
        if mask.shape != (h, w):
            raise ValueError(f"mask is {mask.shape[1]}×{mask.shape[0]} but its image {source.path} is {w}×{h}")
        return self._apply(source.decode(1, 4), mask)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        return self._apply(np.ascontiguousarray(image), mask)

    def _apply(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.to_tensors(*self.resample(image, mask, self.plan(*image.shape[:2])))

    def to_tensors(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        """Normalised float image ``(3, c, c)`` and int64 mask ``(c, c)``; with ``normalize=False`` both uint8, the
        image channel-last (``pixels.uint8_chw``)."""
        return self.normalize(image), torch.from_numpy(mask).to(self.mask_dtype)

    def resample(self, image: np.ndarray, mask: np.ndarray, plan: tuple) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 crop of ``image`` (3 or 4 channels) and its mask for ``plan`` (``self.plan``)."""
        h, w = image.shape[:2]
        c = self.crop_size
        (sh, sw), (top, left), (y0, x0), flip = plan
        # Output indices whose scaled-image coordinate (index + offset − padding) lies inside [0, H'), [0, W').
        r0, r1 = max(0, top - y0), min(c, top + sh - y0)
        u0, u1 = max(0, left - x0), min(c, left + sw - x0)  # unflipped columns
        c0, c1 = (c - u1, c - u0) if flip else (u0, u1)
        padded = (r0, r1, c0, c1) != (0, c, 0, c)
        # The fill colour only where padding shows (a memcpy of a ready canvas: filling per channel costs ~4 ms).
        out = self._canvas(image.shape[2]).copy() if padded else np.empty((c, c, image.shape[2]), np.uint8)
        out_mask = np.full((c, c), IGNORE_INDEX, np.uint8) if padded else np.empty((c, c), np.uint8)
        if r1 > r0 and c1 > c0:
            fy, fx = h / sh, w / sw
            # Output index o (within the region) ↦ scaled index: rows o + r0 + y0 − top; columns, unflipped,
            # o + u0 + x0 − left, flipped, u1 − 1 − o + x0 − left.
            ry, rx = r0 + y0 - top, (u1 - 1 if flip else u0) + x0 - left
            sx = -fx if flip else fx
            linear = np.array([[sx, 0.0, (rx + 0.5) * fx - 0.5], [0.0, fy, (ry + 0.5) * fy - 0.5]])
            cv2.warpAffine(image, linear, (c1 - c0, r1 - r0), dst=out[r0:r1, c0:c1],  # written in place
                           flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
            # Nearest neighbour exactly as cv2.resize picks it (floor(x · H / H'), clamped): two gathers, 0.3 ms,
            # where warpAffine's fixed-point rounding would move a label edge by a pixel now and then.
            iy, ix = 1.0 / (sh / h), 1.0 / (sw / w)  # OpenCV's resizeNN: 1 / (dst / src), to the last bit
            rows = np.minimum(np.floor((np.arange(r1 - r0) + ry) * iy).astype(np.intp), h - 1)
            cols = np.minimum(np.floor((np.arange(u1 - u0) + u0 + x0 - left) * ix).astype(np.intp), w - 1)
            out_mask[r0:r1, c0:c1] = np.take(np.take(mask, rows, axis=0), cols[::-1] if flip else cols, axis=1)
        return out, out_mask

    def __repr__(self) -> str:
        return f"FastSegTrainTransform(crop_size={self.crop_size}, scale_range={self.scale_range})"


class FastSegEvalTransform:
    """``SegEvalTransform`` (normalise the full image, mask untouched) through ``Normalizer``: equal within 2.4e-7."""

    def __init__(self, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225)) -> None:
        self.normalize = Normalizer(mean, std)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        return self.normalize(np.ascontiguousarray(image)), torch.as_tensor(mask, dtype=torch.int64)


def pad_collate(items: list[dict]) -> dict:
    """Stack items of possibly different sizes: images padded with 0 (the mean after normalising), masks with 255.
    (The uint8 training crops of ``FastSegTrainTransform(normalize=False)`` all have the crop's size: never padded.)

    Returns ``{"image": (N, 3, H, W), "mask": (N, H, W), "size": (N, 2) true (h, w), "id": [str], "skipped": [...]}``.
    Consumers run the network per true size (``lit/segmentation.py``), so the padding only serves the batching.
    Unusable items (``Skipped``, evaluation's ``on_bad="drop"``) are left out and listed under ``"skipped"``
    as "id (reason)" strings.
    """
    skipped = [str(it) for it in items if isinstance(it, Skipped)]  # plain strings: batches are traversed
    items = [it for it in items if not isinstance(it, Skipped)]
    if not items:
        return {"image": torch.zeros(0, 3, 0, 0), "mask": torch.zeros(0, 0, 0, dtype=torch.int64),
                "size": torch.zeros(0, 2, dtype=torch.int64), "id": [], "skipped": skipped}
    sizes = torch.tensor([list(it["image"].shape[-2:]) for it in items], dtype=torch.int64)
    largest = sizes.max(0).values
    h, w = int(largest[0]), int(largest[1])
    if bool((sizes == largest).all()):  # nothing to pad (training crops): keep their layout
        images, masks = stack_images([it["image"] for it in items]), torch.stack([it["mask"] for it in items])
        return {"image": images, "mask": masks, "size": sizes, "id": [it["id"] for it in items], "skipped": skipped}
    images = torch.zeros(len(items), items[0]["image"].shape[0], h, w, dtype=items[0]["image"].dtype)
    masks = torch.full((len(items), h, w), IGNORE_INDEX, dtype=items[0]["mask"].dtype)
    for i, it in enumerate(items):
        ih, iw = it["image"].shape[-2:]
        images[i, :, :ih, :iw] = it["image"]
        masks[i, :ih, :iw] = it["mask"]
    return {"image": images, "mask": masks, "size": sizes, "id": [it["id"] for it in items], "skipped": skipped}
