"""Classification transform presets (albumentations): Inception-style training crops, the ImageNet evaluation crop."""
from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2


__all__ = ["CLASSIFICATION_PRESETS", "EVAL_CROP_RATIO", "classification_transform"]

CLASSIFICATION_PRESETS = ("cls", "cls_invariant", "cifar", "none")
EVAL_CROP_RATIO = 0.875  # resize the shorter side to size / 0.875, centre-crop size (the ImageNet convention)


def classification_transform(preset: str, train: bool, image_size: int, crop_scale: tuple[float, float] = (0.08, 1.0),
                             mean: Sequence[float] = (0.485, 0.456, 0.406),
                             std: Sequence[float] = (0.229, 0.224, 0.225)) -> A.Compose:
    """``"cls"``: Inception-style random-resized crop + flip (ImageNet recipes); ``"cls_invariant"``: the same plus
    vertical flips, 90° rotations, strong colour jitter, channel shuffle and grayscale, for data whose class depends
    on neither orientation nor colour (the built-in shapes; aerial or microscopy images): each of a small set's
    images then shows up in many colourings and orientations, which is what lets a from-scratch network learn the
    shapes rather than memorise the images; ``"cifar"``: pad 4 px, random crop, flip (the CIFAR convention);
    ``"none"``: the evaluation pipeline. Evaluation: resize the shorter side to size / 0.875 and centre-crop
    (``"cifar"``: a plain resize, the images are already the input size)."""
    if preset not in CLASSIFICATION_PRESETS:
        raise ValueError(f"unknown classification preset {preset!r}; use one of {CLASSIFICATION_PRESETS}")
    s = image_size
    tail = [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    if preset == "cifar":
        ops: list[Any] = [A.Resize(s, s)]
        if train:
            ops += [A.PadIfNeeded(s + 8, s + 8, border_mode=cv2.BORDER_CONSTANT, fill=0), A.RandomCrop(s, s),
                    A.HorizontalFlip(p=0.5)]
        return A.Compose(ops + tail)
    if train and preset in ("cls", "cls_invariant"):
        ops = [A.RandomResizedCrop(size=(s, s), scale=tuple(crop_scale)), A.HorizontalFlip(p=0.5)]
        if preset == "cls_invariant":
            ops += [A.VerticalFlip(p=0.5), A.RandomRotate90(p=1.0),
                    A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.5, hue=0.5, p=1.0),
                    A.ChannelShuffle(p=0.5), A.ToGray(p=0.2)]
        return A.Compose(ops + tail)
    return A.Compose([A.SmallestMaxSize(max_size=int(round(s / EVAL_CROP_RATIO))), A.CenterCrop(s, s)] + tail)


