"""Training losses. Detection: SSD multibox loss (smooth-L1 + softmax cross-entropy with hard-negative mining)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .boxes import BoxCoder, check_predictions, fp32_region, match_anchors

__all__ = ["ssd_multibox_loss", "seg_loss"]


def _check_targets(targets: Sequence[dict[str, Tensor]], num_images: int) -> None:
    if len(targets) != num_images:
        raise ValueError(f"got {len(targets)} targets for {num_images} images")
    for i, t in enumerate(targets):
        for key in ("boxes", "labels"):
            if key not in t:
                raise KeyError(f"targets[{i}] has no {key!r} (keys: {sorted(t)})")
        boxes, labels = t["boxes"], t["labels"]
        if boxes.numel() and (boxes.ndim != 2 or boxes.shape[1] != 4):
            raise ValueError(f"targets[{i}]['boxes'] must be (G, 4) xyxy, got {tuple(boxes.shape)}")
        if labels.dtype.is_floating_point or labels.numel() != boxes.reshape(-1, 4).shape[0]:
            raise ValueError(f"targets[{i}]['labels'] must be one integer per box, got {labels.dtype} "
                             f"{tuple(labels.shape)} for {boxes.reshape(-1, 4).shape[0]} boxes")


def _check_values(boxes: list[Tensor], labels: list[Tensor], num_classes: int) -> None:
    """One pass over the whole batch (a single host sync): labels in 1..K-1, boxes finite and not inverted."""
    all_boxes, all_labels = torch.cat(boxes), torch.cat(labels)
    if all_labels.numel() == 0:
        return
    bad_label = (all_labels < 1) | (all_labels >= num_classes)
    bad_box = ~torch.isfinite(all_boxes).all(dim=1) | (all_boxes[:, 2] < all_boxes[:, 0]) | (
        all_boxes[:, 3] < all_boxes[:, 1])
    if bool((bad_label | bad_box).any()):
        image = torch.cat([torch.full((len(b),), i) for i, b in enumerate(labels)]).to(bad_label.device)
        if bool(bad_label.any()):
            raise ValueError(f"target labels must lie in 1..{num_classes - 1} (0 is background); images "
                             f"{sorted(set(image[bad_label].tolist()))} have {all_labels[bad_label].tolist()[:8]}")
        raise ValueError(f"target boxes must be finite xyxy with x2 ≥ x1 and y2 ≥ y1; images "
                         f"{sorted(set(image[bad_box].tolist()))} have {all_boxes[bad_box].tolist()[:4]}")


def ssd_multibox_loss(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Tensor,
    targets: Sequence[dict[str, Tensor]],
    coder: BoxCoder,
    iou_threshold: float = 0.5,
    neg_pos_ratio: int = 3,
    min_negatives: int = 3,
    box_weight: float = 1.0,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """SSD loss (SSD paper, Liu et al. 2016 §2.2; docs/design.md#ssdlite): ``loss = loss_cls + box_weight · loss_box``.

    Each image's anchors are matched to its ground truth (``match_anchors``). Classification is softmax
    cross-entropy over the positives and, per image, the ``max(neg_pos_ratio · num_pos, min_negatives)``
    background anchors with the highest loss (hard-negative mining). Localisation is smooth-L1 (β = 1, TF's Huber
    δ = 1) on the encoded offsets of the positives, summed over the four coordinates. Both terms are divided by the
    number of positives in the batch, clamped to at least 1.

    ``min_negatives = 3`` follows the TF config's hard-example miner (``min_negatives_per_image: 3``): an image
    without objects still teaches the background class through its 3 hardest anchors, instead of contributing
    nothing (torchvision's SSD loss) — that is what lets background-only images suppress false positives.
    Set it to 0 for torchvision's behaviour.

    Everything is computed in float32 (logits and offsets are cast), so the loss is safe under autocast.

    Args:
        cls_logits: ``(N, A, K)`` raw class scores, K including background at index 0.
        bbox_regression: ``(N, A, 4)`` predicted offsets in ``coder``'s encoding.
        anchors: ``(A, 4)`` xyxy anchors in the network-input pixels the target boxes use.
        targets: per image, ``boxes`` ``(G, 4)`` xyxy and ``labels`` ``(G,)`` int64 in ``1..K-1``; G may be 0.
        coder: the box coder that produced the regression targets.
        iou_threshold: matcher threshold.
        neg_pos_ratio: hard negatives per positive.
        min_negatives: hard negatives per image at least (also for images with no objects).
        box_weight: weight of the localisation term.
        label_smoothing: passed to ``F.cross_entropy``.

    Returns:
        ``loss``, ``loss_cls``, ``loss_box`` (unweighted) and ``num_pos`` (positives in the batch, float, detached).
    """
    num_images, num_anchors, num_classes = check_predictions(cls_logits, bbox_regression, anchors)
    _check_targets(targets, num_images)
    device = cls_logits.device

    with fp32_region(cls_logits):
        logits, regression = cls_logits.float(), bbox_regression.float()
        anchors = anchors.to(device=device, dtype=torch.float32)

        gt_boxes = [t["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
        gt_labels = [t["labels"].to(device=device, dtype=torch.int64).reshape(-1) for t in targets]
        _check_values(gt_boxes, gt_labels, num_classes)

        cls_targets, box_targets = [], []
        for boxes, labels in zip(gt_boxes, gt_labels):
            if boxes.shape[0] == 0:  # background only: every anchor is a (candidate) negative
                cls_targets.append(torch.zeros(num_anchors, dtype=torch.int64, device=device))
                box_targets.append(torch.zeros(num_anchors, 4, device=device))
                continue
            matches = match_anchors(boxes, anchors, iou_threshold)  # (A,)
            idx = matches.clamp(min=0)
            cls_targets.append(torch.where(matches >= 0, labels[idx], torch.zeros_like(idx)))
            box_targets.append(coder.encode(boxes[idx], anchors))  # background rows are ignored below
        cls_t = torch.stack(cls_targets)  # (N, A)
        box_t = torch.stack(box_targets)  # (N, A, 4)

        positive = cls_t > 0  # (N, A)
        num_pos = positive.sum(dim=1)  # (N,)
        ce = F.cross_entropy(logits.reshape(-1, num_classes), cls_t.reshape(-1), reduction="none",
                             label_smoothing=label_smoothing).view(num_images, num_anchors)

        # Hard-negative mining: rank each image's background anchors by their loss and keep the top ones.
        with torch.no_grad():
            neg_loss = ce.detach().masked_fill(positive, -float("inf"))
            order = neg_loss.sort(dim=1, descending=True, stable=True).indices
            rank = order.argsort(dim=1)  # rank of each anchor in that order
            num_neg = (neg_pos_ratio * num_pos).clamp(min=min_negatives)
            num_neg = torch.minimum(num_neg, num_anchors - num_pos)
            negative = rank < num_neg[:, None]

        # Masks multiply rather than index, so the loss needs no host sync on an accelerator.
        normaliser = num_pos.sum().clamp(min=1).float()
        loss_cls = (ce * (positive | negative)).sum() / normaliser
        box_t = torch.where(positive[..., None], box_t, torch.zeros_like(box_t))
        box_l1 = F.smooth_l1_loss(regression, box_t, beta=1.0, reduction="none").sum(dim=-1)  # (N, A)
        loss_box = (box_l1 * positive).sum() / normaliser
        return {
            "loss": loss_cls + box_weight * loss_box,
            "loss_cls": loss_cls,
            "loss_box": loss_box,
            "num_pos": num_pos.sum().detach().float(),
        }


def seg_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, label_smoothing: float = 0.0) -> Tensor:
    """Segmentation: pixel-wise cross-entropy averaged over the pixels whose target is not ``ignore_index``.

    Args:
        logits: (N, K, H, W) class scores at the target's resolution.
        target: (N, H, W) integer labels in 0..K-1 or ``ignore_index`` (VOC boundaries, crop padding).

    Computed in fp32 (mixed precision must not round the reduction). A batch whose every pixel is ignored gives a
    zero loss that still reaches every parameter, instead of the NaN of a mean over no pixels.
    """
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} disagree on (N, H, W)")
    target = target.long()
    valid = target != ignore_index
    if not bool(valid.any()):
        return logits.float().sum() * 0.0
    bad = valid & ((target < 0) | (target >= logits.shape[1]))
    if bool(bad.any()):
        raise ValueError(f"target labels must lie in 0..{logits.shape[1] - 1} or be {ignore_index}; found "
                         f"{torch.unique(target[bad])[:8].tolist()}")
    return F.cross_entropy(logits.float(), target, ignore_index=ignore_index, label_smoothing=label_smoothing)
