"""Raw network outputs → results, in numpy, with the arithmetic of ``mnv2_vision``'s PyTorch code.

Detection from raw heads (``cls_logits``, ``bbox_regression`` and the anchors) follows
``mnv2_vision.ops.postprocess.postprocess_detections`` step by step: softmax over classes, background dropped; per
class the ``topk_candidates`` best anchors scoring above ``score_thresh``; boxes decoded with the centre-size coder
(weights ``box_coder_weights``, default ``(10, 10, 5, 5)``; the size offsets clamped at ``log(1000 / 16)``) and
clipped to the network input; per-class NMS at ``nms_iou``; the ``detections_per_img`` best kept; boxes scaled to the
original image. NMS is torchvision's ``batched_nms`` re-done to the bit: the same float32 IoU, the same stable
descending score order, and its two ways of keeping classes apart (up to 1,000 boxes one NMS over boxes shifted to
a tile per class, in float32 as it computes the shift; above that one NMS per class), so ties and near-threshold
overlaps go the same way (``tests/test_runtime.py`` compares it with torchvision on random boxes).

Masks: logits upsampled bilinearly (``align_corners=False``, PyTorch's ``interpolate``), then argmax over classes;
``probs`` is their softmax.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["DEFAULT_BOX_CODER_WEIGHTS", "BBOX_XFORM_CLIP", "Postprocess", "softmax", "decode_boxes", "clip_boxes",
           "resize_boxes", "nms", "batched_nms", "detections", "resize_bilinear"]

DEFAULT_BOX_CODER_WEIGHTS = (10.0, 10.0, 5.0, 5.0)  # SSD's variances (0.1, 0.1, 0.2, 0.2) as multipliers
# torchvision's clamp on the exp input of the size offsets: a box may grow at most 1000/16 times its anchor.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)
_VANILLA_ABOVE = 1000  # torchvision's batched_nms runs one NMS per class above 1,000 boxes (4,000 numbers) on a CPU


@dataclass(frozen=True)
class Postprocess:
    """The detection settings of an exported model (its ``postprocess`` metadata; ``eval.*`` of its config).

    Attributes:
        score_thresh: a candidate's class score must exceed it. Low for COCO mAP (1e-8..1e-3, raising it lowers
            mAP), higher for an application that shows the boxes.
        nms_iou: per-class NMS suppresses a box overlapping a better one of its class by more than this IoU.
        topk_candidates: per class, at most this many best-scoring anchors become candidates.
        detections_per_img: the best this many survivors of NMS are kept.
    """

    score_thresh: float
    nms_iou: float
    topk_candidates: int
    detections_per_img: int

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Postprocess:
        """The settings of a ``postprocess`` metadata value (checked by ``metadata.validate_metadata``)."""
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def as_dict(self) -> dict[str, Any]:
        """The ``postprocess`` metadata of an export: the four settings by name, in this order."""
        return asdict(self)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 softmax of ``x`` along ``axis`` (the maximum subtracted first)."""
    e = np.exp(x - x.max(axis=axis, keepdims=True), dtype=np.float32)
    e /= e.sum(axis=axis, keepdims=True, dtype=np.float32)
    return e


def decode_boxes(rel: np.ndarray, anchors: np.ndarray,
                 weights: Sequence[float] = DEFAULT_BOX_CODER_WEIGHTS) -> np.ndarray:
    """xyxy float32 boxes ``(..., 4)`` from centre-size offsets ``rel`` ``(dx, dy, dw, dh)`` and xyxy ``anchors``
    (``mnv2_vision.ops.boxes.BoxCoder.decode``)."""
    rel = rel.astype(np.float32, copy=False)
    a = anchors.astype(np.float32, copy=False)
    aw, ah = a[..., 2] - a[..., 0], a[..., 3] - a[..., 1]
    acx, acy = (a[..., 0] + a[..., 2]) / np.float32(2), (a[..., 1] + a[..., 3]) / np.float32(2)
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    clip = np.float32(BBOX_XFORM_CLIP)
    cx = rel[..., 0] / wx * aw + acx
    cy = rel[..., 1] / wy * ah + acy
    w = np.exp(np.minimum(rel[..., 2] / ww, clip)) * aw
    h = np.exp(np.minimum(rel[..., 3] / wh, clip)) * ah
    half = np.float32(0.5)
    return np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h], axis=-1)


def clip_boxes(boxes: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """xyxy ``boxes`` clamped into an image of ``size`` ``(H, W)``."""
    h, w = np.float32(size[0]), np.float32(size[1])
    out = boxes.copy()
    out[..., 0::2] = np.clip(out[..., 0::2], np.float32(0), w)
    out[..., 1::2] = np.clip(out[..., 1::2], np.float32(0), h)
    return out


def resize_boxes(boxes: np.ndarray, from_size: Sequence[int], to_size: Sequence[int]) -> np.ndarray:
    """xyxy ``boxes`` of an image of ``from_size`` ``(H, W)`` mapped to one of ``to_size``, x and y scaled apart (the
    inverse of the evaluation preset's plain resize)."""
    sy = to_size[0] / from_size[0]
    sx = to_size[1] / from_size[1]
    return boxes * np.array([sx, sy, sx, sy], dtype=np.float32)


def _greedy(boxes: np.ndarray, areas: np.ndarray, labels: np.ndarray | None, order: np.ndarray,
            iou_threshold: float, max_keep: int) -> list[int]:
    """Greedy NMS over ``order`` (indices, best first), stopping after ``max_keep`` kept; with ``labels``, a box only
    suppresses boxes of its own label. torchvision's kernel arithmetic: float32 IoU compared in double."""
    zero = np.float32(0)
    keep: list[int] = []
    rest = order
    while rest.size and len(keep) < max_keep:
        i, rest = rest[0], rest[1:]
        keep.append(int(i))
        b = boxes[rest]
        w = np.maximum(zero, np.minimum(boxes[i, 2], b[:, 2]) - np.maximum(boxes[i, 0], b[:, 0]))
        h = np.maximum(zero, np.minimum(boxes[i, 3], b[:, 3]) - np.maximum(boxes[i, 1], b[:, 1]))
        inter = w * h
        drop = (inter / (areas[i] + areas[rest] - inter)).astype(np.float64) > iou_threshold
        if labels is not None:
            drop &= labels[rest] == labels[i]
        rest = rest[~drop]
    return keep


def _prefix_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray | None, iou_threshold: float,
                max_keep: int | None) -> np.ndarray:
    """The first ``max_keep`` survivors of greedy NMS (all without it), computed on the shortest sufficient prefix
    of the score order: whether a box survives depends only on the boxes ranked above it, so NMS first runs on the
    best ``4 · max_keep`` and the prefix doubles until enough survive (``ops.postprocess.prefix_batched_nms``)."""
    n = len(boxes)
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-scores.astype(np.float32, copy=False), kind="stable")  # ties: lower index first
    limit = n if max_keep is None else max_keep
    m = n if max_keep is None else min(n, 4 * max_keep)
    while True:
        keep = _greedy(boxes, areas, labels, order[:m], iou_threshold, limit)
        if len(keep) >= limit or m == n:
            return np.array(keep, dtype=np.int64)
        m = min(n, 2 * m)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (``torchvision.ops.nms``): indices of the boxes kept, by decreasing score (ties: lower index first);
    a box is dropped when its float32 IoU with a kept one exceeds ``iou_threshold``."""
    return _prefix_nms(boxes, scores, None, iou_threshold, None)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float,
                max_keep: int | None = None) -> np.ndarray:
    """NMS within each label (``torchvision.ops.batched_nms`` on a CPU, both of its ways; module docstring): indices
    kept, by decreasing score; with ``max_keep``, the first ``max_keep`` of them (the same, found sooner)."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    boxes = boxes.astype(np.float32, copy=False)
    if len(boxes) > _VANILLA_ABOVE:  # one NMS per label on the boxes as they are
        return _prefix_nms(boxes, scores, labels, iou_threshold, max_keep)
    # the classes apart on tiles: shifted by label · (max coordinate + 1), computed in float32
    offsets = labels.astype(np.float32) * (boxes.max() + np.float32(1))
    return _prefix_nms(boxes + offsets[:, None], scores, None, iou_threshold, max_keep)


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``scores`` ``(C, A)``, the indices of its ``k`` best, best first."""
    if k < scores.shape[1]:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    order = np.argsort(-np.take_along_axis(scores, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def detections(cls_logits: np.ndarray, bbox_regression: np.ndarray, anchors: np.ndarray,
               image_size: Sequence[int], original_sizes: Sequence[Sequence[int]], settings: Postprocess,
               weights: Sequence[float] = DEFAULT_BOX_CODER_WEIGHTS) -> list[dict[str, np.ndarray]]:
    """Per image, the detections of raw SSD outputs (module docstring).

    Args:
        cls_logits: ``(N, A, K)`` class scores before softmax (index 0 = background).
        bbox_regression: ``(N, A, 4)`` offsets in the coder's encoding.
        anchors: ``(A, 4)`` xyxy anchors in network-input pixels.
        image_size: network input ``(H, W)``.
        original_sizes: ``(H, W)`` of each original image, the frame of the returned boxes.
        settings: score threshold, NMS IoU, top-k and detections per image.
        weights: the box coder's ``(wx, wy, ww, wh)``.

    Returns:
        per image ``boxes`` ``(D, 4)`` float32 xyxy original pixels, ``scores`` ``(D,)`` float32 and ``labels``
        ``(D,)`` int64 in ``1..K-1``, by decreasing score, ``D ≤ detections_per_img``.
    """
    num_images, num_anchors, num_classes = cls_logits.shape
    if bbox_regression.shape != (num_images, num_anchors, 4) or anchors.shape != (num_anchors, 4):
        raise ValueError(f"expected cls_logits (N, A, K), bbox_regression (N, A, 4) and anchors (A, 4), got "
                         f"{cls_logits.shape}, {bbox_regression.shape} and {anchors.shape}")
    if len(original_sizes) != num_images:
        raise ValueError(f"got {len(original_sizes)} original sizes for {num_images} images")
    s = settings
    size = (int(image_size[0]), int(image_size[1]))
    scores_all = softmax(cls_logits.astype(np.float32, copy=False))[..., 1:]  # (N, A, K-1)
    boxes_all = clip_boxes(decode_boxes(bbox_regression, anchors, weights), size)
    k = min(int(s.topk_candidates), num_anchors)
    thresh = np.float32(s.score_thresh)  # compared in float32, as PyTorch compares a float32 tensor with a number
    labels_of = np.arange(1, num_classes, dtype=np.int64)[:, None]
    results = []
    for scores, boxes, original in zip(scores_all, boxes_all, original_sizes):
        per_class = np.ascontiguousarray(scores.T)  # (K-1, A)
        top_idx = _top_k(per_class, k)
        top_scores = np.take_along_axis(per_class, top_idx, axis=1)
        keep = top_scores > thresh
        cand_scores, cand_boxes = top_scores[keep], boxes[top_idx[keep]]
        cand_labels = np.broadcast_to(labels_of, top_idx.shape)[keep]
        kept = batched_nms(cand_boxes, cand_scores, cand_labels, s.nms_iou, int(s.detections_per_img))
        results.append({"boxes": resize_boxes(cand_boxes[kept], size, (int(original[0]), int(original[1]))),
                        "scores": cand_scores[kept], "labels": cand_labels[kept]})
    return results


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, upper weight) per output along one axis: PyTorch's bilinear, align_corners=False
    (source ``(d + 0.5) · src / dst − 0.5``, clamped at 0; the upper index stays inside)."""
    scale = np.float32(src / dst)
    pos = np.maximum((np.arange(dst, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    lo = np.minimum(pos.astype(np.int64), src - 1)
    hi = np.minimum(lo + 1, src - 1)
    return lo, hi, (pos - lo.astype(np.float32)).astype(np.float32)


def resize_bilinear(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """float32 ``(..., h, w)`` → ``(..., H, W)`` bilinear, ``align_corners=False`` (``torch.nn.functional.
    interpolate``'s sampling positions and weights, in float32)."""
    out_h, out_w = int(size[0]), int(size[1])
    h, w = x.shape[-2:]
    x = x.astype(np.float32, copy=False)
    if (out_h, out_w) == (h, w):
        return x
    lo, hi, t = _linear_taps(h, out_h)
    t = t[:, None]
    rows = x[..., lo, :] * (np.float32(1) - t) + x[..., hi, :] * t
    lo, hi, t = _linear_taps(w, out_w)
    return rows[..., lo] * (np.float32(1) - t) + rows[..., hi] * t
