"""DetectionModule (the SSDLite training system) and the config → parts helpers the detection tools share.

The network only maps images to raw ``cls_logits`` / ``bbox_regression``; this module wires in the anchors, the SSD
loss (``ops.losses``), post-processing (``ops.postprocess``) and COCO evaluation (``eval.coco``). Validation gathers
the detections of the WHOLE validation set (all ranks) before one pycocotools evaluation: mAP is a dataset-level
number, never a mean over batches.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from ..config import Config, EvalCfg, LossCfg, OptimCfg, SchedCfg
from ..data.detection.datamodule import DetectionDataModule
from ..eval.coco import evaluate_coco, to_coco_results
from ..ops.boxes import BoxCoder
from ..ops.losses import ssd_multibox_loss
from ..ops.postprocess import PostprocessSettings, postprocess_detections
from .common import build_optimizer, build_scheduler, gather_lists, skipped_note

__all__ = ["DetectionModule", "build_det_datamodule", "resolve_det_classes", "categories_from",
           "check_annotations"]


# ---------------------------------------------------------------------------------------------- config → parts
def build_det_datamodule(cfg: Config, category_ids: Sequence[int] | None = None) -> DetectionDataModule:
    """The ``DetectionDataModule`` that ``cfg.data`` describes (COCO, YOLO, VOC XML, CVAT, LabelMe or Label Studio
    labels under ``data.root``, or the shapes)."""
    from ..data import resolve_root

    from ..data.formats import DETECTION_FORMATS

    if cfg.data.format not in DETECTION_FORMATS:
        raise ValueError(f"detection reads boxes: data.format must be one of {list(DETECTION_FORMATS)}, got "
                         f"{cfg.data.format!r}")
    return DetectionDataModule.from_config(cfg.data, resolve_root(cfg.data), category_ids=category_ids, seed=cfg.seed)


def resolve_det_classes(cfg: Config, num_classes: int) -> Config:
    """``cfg`` with ``model.num_classes`` set from the dataset (a different configured value is an error)."""
    if cfg.model.num_classes is not None and cfg.model.num_classes != num_classes:
        raise ValueError(f"model.num_classes={cfg.model.num_classes} but the dataset has {num_classes - 1} "
                         f"categories (+ background = {num_classes}); set model.num_classes=null")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=num_classes))


def check_annotations(dm: DetectionDataModule) -> None:
    """A split without a single (non-crowd) box cannot train (nothing to learn) nor validate (mAP is undefined:
    pycocotools reports -1 and the "best" checkpoint would be chosen on it): a ``DataError`` naming the file."""
    from ..errors import DataError

    for what, dataset in (("training", dm.train_dataset), ("validation", dm.val_dataset)):
        if dataset.num_annotations() == 0:
            raise DataError(f"{dataset.ann_file} holds no boxes for the {len(dataset)} {what} image(s) used "
                            f"(data.subset={dm.subset}); detection needs annotated images in both splits — check "
                            "the file with tools/check_data.py")


def categories_from(hparams: dict[str, Any]) -> tuple[list[int], list[str]]:
    """The label map stored in a detection checkpoint's hyperparameters."""
    if "category_ids" not in hparams:
        raise ValueError("checkpoint has no category_ids in its hyperparameters; was it written by tools/train_det.py?")
    ids = [int(c) for c in hparams["category_ids"]]
    names = [str(n) for n in hparams.get("category_names", ids)]
    return ids, names


# ---------------------------------------------------------------------------------------------- training system
class DetectionModule(pl.LightningModule):
    """SSDLite training: SSD multibox loss, optimiser/schedule from the config, COCO mAP over the whole val set.

    Args:
        model: returns ``{"cls_logits": (N, A, K), "bbox_regression": (N, A, 4)}`` and offers ``anchors(size, dev)``.
        optim, sched: optimiser and per-step LR schedule settings (``lit/common.py``).
        eval_cfg: validation settings: post-processing (``postprocess``, made once from it) and the COCO evaluator.
        loss: SSD loss settings (negatives per positive, box weight, label smoothing).
        category_ids: label ``i`` (1..C) ↔ COCO category id ``category_ids[i-1]``.
        category_names: names for the per-class AP log keys (``val/ap_<name>``).
        config: the resolved config as a dict, stored in every checkpoint (``hyper_parameters["config"]``).

    Logs ``train/loss``, ``train/loss_cls``, ``train/loss_box``, ``val/map``, ``val/map50``, ``val/map75``,
    ``val/ap_<name>`` and ``val/num_images`` (images evaluated, over all ranks, each once); the last evaluation's full
    summary (12 stats, per-class AP) is in ``coco_summary``, its COCO results in ``coco_results``, its image ids
    in ``val_image_ids`` and the unusable images it left out (``Skipped``) in ``val_skipped``.
    """

    def __init__(self, model: nn.Module, *, optim: OptimCfg, sched: SchedCfg, eval_cfg: EvalCfg, loss: LossCfg,
                 category_ids: Sequence[int], category_names: Sequence[str] | None = None,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        names = list(category_names) if category_names is not None else [str(c) for c in category_ids]
        if len(names) != len(category_ids):
            raise ValueError(f"{len(names)} category names for {len(category_ids)} category ids")
        if getattr(model, "num_classes", len(category_ids) + 1) != len(category_ids) + 1:
            raise ValueError(f"model has {model.num_classes} class outputs but there are {len(category_ids)} "
                             f"categories (+ background = {len(category_ids) + 1})")
        self.save_hyperparameters({"config": config or {}, "category_ids": [int(c) for c in category_ids],
                                   "category_names": names})
        self.model = model
        self.coder = BoxCoder()
        self.optim_cfg, self.sched_cfg, self.eval_cfg, self.loss_cfg = optim, sched, eval_cfg, loss
        self.postprocess = PostprocessSettings.from_eval(eval_cfg)
        self.category_ids, self.category_names = [int(c) for c in category_ids], names
        self.coco_summary: dict[str, Any] | None = None
        self.coco_results: list[dict[str, Any]] = []
        self.val_image_ids: list[int] = []
        self.val_skipped: list[str] = []
        self._val_dets: list[dict[str, Tensor]] = []
        self._val_ids: list[int] = []
        self._val_skipped: list[str] = []
        self._channels_last = False

    @staticmethod
    def batch_ids(batch: tuple[Tensor, list[dict]]) -> list[int]:
        """COCO image ids of a batch (named by ``FiniteLossGuard`` when the loss turns non-finite)."""
        return [int(t["image_id"]) for t in batch[1]]

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def _inputs(self, images: Tensor) -> Tensor:
        """On CPU, the network runs in channels-last layout: oneDNN's convolutions (the depthwise ones above all)
        train about 2x faster on NHWC tensors (measured on 2 cores, SSDLite at 160 px, width 0.5). GPUs keep the
        default layout. ``Module.to`` converts the parameters in place, so the optimiser keeps its references, and
        values and state-dict keys do not change. Under a Trainer the parameters are converted in ``setup`` (before
        DDP wraps the model); the conversion here covers a module used outside one."""
        if images.device.type != "cpu":
            return images
        if not self._channels_last:
            self.model.to(memory_format=torch.channels_last)
            self._channels_last = True
        return images.contiguous(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        """On CPU, switch the network to channels-last *before* the strategy wraps it: converted lazily inside the
        first DDP forward (``_inputs``), the parameters change layout under DistributedDataParallel's gradient
        buckets, which warns "grad strides do not match bucket view strides" and gave a different, run-to-run
        varying loss (measured: 2 CPU ranks, step-0 loss 24.4 instead of 15.8; ``tests/test_ddp.py``)."""
        if self.trainer.strategy.root_device.type == "cpu" and not self._channels_last:
            self.model.to(memory_format=torch.channels_last)
            self._channels_last = True

    def _anchors(self, images: Tensor) -> Tensor:
        return self.model.anchors(tuple(images.shape[-2:]), images.device)

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        out = self.model(self._inputs(images))
        losses = ssd_multibox_loss(out["cls_logits"], out["bbox_regression"], self._anchors(images), targets,
                                   self.coder, neg_pos_ratio=self.loss_cfg.neg_pos_ratio,
                                   box_weight=self.loss_cfg.box_weight, label_smoothing=self.loss_cfg.label_smoothing)
        n = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        self.log("train/loss_cls", losses["loss_cls"], batch_size=n)
        self.log("train/loss_box", losses["loss_box"], batch_size=n)
        return losses["loss"]

    def skipped_note(self) -> str:
        return skipped_note(self.val_skipped)

    def on_validation_epoch_start(self) -> None:
        self._val_dets, self._val_ids, self._val_skipped = [], [], []

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, targets = self._usable(batch)
        if targets:
            self.collect_detections(self.model(self._inputs(images)), images, targets)

    def _usable(self, batch: tuple) -> tuple[Tensor, list[dict]]:
        """The images and targets of a validation batch; the unusable images the evaluation collate left out (its
        third element) are recorded."""
        if len(batch) > 2:
            self._val_skipped += [str(s) for s in batch[2]]
        return batch[0], batch[1]

    def collect_detections(self, out: dict[str, Tensor], images: Tensor, targets: Sequence[dict]) -> None:
        """Post-process raw outputs (one row per target) and keep the detections for the epoch's COCO evaluation."""
        dets = postprocess_detections(
            out["cls_logits"], out["bbox_regression"], self._anchors(images), self.coder, tuple(images.shape[-2:]),
            [tuple(t["orig_size"]) for t in targets], self.postprocess)
        self._val_dets += [{k: v.cpu() for k, v in d.items()} for d in dets]
        self._val_ids += [int(t["image_id"]) for t in targets]

    def _gathered(self) -> tuple[list[dict[str, Tensor]], list[int]]:
        """Detections of every rank, each image once (a distributed sampler pads by repeating images)."""
        unique = dict(gather_lists(list(zip(self._val_ids, self._val_dets))))
        ids = sorted(unique)
        return [unique[i] for i in ids], ids

    def _val_coco(self) -> Any:
        loader = self.trainer.val_dataloaders
        dataset = getattr(loader, "dataset", None)
        if not hasattr(dataset, "coco"):
            raise TypeError(f"validation needs a dataset with a pycocotools .coco ground truth "
                            f"(data/coco.py CocoDetection), got {type(dataset).__name__}")
        return dataset.coco

    def on_validation_epoch_end(self) -> None:
        dets, ids = self._gathered()
        # Every rank computes the same numbers from the same gathered list, so logs agree without a reduction.
        self.coco_results = to_coco_results(dets, ids, self.category_ids)
        summary = evaluate_coco(self._val_coco(), self.coco_results, image_ids=ids,
                                evaluator=self.eval_cfg.coco_evaluator)
        self.coco_summary, self.val_image_ids = summary, ids
        self.val_skipped = sorted(set(gather_lists(self._val_skipped)))
        self.log("val/map", summary["map"], prog_bar=True)
        self.log("val/map50", summary["map50"])
        self.log("val/map75", summary["map75"])
        self.log("val/num_images", float(len(ids)))
        for cat_id, name in zip(self.category_ids, self.category_names):
            ap = summary["per_class"].get(cat_id, float("nan"))
            if not math.isnan(ap):
                self.log(f"val/ap_{re.sub(r'[^0-9A-Za-z_]+', '_', name)}", ap)
        self._val_dets, self._val_ids, self._val_skipped = [], [], []

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optim_cfg, self.model)
        total = int(self.trainer.estimated_stepping_batches)  # also sets up the train loader
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        return {"optimizer": optimizer, "lr_scheduler": build_scheduler(self.sched_cfg, optimizer, total, per_epoch)}
