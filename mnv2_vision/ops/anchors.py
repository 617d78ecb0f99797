"""SSD default boxes with the TF Object Detection API's ``ssd_anchor_generator`` semantics (docs/design.md#ssdlite).

TF computes anchors in normalised coordinates (``multiple_grid_anchor_generator.create_ssd_anchors`` +
``grid_anchor_generator.tile_anchors``); here they are returned in absolute xyxy pixels of the network input, the
package's box convention. Two TF details are kept on purpose:

* the base anchor side is ``min(H, W)`` in pixels (TF scales its unit base size by ``min_im_shape / im_height`` and
  ``min_im_shape / im_width``), so a ratio-1 anchor is square in pixels even on a non-square input, while the
  centres still spread over the full height and width: ``((i + 0.5) / fh · H, (j + 0.5) / fw · W)``;
* anchors are not clipped to the image (TF's SSD configs set no clip window).

Order of the returned rows: level, then row y, then column x, then box within the cell. ``SSDLite`` flattens its
head outputs ``(N, A·K, h, w) → (N, h, w, A, K)`` in the same order.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

__all__ = ["DEFAULT_ASPECT_RATIOS", "anchor_box_specs", "num_anchors_per_location", "ssd_anchors"]

# ssdlite_mobilenet_v2_coco.config: aspect_ratios 1.0, 2.0, 0.5, 3.0, 0.3333 (in this order, which fixes box order).
DEFAULT_ASPECT_RATIOS: tuple[float, ...] = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)


def anchor_box_specs(
    num_levels: int = 6,
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    reduce_boxes_in_lowest_layer: bool = True,
) -> list[list[tuple[float, float]]]:
    """Per level, the ``(scale, aspect_ratio)`` of each box in a cell, exactly as TF's ``create_ssd_anchors``.

    Scales grow linearly from ``min_scale`` to ``max_scale``; each level adds a ratio-1 box of scale
    ``sqrt(s_k · s_{k+1})`` (with ``s_{K} = 1``). The lowest level, when reduced, has ``(0.1, 1), (s_0, 2), (s_0, ½)``.
    """
    if num_levels < 1:
        raise ValueError(f"num_levels must be ≥ 1, got {num_levels}")
    if not 0 < min_scale <= max_scale:
        raise ValueError(f"need 0 < min_scale ≤ max_scale, got {min_scale}, {max_scale}")
    if not aspect_ratios or any(a <= 0 for a in aspect_ratios):
        raise ValueError(f"aspect_ratios must be positive, got {tuple(aspect_ratios)}")
    if num_levels == 1:
        scales = [min_scale]
    else:
        scales = [min_scale + (max_scale - min_scale) * i / (num_levels - 1) for i in range(num_levels)]
    scales.append(1.0)  # only used as s_{k+1} of the last level's interpolated box
    specs: list[list[tuple[float, float]]] = []
    for level in range(num_levels):
        scale, scale_next = scales[level], scales[level + 1]
        if level == 0 and reduce_boxes_in_lowest_layer:
            specs.append([(0.1, 1.0), (scale, 2.0), (scale, 0.5)])
        else:
            specs.append([(scale, float(a)) for a in aspect_ratios] + [(math.sqrt(scale * scale_next), 1.0)])
    return specs


def num_anchors_per_location(
    num_levels: int = 6,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    reduce_boxes_in_lowest_layer: bool = True,
) -> list[int]:
    """Boxes per feature-map cell on each level: ``[3, 6, 6, 6, 6, 6]`` for the SSDLite defaults."""
    specs = anchor_box_specs(num_levels, aspect_ratios=aspect_ratios,
                             reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)
    return [len(s) for s in specs]


def ssd_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    image_size: tuple[int, int],
    min_scale: float = 0.2,
    max_scale: float = 0.95,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    reduce_boxes_in_lowest_layer: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """All anchors of an image, ``(A, 4)`` absolute xyxy pixels of the network input.

    Args:
        feature_sizes: ``(h, w)`` of each prediction level, lowest (finest) first; its length is the level count.
        image_size: network input ``(H, W)``.
        min_scale, max_scale: box scales of the first and last level, as fractions of ``min(H, W)``.
        aspect_ratios: width / height ratios of the boxes at each cell (plus the interpolated ratio-1 box).
        reduce_boxes_in_lowest_layer: 3 boxes on the first level (TF's SSD default).
        device, dtype: of the result; the maths is done in float64 on the CPU and cast once.
    """
    height, width = (float(v) for v in image_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_size must be positive, got {tuple(image_size)}")
    specs = anchor_box_specs(len(feature_sizes), min_scale, max_scale, aspect_ratios, reduce_boxes_in_lowest_layer)
    base = min(height, width)
    levels: list[Tensor] = []
    for (fh, fw), level_specs in zip(feature_sizes, specs):
        if fh < 1 or fw < 1:
            raise ValueError(f"feature sizes must be ≥ 1, got {tuple(feature_sizes)}")
        scales = torch.tensor([s for s, _ in level_specs], dtype=torch.float64)
        ratios = torch.tensor([a for _, a in level_specs], dtype=torch.float64).sqrt()
        box_h = scales / ratios * base  # (B,)
        box_w = scales * ratios * base
        cy = (torch.arange(fh, dtype=torch.float64) + 0.5) * (height / fh)
        cx = (torch.arange(fw, dtype=torch.float64) + 0.5) * (width / fw)
        cy, cx = torch.meshgrid(cy, cx, indexing="ij")  # (fh, fw): row-major, as the head flattens
        cy, cx = cy[..., None], cx[..., None]  # broadcast against the B boxes of a cell
        boxes = torch.stack([cx - box_w / 2, cy - box_h / 2, cx + box_w / 2, cy + box_h / 2], dim=-1)
        levels.append(boxes.reshape(-1, 4))  # (fh·fw·B, 4)
    return torch.cat(levels).to(device=device, dtype=dtype)
