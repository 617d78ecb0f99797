"""Detection post-processing: decode → per-class score threshold and top-k → per-class NMS → original pixels."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .boxes import BoxCoder, fp32_region

__all__ = ["resize_boxes", "postprocess_detections"]


def resize_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map xyxy ``boxes`` from an image of ``from_size`` ``(H, W)`` to one of ``to_size``, scaling x and y apart.

    This inverts the evaluation preset's plain resize of the whole image to the network input. A preset that
    resizes differently (e.g. keeping the aspect ratio and padding) needs its own inverse in place of this.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def postprocess_detections(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Tensor,
    coder: BoxCoder,
    image_size: tuple[int, int],
    original_sizes: Sequence[tuple[int, int]],
    score_thresh: float = 0.001,
    nms_iou: float = 0.6,
    topk_candidates: int = 400,
    detections_per_img: int = 100,
) -> list[dict[str, Tensor]]:
    """Turn raw SSD outputs into per-image detections, as torchvision's ``SSD.postprocess_detections`` does.

    Per image: softmax over classes, background dropped; per class, the ``topk_candidates`` best anchors whose
    score exceeds ``score_thresh``; boxes decoded and clipped to the network input; per-class NMS at ``nms_iou``
    (``torchvision.ops.batched_nms``); the ``detections_per_img`` best kept; boxes mapped to the original image.
    A low ``score_thresh`` (1e-8..1e-3: docs/design.md#ssdlite) is what COCO mAP needs; raising it lowers mAP.

    Args:
        cls_logits: ``(N, A, K)`` raw class scores (index 0 = background).
        bbox_regression: ``(N, A, 4)`` offsets in ``coder``'s encoding.
        anchors: ``(A, 4)`` xyxy anchors in network-input pixels.
        coder: the box coder used in training.
        image_size: network input ``(H, W)``.
        original_sizes: ``(H, W)`` of each original image, the frame the returned boxes are in.

    Returns:
        per image, ``boxes`` ``(D, 4)`` xyxy original pixels, ``scores`` ``(D,)`` and ``labels`` ``(D,)`` int64 in
        ``1..K-1``, sorted by decreasing score, ``D ≤ detections_per_img``.
    """
    if cls_logits.ndim != 3 or bbox_regression.shape != (*cls_logits.shape[:2], 4):
        raise ValueError(f"expected cls_logits (N, A, K) and bbox_regression (N, A, 4), got "
                         f"{tuple(cls_logits.shape)} and {tuple(bbox_regression.shape)}")
    num_images, num_anchors, num_classes = cls_logits.shape
    if anchors.shape != (num_anchors, 4):
        raise ValueError(f"anchors must be ({num_anchors}, 4) to match the predictions, got {tuple(anchors.shape)}")
    if len(original_sizes) != num_images:
        raise ValueError(f"got {len(original_sizes)} original sizes for {num_images} images")
    image_size = (int(image_size[0]), int(image_size[1]))

    results: list[dict[str, Tensor]] = []
    with fp32_region(cls_logits):
        scores_all = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (N, A, K-1)
        boxes_all = clip_boxes_to_image(coder.decode(bbox_regression, anchors), image_size)  # (N, A, 4)
        class_ids = torch.arange(1, num_classes, device=cls_logits.device)
        k = min(topk_candidates, num_anchors)
        for scores, boxes, original in zip(scores_all, boxes_all, original_sizes):
            # Per class, its k best anchors (torchvision thresholds then takes the top k; same result).
            top_scores, top_idx = scores.t().topk(k, dim=1)  # (K-1, k)
            keep = top_scores > score_thresh
            cand_scores = top_scores[keep]
            cand_boxes = boxes[top_idx[keep]]
            cand_labels = class_ids[:, None].expand_as(top_idx)[keep]
            kept = batched_nms(cand_boxes, cand_scores, cand_labels, nms_iou)[:detections_per_img]
            results.append({
                "boxes": resize_boxes(cand_boxes[kept], image_size, (int(original[0]), int(original[1]))),
                "scores": cand_scores[kept],
                "labels": cand_labels[kept],
            })
    return results
