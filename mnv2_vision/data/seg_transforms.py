"""Mask-aware albumentations pipelines for segmentation (TF DeepLab's recipe), and the padding collate.

Training: random scale in ``scale_range`` → pad to the crop size (image with the mean pixel, so it normalises to 0;
mask with 255 = ignore, so padding never counts) → random crop → horizontal flip → normalise. Masks are always
resampled with nearest neighbour, so no label is invented at object edges.

Evaluation: the full image, only normalised. The network accepts any size, so nothing is resized or padded for the
forward pass (padding would leak into the image-pooling branch and make the result depend on the batch).
"""
from __future__ import annotations

from typing import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import Tensor

from .check import Skipped
from .transforms import seed_compose
from .voc import IGNORE_INDEX

__all__ = ["SegTrainTransform", "SegEvalTransform", "pad_collate"]

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


def pad_collate(items: list[dict]) -> dict:
    """Stack items of possibly different sizes: images padded with 0 (the mean after normalising), masks with 255.

    Returns ``{"image": (N, 3, H, W), "mask": (N, H, W), "size": (N, 2) true (h, w), "id": [str], "skipped": [...]}``.
    Consumers run the network per true size (``lit/segmentation.py``), so the padding only serves the batching.
    Unusable items (``check.Skipped``, evaluation's ``on_bad="drop"``) are left out and listed under ``"skipped"``
    as "id (reason)" strings.
    """
    skipped = [str(it) for it in items if isinstance(it, Skipped)]  # plain strings: batches are traversed
    items = [it for it in items if not isinstance(it, Skipped)]
    if not items:
        return {"image": torch.zeros(0, 3, 0, 0), "mask": torch.zeros(0, 0, 0, dtype=torch.int64),
                "size": torch.zeros(0, 2, dtype=torch.int64), "id": [], "skipped": skipped}
    h = max(it["image"].shape[-2] for it in items)
    w = max(it["image"].shape[-1] for it in items)
    images = torch.zeros(len(items), items[0]["image"].shape[0], h, w, dtype=items[0]["image"].dtype)
    masks = torch.full((len(items), h, w), IGNORE_INDEX, dtype=torch.int64)
    for i, it in enumerate(items):
        ih, iw = it["image"].shape[-2:]
        images[i, :, :ih, :iw] = it["image"]
        masks[i, :ih, :iw] = it["mask"]
    sizes = torch.tensor([list(it["image"].shape[-2:]) for it in items], dtype=torch.int64)
    return {"image": images, "mask": masks, "size": sizes, "id": [it["id"] for it in items], "skipped": skipped}
