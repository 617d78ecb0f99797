"""SSD box geometry: the centre-size box coder and the anchor matcher. IoU and format conversion are torchvision's.

Everything here runs in float32 with autocast disabled: encoded offsets are scaled by 10 and 5, and exp/log of
half-precision sizes is where SSD losses turn NaN (NVIDIA/caffe#556).
"""
from __future__ import annotations

import contextlib
import math
from typing import ContextManager, Sequence

import torch
from torch import Tensor
from torchvision.ops import box_convert, box_iou

__all__ = ["BoxCoder", "match_anchors", "fp32_region", "check_predictions"]

# torchvision's clamp on the exp input of the size offsets: a box may grow at most 1000/16 times its anchor.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


def fp32_region(t: Tensor) -> ContextManager:
    """A context where autocast is off on ``t``'s device, so geometry stays in float32 under mixed precision."""
    try:
        return torch.autocast(device_type=t.device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support: nothing to disable
        return contextlib.nullcontext()


def check_predictions(cls_logits: Tensor, bbox_regression: Tensor, anchors: Tensor) -> tuple[int, int, int]:
    """``(N, A, K)`` of an SSD head's raw outputs, or ``ValueError`` where ``cls_logits`` ``(N, A, K)``,
    ``bbox_regression`` ``(N, A, 4)`` and ``anchors`` ``(A, 4)`` do not fit together (the loss and the
    post-processing both start from them)."""
    if cls_logits.ndim != 3 or bbox_regression.shape != (*cls_logits.shape[:2], 4):
        raise ValueError(f"expected cls_logits (N, A, K) and bbox_regression (N, A, 4), got "
                         f"{tuple(cls_logits.shape)} and {tuple(bbox_regression.shape)}")
    num_images, num_anchors, num_classes = cls_logits.shape
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors must be ({num_anchors}, 4) to match the predictions, got {tuple(anchors.shape)}")
    return num_images, num_anchors, num_classes


class BoxCoder:
    """Centre-size coder (Faster R-CNN / SSD): offsets ``(wx·dx/wa, wy·dy/ha, ww·log(w/wa), wh·log(h/ha))``.

    The offsets are ordered ``(x, y, w, h)`` like torchvision's coder; TF orders them ``(y, x, h, w)`` with scale
    factors ``(10, 10, 5, 5)``, which is the same thing since the weights are symmetric (SSD's variances
    ``(0.1, 0.1, 0.2, 0.2)``).

    Args:
        weights: ``(wx, wy, ww, wh)`` multipliers of the encoded offsets.
    """

    def __init__(self, weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0)) -> None:
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers, got {tuple(weights)}")
        self.weights = tuple(float(w) for w in weights)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights})"

    def encode(self, boxes: Tensor, anchors: Tensor) -> Tensor:
        """Offsets ``(..., 4)`` of xyxy ``boxes`` relative to xyxy ``anchors`` (shapes broadcast)."""
        with fp32_region(boxes):
            b = box_convert(boxes.float(), "xyxy", "cxcywh")
            a = box_convert(anchors.float().to(boxes.device), "xyxy", "cxcywh")
            wx, wy, ww, wh = self.weights
            return torch.stack([
                wx * (b[..., 0] - a[..., 0]) / a[..., 2],
                wy * (b[..., 1] - a[..., 1]) / a[..., 3],
                ww * torch.log(b[..., 2] / a[..., 2]),
                wh * torch.log(b[..., 3] / a[..., 3]),
            ], dim=-1)

    def decode(self, rel: Tensor, anchors: Tensor) -> Tensor:
        """xyxy boxes ``(..., 4)`` from offsets ``rel`` and xyxy ``anchors`` (shapes broadcast); always float32."""
        with fp32_region(rel):
            rel = rel.float()
            a = box_convert(anchors.float().to(rel.device), "xyxy", "cxcywh")
            wx, wy, ww, wh = self.weights
            cx = rel[..., 0] / wx * a[..., 2] + a[..., 0]
            cy = rel[..., 1] / wy * a[..., 3] + a[..., 1]
            w = torch.exp((rel[..., 2] / ww).clamp(max=BBOX_XFORM_CLIP)) * a[..., 2]
            h = torch.exp((rel[..., 3] / wh).clamp(max=BBOX_XFORM_CLIP)) * a[..., 3]
            return box_convert(torch.stack([cx, cy, w, h], dim=-1), "cxcywh", "xyxy")


def match_anchors(gt_boxes: Tensor, anchors: Tensor, iou_threshold: float = 0.5) -> Tensor:
    """SSD matching: for each anchor, the index of its ground truth, or -1 for background. Returns ``(A,)`` int64.

    An anchor takes the ground truth of highest IoU when that IoU is ≥ ``iou_threshold``. Every ground truth is
    then forced onto its best anchor, even below the threshold (TF ``argmax_matcher`` with
    ``force_match_for_each_row``), so no object goes untrained. When several ground truths share one best anchor,
    the anchor goes to the one it overlaps most (ties: lowest index) and the others keep only their threshold
    matches. A ground truth that overlaps no anchor at all (IoU 0, e.g. a degenerate box) is not forced: its
    offsets would be meaningless.

    Args:
        gt_boxes: ``(G, 4)`` xyxy; ``G = 0`` gives all -1.
        anchors: ``(A, 4)`` xyxy, same coordinate frame.
        iou_threshold: minimum IoU of an ordinary match.
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.numel() == 0:
        return torch.full((num_anchors,), -1, dtype=torch.int64, device=anchors.device)
    if gt_boxes.ndim != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be (G, 4), got {tuple(gt_boxes.shape)}")
    with fp32_region(anchors):
        iou = box_iou(gt_boxes.float().to(anchors.device), anchors.float())  # (G, A)
        best_iou, best_gt = iou.max(dim=0)  # per anchor
        matches = torch.where(best_iou >= iou_threshold, best_gt, torch.full_like(best_gt, -1))

        best_anchor_iou, best_anchor = iou.max(dim=1)  # per ground truth
        forced = torch.zeros_like(iou, dtype=torch.bool)
        forced[torch.arange(iou.shape[0], device=iou.device), best_anchor] = best_anchor_iou > 0
        forced_iou = torch.where(forced, iou, torch.full_like(iou, -1.0))
        winner_iou = forced_iou.amax(dim=0)  # per anchor: the IoU of the forcing gt it overlaps most
        # argmax returns the first maximum, so ties go to the lowest gt index on every device.
        winner = (forced_iou == winner_iou[None]).float().argmax(dim=0)
        return torch.where(winner_iou >= 0, winner, matches)
