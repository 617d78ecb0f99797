"""Detection post-processing for the fused inference path: the same detections as ``ops.postprocess``, with NMS
run only on as many of the best candidates as the answer needs.

Greedy NMS visits candidates in decreasing score order, and whether a candidate survives depends only on the
candidates scored above it. So the first D survivors of NMS over all candidates are exactly the first D survivors of
NMS over the best M candidates, whenever that prefix yields at least D survivors (D = ``detections_per_img``).
``postprocess_detections`` runs per-class NMS over every candidate (up to ``topk_candidates`` per class × classes,
36,000 for COCO's 90 classes at top-k 400) and then keeps 100; here NMS first runs on the best 4·D candidates and the
prefix doubles until D survive or the candidates run out. ONNX Runtime's ``NonMaxSuppression`` stops in the same
way once ``max_output_boxes_per_class`` boxes are selected, which is why the exported graph is fast too.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from ..ops.boxes import BoxCoder, fp32_region
from ..ops.postprocess import resize_boxes

__all__ = ["prefix_batched_nms", "fast_postprocess_detections"]


def prefix_batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_keep: int) -> Tensor:
    """``batched_nms(boxes, scores, labels, iou)[:max_keep]``, computed on the shortest sufficient score prefix."""
    order = scores.argsort(descending=True)
    n = order.numel()
    m = min(n, 4 * max_keep)
    while True:
        head = order[:m]
        # float64: below ~1000 boxes batched_nms offsets each class's boxes by label·(max coordinate + 1), and in
        # float32 those offsets cost the IoUs ~1e-4 of precision; the full-set call in ops.postprocess does not.
        kept = batched_nms(boxes[head].double(), scores[head].double(), labels[head], iou)
        if kept.numel() >= max_keep or m == n:
            return head[kept[:max_keep]]
        m = min(n, 2 * m)


def fast_postprocess_detections(
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
    """Drop-in for ``ops.postprocess.postprocess_detections`` (same arguments, same per-image dicts sorted by score).

    Only the order of NMS work differs (see the module docstring); equal scores may be broken the other way.
    """
    num_images, num_anchors, num_classes = cls_logits.shape
    image_size = (int(image_size[0]), int(image_size[1]))
    results: list[dict[str, Tensor]] = []
    with fp32_region(cls_logits):
        scores_all = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (N, A, K-1)
        boxes_all = clip_boxes_to_image(coder.decode(bbox_regression, anchors), image_size)  # (N, A, 4)
        class_ids = torch.arange(1, num_classes, device=cls_logits.device)
        k = min(topk_candidates, num_anchors)
        for scores, boxes, original in zip(scores_all, boxes_all, original_sizes):
            top_scores, top_idx = scores.t().topk(k, dim=1)  # (K-1, k): each class's best anchors
            keep = top_scores > score_thresh
            cand_scores = top_scores[keep]
            cand_boxes = boxes[top_idx[keep]]
            cand_labels = class_ids[:, None].expand_as(top_idx)[keep]
            kept = prefix_batched_nms(cand_boxes, cand_scores, cand_labels, nms_iou, detections_per_img)
            results.append({
                "boxes": resize_boxes(cand_boxes[kept], image_size, (int(original[0]), int(original[1]))),
                "scores": cand_scores[kept],
                "labels": cand_labels[kept],
            })
    return results
