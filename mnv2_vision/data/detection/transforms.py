"""Detection pipelines built on albumentations: SSD IoU random crop, zoom-out, photometric distortion, flip, resize.

The two SSD-specific geometric steps are not in albumentations, so they are small ``DualTransform`` subclasses here
(following torchvision's ``RandomIoUCrop`` / ``RandomZoomOut`` and Liu et al. 2016 §2.2 "Data augmentation").
Everything else is albumentations' own. Presets are chosen by name with plain if/elif:

- ``"ssdlite"`` (train): photometric distortion (p 0.5; brightness, contrast, saturation, hue) → zoom-out (p 0.5,
  up to 4×, mean-filled) → IoU crop → horizontal flip → resize → normalise. This is SSD's full policy in
  torchvision's order (its "ssd" preset; its "ssdlite" preset drops the photometric and zoom-out steps).
- ``"none"`` (train) and every evaluation pipeline: resize → normalise.

Boxes are ``pascal_voc`` (absolute xyxy) in and out. After each step albumentations clips boxes to the image and
drops those narrower or lower than one pixel; the IoU crop itself keeps only boxes whose centre lies in the crop.
A semantic label map can travel with them (``DetectionTransform.with_mask``, the multi-task pair): every geometric
step moves it with nearest-neighbour sampling, and zoom-out fills the new canvas with 255 (ignore), as segmentation
pads. Evaluation pipelines leave it at the image's own size, where the metric is computed.
"""
from __future__ import annotations

import random
from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.core.type_definitions import Targets
from albumentations.pytorch import ToTensorV2
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["IoURandomCrop", "ZoomOut", "DetectionTransform", "detection_transform", "DETECTION_PRESETS",
           "seed_compose", "ssd_crop", "zoom_out_geometry", "SSD_MIN_IOUS"]

DETECTION_PRESETS = ("ssdlite", "light", "none")
SSD_MIN_IOUS: tuple[float | None, ...] = (None, 0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
# torchvision's RandomPhotometricDistort ranges; SSD's brightness delta 32/255 ≈ 0.125. Shared with the fast pipeline.
JITTER_RANGES: dict[str, tuple[float, float]] = {"brightness": (0.875, 1.125), "contrast": (0.5, 1.5),
                                                 "saturation": (0.5, 1.5), "hue": (-0.05, 0.05)}
JITTER_P = 0.5
ZOOM_OUT_RANGE, ZOOM_OUT_P = (1.0, 4.0), 0.5
FLIP_P = 0.5


def seed_compose(compose: A.BaseCompose, seed: int) -> None:
    """Reseed an albumentations pipeline: ONE numpy and ONE Python stream from ``seed``, shared by all its steps.

    Not ``Compose.set_random_seed``: that gives every step its own stream with the *same* seed, so right after a
    reseed (every sample, with ``data/resumable.py``) all the steps draw the same first number, and e.g. the p=0.5
    colour jitter, zoom-out and flip would always fire together or not at all.
    """
    compose.set_random_state(np.random.default_rng(seed), random.Random(seed))


def _box_iou(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """IoU of ``(G, 4)`` xyxy boxes with one xyxy crop."""
    lt = np.maximum(boxes[:, :2], crop[:2])
    rb = np.minimum(boxes[:, 2:4], crop[2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    crop_area = (crop[2] - crop[0]) * (crop[3] - crop[1])
    return inter / np.maximum(area + crop_area - inter, 1e-12)


def ssd_crop(rng: random.Random, h: int, w: int, boxes: np.ndarray,
             min_ious: Sequence[float | None] = SSD_MIN_IOUS, scale: tuple[float, float] = (0.3, 1.0),
             aspect: tuple[float, float] = (0.5, 2.0), trials: int = 40) -> tuple[int, int, int, int]:
    """SSD's crop geometry (``IoURandomCrop``) for an ``h`` × ``w`` image with ``(G, 4)`` xyxy pixel ``boxes``:
    integer ``(x0, y0, x1, y1)``, drawn from ``rng`` only; what the fast pipeline (``data/detection/pipeline.py``)
    uses, with the constraints of ``IoURandomCrop`` (the reference; ``tests/test_fast_pipeline.py`` compares the two
    distributions).

    A minimum IoU is drawn from ``min_ious`` (``None``: the whole image); then ``trials`` candidate patches (each
    side a uniform fraction ``scale`` of the image's, aspect w/h within ``aspect``, uniform position) are drawn at
    once and the first acceptable one is taken: it holds an object centre, and one such object overlaps it with IoU
    ≥ the minimum. The trials are independent, so drawing all of them (not only up to the first acceptable one)
    leaves the distribution as it is and lets numpy test them together (0.1 ms instead of 0.6 ms per sample).
    """
    whole = (0, 0, w, h)
    min_iou = rng.choice(tuple(min_ious)) if len(boxes) else 0.0
    if min_iou is None:
        return whole
    draws = np.array([[rng.uniform(*scale), rng.uniform(*scale), rng.random(), rng.random()] for _ in range(trials)])
    new_w, new_h = (w * draws[:, 0]).astype(np.int64), (h * draws[:, 1]).astype(np.int64)
    ratio = new_w / np.maximum(new_h, 1)
    ok = (new_w >= 1) & (new_h >= 1) & (ratio >= aspect[0]) & (ratio <= aspect[1])
    left, top = ((w - new_w) * draws[:, 2]).astype(np.int64), ((h - new_h) * draws[:, 3]).astype(np.int64)
    patches = np.stack([left, top, left + new_w, top + new_h], axis=1)
    if len(boxes):
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2  # (G, 2)
        inside = ((centres[None, :, 0] > patches[:, None, 0]) & (centres[None, :, 0] < patches[:, None, 2])
                  & (centres[None, :, 1] > patches[:, None, 1]) & (centres[None, :, 1] < patches[:, None, 3]))
        iou = box_iou(torch.from_numpy(patches.astype(np.float64)), torch.from_numpy(np.asarray(boxes[:, :4],
                                                                                               np.float64))).numpy()
        ok &= (np.where(inside, iou, -1.0) >= min_iou).any(axis=1)
    hits = np.flatnonzero(ok)
    return tuple(int(v) for v in patches[hits[0]]) if hits.size else whole


class IoURandomCrop(A.DualTransform):
    """SSD's random crop: a patch whose IoU with at least one object (with its centre inside) is ≥ a sampled minimum.

    Per call a minimum IoU is drawn from ``min_ious`` (``None`` = keep the whole image, 0.0 = any patch holding an
    object centre); up to ``trials`` patches of scale ``scale`` (each side, relative) and aspect ``aspect`` (w/h)
    are tried; the first acceptable one is taken, else the image is left whole. Only boxes whose centre lies
    inside the patch are kept (then clipped). An image without objects gets an unconstrained patch: there is
    nothing to lose, and background-only crops are still useful negatives.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    def __init__(
        self,
        min_ious: Sequence[float | None] = SSD_MIN_IOUS,
        scale: tuple[float, float] = (0.3, 1.0),
        aspect: tuple[float, float] = (0.5, 2.0),
        trials: int = 40,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.min_ious = tuple(min_ious)
        self.scale = scale
        self.aspect = aspect
        self.trials = trials

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "scale", "aspect", "trials")

    def _sample_patch(self, h: int, w: int) -> tuple[int, int, int, int] | None:
        rng = self.py_random
        new_w = int(w * rng.uniform(*self.scale))
        new_h = int(h * rng.uniform(*self.scale))
        if new_w < 1 or new_h < 1 or not self.aspect[0] <= new_w / new_h <= self.aspect[1]:
            return None
        left = int((w - new_w) * rng.random())
        top = int((h - new_h) * rng.random())
        return left, top, left + new_w, top + new_h

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        whole = (0, 0, w, h)
        bboxes = np.asarray(data.get("bboxes", ()), dtype=np.float64)  # normalised xyxy + label columns
        if len(bboxes) == 0:
            for _ in range(self.trials):
                patch = self._sample_patch(h, w)
                if patch is not None:
                    return {"crop_coords": patch}
            return {"crop_coords": whole}
        boxes = bboxes[:, :4] * np.array([w, h, w, h], dtype=np.float64)  # normalised → pixels
        centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
        min_iou = self.py_random.choice(self.min_ious)
        if min_iou is None:
            return {"crop_coords": whole}
        for _ in range(self.trials):
            patch = self._sample_patch(h, w)
            if patch is None:
                continue
            x0, y0, x1, y1 = patch
            inside = (centres[:, 0] > x0) & (centres[:, 0] < x1) & (centres[:, 1] > y0) & (centres[:, 1] < y1)
            if not inside.any():
                continue
            if _box_iou(boxes[inside], np.array(patch, dtype=np.float64)).max() < min_iou:
                continue
            return {"crop_coords": patch}
        return {"crop_coords": whole}

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = crop_coords
        return np.ascontiguousarray(img[y0:y1, x0:x1])

    def apply_to_mask(self, mask: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        return self.apply(mask, crop_coords)

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int],
                        **params: Any) -> np.ndarray:
        if len(bboxes) == 0:
            return bboxes
        h, w = params["shape"][:2]
        x0, y0, x1, y1 = crop_coords
        out = np.array(bboxes, dtype=np.float64, copy=True)
        px = out[:, :4] * np.array([w, h, w, h], dtype=np.float64)
        cx, cy = (px[:, 0] + px[:, 2]) / 2, (px[:, 1] + px[:, 3]) / 2
        inside = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)
        px = np.clip(px - np.array([x0, y0, x0, y0], dtype=np.float64), 0, [x1 - x0, y1 - y0] * 2)
        out[:, :4] = px / np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dtype=np.float64)
        return out[inside].astype(bboxes.dtype)


def zoom_out_geometry(rng: random.Random, h: int, w: int,
                      side_range: tuple[float, float]) -> tuple[int, int, int, int]:
    """SSD's zoom-out (``ZoomOut``) for an ``h`` × ``w`` image: ``(canvas_h, canvas_w, left, top)``, drawn from
    ``rng`` only (shared with the fast pipeline, like ``ssd_crop``)."""
    r = rng.uniform(*side_range)
    canvas_w, canvas_h = int(w * r), int(h * r)
    left = int((canvas_w - w) * rng.random())
    top = int((canvas_h - h) * rng.random())
    return canvas_h, canvas_w, left, top


class ZoomOut(A.DualTransform):
    """SSD's "expand": place the image at a random spot of a canvas ``r`` times larger, filled with ``fill``.

    ``r`` is uniform in ``side_range``; small objects become smaller, training the coarse-to-fine anchors on them.
    """

    _targets = (Targets.IMAGE, Targets.MASK, Targets.BBOXES)

    def __init__(self, fill: Sequence[float] = (124, 116, 104), side_range: tuple[float, float] = (1.0, 4.0),
                 p: float = 0.5) -> None:
        super().__init__(p=p)
        if side_range[0] < 1.0 or side_range[1] < side_range[0]:
            raise ValueError(f"side_range must satisfy 1 <= low <= high, got {side_range}")
        self.fill = tuple(float(v) for v in fill)
        self.side_range = side_range

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("fill", "side_range")

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        canvas_h, canvas_w, left, top = zoom_out_geometry(self.py_random, h, w, self.side_range)
        return {"canvas": (canvas_h, canvas_w), "offset": (left, top)}

    @staticmethod
    def _place(arr: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int], fill: Any) -> np.ndarray:
        """``arr`` at ``offset`` (x, y) on a ``canvas`` (h, w) of ``fill``."""
        h, w = arr.shape[:2]
        out = np.empty((canvas[0], canvas[1], *arr.shape[2:]), dtype=arr.dtype)
        out[...] = np.asarray(fill, dtype=arr.dtype)
        out[offset[1]: offset[1] + h, offset[0]: offset[0] + w] = arr
        return out

    def apply(self, img: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int], **params: Any) -> np.ndarray:
        return self._place(img, canvas, offset, self.fill[: img.shape[2]] if img.ndim == 3 else self.fill[0])

    def apply_to_mask(self, mask: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int],
                      **params: Any) -> np.ndarray:
        # The new canvas shows nothing that was labelled: ignore (255), as segmentation's padding.
        return self._place(mask, canvas, offset, 255)

    def apply_to_bboxes(self, bboxes: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int],
                        **params: Any) -> np.ndarray:
        if len(bboxes) == 0:
            return bboxes
        h, w = params["shape"][:2]
        out = np.array(bboxes, dtype=np.float64, copy=True)
        scale = np.array([w / canvas[1], h / canvas[0]] * 2)
        shift = np.array([offset[0] / canvas[1], offset[1] / canvas[0]] * 2)
        out[:, :4] = out[:, :4] * scale + shift
        return out.astype(bboxes.dtype)


class DetectionTransform:
    """An albumentations ``Compose`` with a typed call: ``(image uint8 HxWx3, boxes (G, 4) xyxy, labels (G,))`` →
    ``(image float (3, H, W) normalised, boxes float32 (G', 4), labels int64 (G',))``; ``with_mask`` also carries a
    label map.

    Args:
        transforms: the albumentations steps.
        moves_masks: whether ``with_mask`` sends the label map through the steps (training) or returns it at the
            image's own size (evaluation, where the metric is computed on the original pixels).
    """

    def __init__(self, transforms: list[A.BasicTransform], moves_masks: bool = True) -> None:
        self.compose = A.Compose(
            transforms,
            bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], min_width=1.0, min_height=1.0),
        )
        self.moves_masks = moves_masks

    def set_random_seed(self, seed: int) -> None:
        """Reseed the augmentation RNG (``seed_compose``): per sample from the training sampler, or per worker."""
        seed_compose(self.compose, seed)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = self.compose(image=image, bboxes=boxes, labels=labels)
        box_t = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
        label_t = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        return out["image"], box_t, label_t

    def with_mask(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """As ``__call__``, plus an ``(H, W)`` uint8 label map → int64 ``(h, w)``: in the network frame when
        ``moves_masks``, else unchanged."""
        if mask.shape[:2] != image.shape[:2]:
            raise ValueError(f"mask {mask.shape[:2]} and image {image.shape[:2]} differ in size")
        if not self.moves_masks:
            return (*self(image, boxes, labels), torch.as_tensor(np.asarray(mask), dtype=torch.int64))
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        out = self.compose(image=image, bboxes=boxes, labels=labels, mask=np.ascontiguousarray(mask))
        box_t = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
        label_t = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
        return out["image"], box_t, label_t, torch.as_tensor(out["mask"], dtype=torch.int64)

    def __repr__(self) -> str:
        return f"DetectionTransform({self.compose.transforms})"


def detection_transform(
    preset: str,
    train: bool,
    image_size: int | tuple[int, int],
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
) -> DetectionTransform:
    """The pipeline for ``preset`` (``"ssdlite"`` | ``"none"``); evaluation (``train=False``) always only resizes.

    Args:
        preset: augmentation policy name.
        train: training pipeline if True, else evaluation.
        image_size: network input side (square) or ``(H, W)``.
        mean, std: normalisation, fractions of 255 (ImageNet's by default); zoom-out fills with the mean colour.
    """
    if preset not in DETECTION_PRESETS:
        raise ValueError(f"unknown detection augmentation preset {preset!r}; choose from {list(DETECTION_PRESETS)}")
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    tail: list[A.BasicTransform] = [
        A.Resize(height=h, width=w, interpolation=cv2.INTER_LINEAR),
        A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
        ToTensorV2(),
    ]
    if not train:
        return DetectionTransform(tail, moves_masks=False)
    if preset == "none":
        return DetectionTransform(tail)
    if preset == "light":
        # Geometry-preserving only (flip + colour): for short CPU runs on data whose object sizes already match the
        # test distribution (the built-in shapes), where the SSD crop/zoom-out needs far more steps to pay off.
        return DetectionTransform([A.ColorJitter(**JITTER_RANGES, p=JITTER_P), A.HorizontalFlip(p=FLIP_P), *tail])
    return DetectionTransform([
        A.ColorJitter(**JITTER_RANGES, p=JITTER_P),
        ZoomOut(fill=tuple(round(m * 255) for m in mean), side_range=ZOOM_OUT_RANGE, p=ZOOM_OUT_P),
        IoURandomCrop(),
        A.HorizontalFlip(p=FLIP_P),
        *tail,
    ])
