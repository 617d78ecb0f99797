"""Semantic-segmentation metrics from a confusion matrix accumulated over a whole dataset (pure torch).

mIoU is computed once from the summed matrix, never averaged over batches or images (averaging makes the number
depend on the batch size). Conventions, identical to ``torchmetrics`` ``MulticlassJaccardIndex(average="macro",
ignore_index=255)``:

- pixels whose target is ``ignore_index`` (255: VOC's object boundaries and padding) are left out entirely, whatever
  was predicted there;
- IoU_c = TP / (TP + FP + FN) per class c;
- a class that appears neither in the targets nor in the predictions has no IoU: it is NaN in ``iou`` and left out
  of the mean (torchmetrics gives it weight 0). A class that is predicted but absent from the targets has IoU 0 and
  counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SegMetrics", "ConfusionMatrix", "metrics_from_confusion"]


@dataclass(frozen=True)
class SegMetrics:
    """``miou`` and ``pixel_acc`` are floats; ``iou`` is a (K,) float64 tensor with NaN for classes never seen."""

    miou: float
    pixel_acc: float
    iou: Tensor

    def per_class(self, names: list[str] | tuple[str, ...] | None = None) -> dict[str, float]:
        names = names or [str(i) for i in range(len(self.iou))]
        if len(names) != len(self.iou):
            raise ValueError(f"{len(names)} class names for {len(self.iou)} classes")
        return {n: float(v) for n, v in zip(names, self.iou)}


def metrics_from_confusion(matrix: Tensor) -> SegMetrics:
    """Metrics from a (K, K) matrix whose rows are targets and columns predictions."""
    m = matrix.to(torch.float64)
    tp = m.diag()
    union = m.sum(0) + m.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    seen = union > 0
    miou = float(iou[seen].mean()) if bool(seen.any()) else float("nan")
    total = m.sum()
    pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
    return SegMetrics(miou=miou, pixel_acc=pixel_acc, iou=iou)


class ConfusionMatrix:
    """Accumulates a (K, K) int64 confusion matrix (rows: target, columns: prediction) with one ``bincount``.

    Args:
        num_classes: K; valid labels are 0..K-1.
        ignore_index: target value excluded from the matrix (255).
        device: where the matrix lives (the predictions' device avoids copies).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} is a valid class for num_classes={num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch. ``pred`` and ``target`` are integer label maps of the same shape (e.g. (N, H, W))."""
        if pred.dtype.is_floating_point or target.dtype.is_floating_point:
            raise TypeError(f"expected integer label maps, got {pred.dtype} and {target.dtype} (argmax the logits)")
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        k = self.num_classes
        target = target.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        pred = pred.reshape(-1).to(device=self.matrix.device, dtype=torch.int64)
        keep = target != self.ignore_index
        target, pred = target[keep], pred[keep]
        if target.numel() == 0:
            return
        bad_t = (target < 0) | (target >= k)
        bad_p = (pred < 0) | (pred >= k)
        if bool(bad_t.any()) or bool(bad_p.any()):
            values = torch.unique(torch.cat([target[bad_t], pred[bad_p]]))[:8].tolist()
            raise ValueError(f"labels must lie in 0..{k - 1} (or be {self.ignore_index} in the target); "
                             f"found {values}")
        self.matrix += torch.bincount(target * k + pred, minlength=k * k).reshape(k, k)

    def compute(self) -> SegMetrics:
        return metrics_from_confusion(self.matrix)
