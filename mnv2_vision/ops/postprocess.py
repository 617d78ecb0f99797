"""Detection post-processing: decode → per-class score threshold and top-k → per-class NMS → original pixels.

The settings travel as one ``PostprocessSettings``, made from the config's ``eval`` section (whose defaults are the
only place their values are written) or from an exported model's ``postprocess`` metadata.

NMS runs one of two ways with the same detections. ``batched_nms`` over every candidate (up to ``topk_candidates``
per class × classes, 36,000 for COCO's 90 classes at top-k 400) then keeps ``detections_per_img``; or, with
``prefix_nms``, only on as many of the best candidates as the answer needs. Greedy NMS visits candidates in
decreasing score order, and whether a candidate survives depends only on the candidates scored above it, so the first
D survivors of NMS over all candidates are exactly the first D survivors of NMS over the best M candidates whenever
that prefix yields at least D survivors (D = ``detections_per_img``): NMS first runs on the best 4·D candidates and
the prefix doubles until D survive or the candidates run out. ONNX Runtime's ``NonMaxSuppression`` stops in the same
way once ``max_output_boxes_per_class`` boxes are selected, which is why the exported graph is fast too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from mnv2_runtime.postprocess import Postprocess
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .boxes import BoxCoder, check_predictions, fp32_region

__all__ = ["PostprocessSettings", "resize_boxes", "prefix_batched_nms", "postprocess_detections"]


class _EvalSection(Protocol):
    """What ``PostprocessSettings.from_eval`` reads: the config's ``eval`` section (``config.EvalCfg``)."""

    score_thresh: float
    nms_iou: float
    topk_candidates: int
    detections_per_img: int


@dataclass(frozen=True)
class PostprocessSettings(Postprocess):
    """How raw SSD outputs become detections (``postprocess_detections``, the exported NMS graph, the predictor):
    ``mnv2_runtime``'s ``Postprocess`` (the four settings, ``from_dict`` of an export's ``postprocess`` metadata,
    ``as_dict``), which runs exported models without PyTorch, made here from a config too."""

    @classmethod
    def from_eval(cls, eval_cfg: _EvalSection) -> PostprocessSettings:
        """The settings of a config's ``eval`` section (``eval.score_thresh`` ...)."""
        return cls(eval_cfg.score_thresh, eval_cfg.nms_iou, eval_cfg.topk_candidates, eval_cfg.detections_per_img)


def resize_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map xyxy ``boxes`` from an image of ``from_size`` ``(H, W)`` to one of ``to_size``, scaling x and y apart.

    This inverts the evaluation preset's plain resize of the whole image to the network input. A preset that
    resizes differently (e.g. keeping the aspect ratio and padding) needs its own inverse in place of this.
    """
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def prefix_batched_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou: float, max_keep: int) -> Tensor:
    """``batched_nms(boxes, scores, labels, iou)[:max_keep]``, computed on the shortest sufficient score prefix
    (module docstring); equal scores may be broken the other way."""
    order = scores.argsort(descending=True)
    n = order.numel()
    m = min(n, 4 * max_keep)
    while True:
        head = order[:m]
        # float64: below ~1000 boxes batched_nms offsets each class's boxes by label·(max coordinate + 1), and in
        # float32 those offsets cost the IoUs ~1e-4 of precision; the full-set call does not.
        kept = batched_nms(boxes[head].double(), scores[head].double(), labels[head], iou)
        if kept.numel() >= max_keep or m == n:
            return head[kept[:max_keep]]
        m = min(n, 2 * m)


def postprocess_detections(
    cls_logits: Tensor,
    bbox_regression: Tensor,
    anchors: Tensor,
    coder: BoxCoder,
    image_size: tuple[int, int],
    original_sizes: Sequence[tuple[int, int]],
    settings: PostprocessSettings,
    *,
    prefix_nms: bool = False,
) -> list[dict[str, Tensor]]:
    """Turn raw SSD outputs into per-image detections, as torchvision's ``SSD.postprocess_detections`` does.

    Per image: softmax over classes, background dropped; per class, the ``topk_candidates`` best anchors whose
    score exceeds ``score_thresh``; boxes decoded and clipped to the network input; per-class NMS at ``nms_iou``
    (``torchvision.ops.batched_nms``); the ``detections_per_img`` best kept; boxes mapped to the original image.

    Args:
        cls_logits: ``(N, A, K)`` raw class scores (index 0 = background).
        bbox_regression: ``(N, A, 4)`` offsets in ``coder``'s encoding.
        anchors: ``(A, 4)`` xyxy anchors in network-input pixels.
        coder: the box coder used in training.
        image_size: network input ``(H, W)``.
        original_sizes: ``(H, W)`` of each original image, the frame the returned boxes are in.
        settings: score threshold, NMS IoU, top-k and detections per image.
        prefix_nms: run NMS on the shortest sufficient prefix of the candidates (``prefix_batched_nms``; the fused
            inference path's choice): the same detections, faster when many candidates pass the threshold.

    Returns:
        per image, ``boxes`` ``(D, 4)`` xyxy original pixels, ``scores`` ``(D,)`` and ``labels`` ``(D,)`` int64 in
        ``1..K-1``, sorted by decreasing score, ``D ≤ detections_per_img``.
    """
    num_images, num_anchors, num_classes = check_predictions(cls_logits, bbox_regression, anchors)
    if len(original_sizes) != num_images:
        raise ValueError(f"got {len(original_sizes)} original sizes for {num_images} images")
    image_size = (int(image_size[0]), int(image_size[1]))
    s = settings

    results: list[dict[str, Tensor]] = []
    with fp32_region(cls_logits):
        scores_all = torch.softmax(cls_logits.float(), dim=-1)[..., 1:]  # (N, A, K-1)
        boxes_all = clip_boxes_to_image(coder.decode(bbox_regression, anchors), image_size)  # (N, A, 4)
        class_ids = torch.arange(1, num_classes, device=cls_logits.device)
        k = min(s.topk_candidates, num_anchors)
        for scores, boxes, original in zip(scores_all, boxes_all, original_sizes):
            # Per class, its k best anchors (torchvision thresholds then takes the top k; same result).
            top_scores, top_idx = scores.t().topk(k, dim=1)  # (K-1, k)
            keep = top_scores > s.score_thresh
            cand_scores = top_scores[keep]
            cand_boxes = boxes[top_idx[keep]]
            cand_labels = class_ids[:, None].expand_as(top_idx)[keep]
            if prefix_nms:
                kept = prefix_batched_nms(cand_boxes, cand_scores, cand_labels, s.nms_iou, s.detections_per_img)
            else:
                kept = batched_nms(cand_boxes, cand_scores, cand_labels, s.nms_iou)[:s.detections_per_img]
            results.append({
                "boxes": resize_boxes(cand_boxes[kept], image_size, (int(original[0]), int(original[1]))),
                "scores": cand_scores[kept],
                "labels": cand_labels[kept],
            })
    return results
