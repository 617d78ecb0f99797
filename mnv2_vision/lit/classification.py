"""ClassificationModule (the image-classifier training system), its metrics, and the config → parts helpers that
the training driver (``lit/driver.py``) and the classification tools share.

Accuracy is computed once per validation pass from a confusion matrix accumulated over the whole split (rows:
targets, columns: predictions), so it never depends on the batch size; top-5 is counted alongside.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..config import Config, OptimCfg, SchedCfg
from ..data.classification.datamodule import ClassificationDataModule
from ..eval.miou import ConfusionMatrix
from .common import build_optimizer, build_scheduler

__all__ = ["ClassificationModule", "accuracy_from_confusion", "build_cls_datamodule", "resolve_cls_classes",
           "evaluate_classifier"]


def accuracy_from_confusion(matrix: Tensor) -> tuple[float, Tensor]:
    """(top-1, per-class accuracy) from a (K, K) matrix (rows: targets); a class with no images gets NaN."""
    m = matrix.to(torch.float64)
    total = m.sum()
    per_class = torch.where(m.sum(1) > 0, m.diag() / m.sum(1).clamp(min=1), torch.full_like(m.diag(), float("nan")))
    return (float(m.diag().sum() / total) if total > 0 else float("nan")), per_class


class ClassificationModule(pl.LightningModule):
    """Softmax cross-entropy training of an image classifier; top-1 / top-5 / per-class accuracy on validation.

    Args:
        model: maps ``(N, 3, H, W)`` images to ``(N, K)`` logits; kept as ``self.model`` (checkpoint keys ``model.*``).
        num_classes: K.
        optim, sched: optimiser and per-step LR schedule settings (``lit/common.py``).
        label_smoothing: cross-entropy label smoothing.
        classes: class names, stored in the checkpoint for evaluation and prediction.
        config: the resolved config as a dict, stored in every checkpoint (``hyper_parameters["config"]``).

    Logs ``train/loss``, ``train/top1`` (running, on augmented batches), ``val/loss``, ``val/top1`` and ``val/top5``;
    after each validation pass ``confusion`` holds the matrix and ``history`` one row per epoch.
    """

    def __init__(self, model: nn.Module, *, num_classes: int, optim: OptimCfg, sched: SchedCfg,
                 label_smoothing: float = 0.0, classes: Sequence[str] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]
        if len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for {num_classes} classes")
        if getattr(model, "num_classes", num_classes) != num_classes:
            raise ValueError(f"model has {model.num_classes} outputs but the dataset has {num_classes} classes")
        self.save_hyperparameters({"config": config or {}, "classes": classes})
        self.model = model
        self.num_classes, self.classes = num_classes, classes
        self.optim_cfg, self.sched_cfg = optim, sched
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.history: list[dict[str, float]] = []
        self._cm: ConfusionMatrix | None = None
        self._top5 = self._seen = 0
        self._loss_sum = 0.0

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        logits = self.model(images)
        loss = self.criterion(logits, labels)
        n = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/top1", (logits.argmax(1) == labels).float().mean(), batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._cm = ConfusionMatrix(self.num_classes, ignore_index=-1, device=self.device)
        self._top5 = self._seen = 0
        self._loss_sum = 0.0

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits = self.model(images)
        assert self._cm is not None
        self._cm.update(logits.argmax(1), labels)
        k = min(5, self.num_classes)
        self._top5 += int((logits.topk(k, dim=1).indices == labels[:, None]).any(1).sum())
        self._seen += labels.numel()
        self._loss_sum += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))

    def on_validation_epoch_end(self) -> None:
        assert self._cm is not None
        # Sum over ranks so every rank logs the same dataset-level numbers.
        counts = torch.tensor([self._top5, self._seen, self._loss_sum], dtype=torch.float64, device=self.device)
        matrix = self.trainer.strategy.reduce(self._cm.matrix, reduce_op="sum")
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.confusion = matrix.detach().cpu()
        top1, _ = accuracy_from_confusion(self.confusion)
        seen = max(1.0, float(counts[1]))
        top5, loss = float(counts[0]) / seen, float(counts[2]) / seen
        self.log("val/top1", top1, prog_bar=True)
        self.log("val/top5", top5)
        self.log("val/loss", loss)
        if not self.trainer.sanity_checking:
            self.history.append({"epoch": self.current_epoch + 1, "step": self.global_step, "top1": top1,
                                 "top5": top5, "loss": loss})

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optim_cfg, self.model)
        total = int(self.trainer.estimated_stepping_batches)
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        return {"optimizer": optimizer, "lr_scheduler": build_scheduler(self.sched_cfg, optimizer, total, per_epoch)}


# ---------------------------------------------------------------------------------------------- config → parts
def build_cls_datamodule(cfg: Config, download: bool = False) -> ClassificationDataModule:
    """The ``ClassificationDataModule`` that ``cfg.data`` describes (a folder under ``data.root``, or the shapes)."""
    from ..data import resolve_root

    if download and not cfg.data.synthetic:
        Path(cfg.data.root).expanduser().mkdir(parents=True, exist_ok=True)
    return ClassificationDataModule.from_config(cfg.data, resolve_root(cfg.data), download=download)


def resolve_cls_classes(cfg: Config, num_classes: int) -> Config:
    """``cfg`` with ``model.num_classes`` set from the dataset (a different configured value is an error)."""
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset has {num_classes} classes; "
                         "set model.num_classes=null to take it from the data")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


@torch.no_grad()
def evaluate_classifier(model: nn.Module, loader: Any, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5 and per-class accuracy of ``model`` (used as given: put it in eval mode) over ``loader``."""
    device = next(model.parameters()).device
    cm = ConfusionMatrix(num_classes, ignore_index=-1)
    top5 = seen = 0
    for images, labels in loader:
        logits = model(images.to(device)).cpu()
        cm.update(logits.argmax(1), labels)
        top5 += int((logits.topk(min(5, num_classes), 1).indices == labels[:, None]).any(1).sum())
        seen += labels.numel()
    top1, per_class = accuracy_from_confusion(cm.matrix)
    return {"top1": top1, "top5": top5 / max(1, seen), "per_class": per_class.tolist(), "confusion": cm.matrix,
            "images": seen}
