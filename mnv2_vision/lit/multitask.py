"""MultiTaskModule (the training system of the SSDLite + DeepLab pair) and the config → parts helpers its tools share.

It is ``DetectionModule`` (anchors, SSD loss, post-processing, COCO evaluation, channels-last on CPU, optimiser and
schedule) plus the segmentation half of ``SegmentationModule`` (cross-entropy with ignore 255, one confusion matrix
over the whole split). Loss masking (design notes): each sample trains only the head it has labels for — the SSD loss
runs on the samples with ``has_boxes`` (an image of a detection set without objects included: a real negative) and
the segmentation loss on the samples with a ``mask``; a batch without any sample of one kind gives that head an
exactly zero gradient (its outputs still enter the graph, times 0, so DDP sees every parameter used).
"""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import Config, ConfigError, EvalCfg, LossCfg, OptimCfg, SchedCfg
from ..data.io.labels import IGNORE_INDEX
from ..data.classes import multitask_seg_class_names
from ..eval.miou import ConfusionMatrix
from ..ops.losses import seg_loss, ssd_multibox_loss
from .detection import DetectionModule
from .segmentation import predict_probs

__all__ = ["MultiTaskModule", "segment_targets", "segmentation_pairs", "resolve_mt_classes", "build_mt_datamodule"]


# ---------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def segment_targets(model: nn.Module, images: Tensor, sizes: Sequence[tuple[int, int]],
                    scales: Sequence[float] = (1.0,), flip: bool = False, logits: Tensor | None = None) -> list[Tensor]:
    """Label maps ``(h_i, w_i)`` at ``sizes`` (each image's own size) for network-frame ``images`` (N, 3, S, S): the
    pair's input, every image resized to the training size. Single scale: the logits are upsampled bilinearly to
    each size, then argmax, as the module's validation does (``logits``: those of ``model(images)["out"]`` when
    already computed). With more ``scales`` or ``flip``: probabilities averaged over them at the network size
    (``predict_probs``), then upsampled."""
    if tuple(scales) == (1.0,) and not flip:
        maps = (logits if logits is not None else model(images)["out"]).float()
    else:
        maps = predict_probs(model, images, scales, flip)
    return [F.interpolate(maps[i:i + 1], size=tuple(size), mode="bilinear", align_corners=False).argmax(1)[0]
            for i, size in enumerate(sizes)]


@torch.no_grad()
def segmentation_pairs(model: nn.Module, loader, scales: Sequence[float] = (1.0,), flip: bool = False,
                       device: str | torch.device = "cpu",
                       skipped: list[str] | None = None) -> Iterator[tuple[Tensor, Tensor, str]]:
    """(prediction, label map, image id) of every sample with a mask in a multi-task validation ``loader``, each at
    the image's own size (``segment_targets``); the unusable images the loader left out are appended to
    ``skipped``."""
    for images, targets, left_out in loader:
        if skipped is not None:
            skipped += [str(s) for s in left_out]
        rows = [i for i, t in enumerate(targets) if "mask" in t]
        if not rows:
            continue
        masks = [targets[i]["mask"].to(device) for i in rows]
        preds = segment_targets(model, images[rows].to(device), [tuple(m.shape) for m in masks], scales, flip)
        yield from zip(preds, masks, [str(targets[i]["id"]) for i in rows])


# ---------------------------------------------------------------------------------------------- config → parts
def resolve_mt_classes(cfg: Config, num_classes: int, seg_class_names: Sequence[str]) -> Config:
    """``cfg`` with ``model.num_classes`` and ``model.seg_num_classes`` from the data (a different configured value
    is an error), so checkpoints rebuild the same heads."""
    m = cfg.model
    for key, want in (("num_classes", num_classes), ("seg_num_classes", len(seg_class_names))):
        have = getattr(m, key)
        if have is not None and have != want:
            raise ConfigError(f"model.{key}={have} but the data gives {want}; set model.{key}=null")
    return dataclasses.replace(cfg, model=dataclasses.replace(m, num_classes=num_classes,
                                                              seg_num_classes=len(seg_class_names)))


def build_mt_datamodule(cfg: Config, category_ids: Sequence[int] | None = None):
    """The ``MultiTaskDataModule`` that ``cfg.data`` describes: COCO layout under ``data.root`` (masks painted with
    ``data.masks``) plus, with ``data.seg_root``, a segmentation-only VOC layout; with ``data.synthetic`` the
    shapes' COCO and VOC layouts of the same scenes."""
    from ..data import LAYOUTS, resolve_root
    from ..data.multitask import MultiTaskDataModule

    from ..data.formats import DETECTION_FORMATS

    d = cfg.data
    if d.format not in DETECTION_FORMATS:
        raise ConfigError(f"the multi-task pair reads boxes: data.format must be one of {list(DETECTION_FORMATS)}, "
                          f"got {d.format!r} (a segmentation-only VOC dataset goes in data.seg_root)")
    seg_root = None
    if d.seg_root is not None:
        if d.synthetic:
            seg_root = resolve_root(dataclasses.replace(d, format="voc"))
        else:
            seg_root = Path(d.seg_root).expanduser()
            if not seg_root.exists():
                raise FileNotFoundError(f"segmentation dataset not found at data.seg_root={str(seg_root)!r}. "
                                        f"Expected the {LAYOUTS['voc']}")
    return MultiTaskDataModule(
        resolve_root(d), train_split=d.train_split, val_split=d.val_split, masks=d.masks, seg_root=seg_root,
        seg_train_split=d.seg_train_split, seg_val_split=d.seg_val_split,
        seg_class_names=multitask_seg_class_names(cfg), image_size=d.image_size, augment=d.augment,
        batch_size=d.batch_size, val_batch_size=d.val_batch_size, num_workers=d.num_workers, subset=d.subset,
        mean=d.mean, std=d.std, category_ids=category_ids, seed=cfg.seed, fmt=d.format)


# ---------------------------------------------------------------------------------------------- training system
class MultiTaskModule(DetectionModule):
    """Training of the SSDLite + DeepLab pair: SSD loss + ``loss.seg_weight`` · segmentation cross-entropy, each on
    the samples labelled for it; one validation pass gives COCO mAP (``val/map``...) and mIoU (``val/miou``...).

    Args:
        model: returns ``{"cls_logits", "bbox_regression", "out"}`` and offers ``anchors(size, device)``.
        optim, sched, eval_cfg, loss, category_ids, category_names, config: as ``DetectionModule``.
        seg_class_names: the segmentation classes (background first), for ``val/iou_<name>``.

    Logs ``train/loss``, ``train/loss_det`` (= ``loss_cls`` + box weight · ``loss_box``, both logged too),
    ``train/loss_seg``; ``val/map``, ``val/map50``, ``val/map75``, ``val/ap_<name>``, ``val/num_images`` (detection
    images), ``val/miou``, ``val/pixel_acc``, ``val/iou_<name>``, ``val/num_seg_images`` and ``val/score`` = (mAP +
    mIoU) / 2, which the best checkpoint follows. Under DDP the detections are gathered and the confusion matrices
    summed once per epoch; every image is evaluated once (``data/distributed.py``).
    """

    def __init__(self, model: nn.Module, *, optim: OptimCfg, sched: SchedCfg, eval_cfg: EvalCfg, loss: LossCfg,
                 category_ids: Sequence[int], category_names: Sequence[str] | None = None,
                 seg_class_names: Sequence[str], config: dict[str, Any] | None = None) -> None:
        super().__init__(model, optim=optim, sched=sched, eval_cfg=eval_cfg, loss=loss, category_ids=category_ids,
                         category_names=category_names, config=config)
        names = tuple(seg_class_names)
        if getattr(model, "seg_num_classes", len(names)) != len(names):
            raise ValueError(f"model has {model.seg_num_classes} segmentation outputs but {len(names)} class names")
        self.save_hyperparameters({**dict(self.hparams), "class_names": list(names)})
        self.seg_class_names = names
        self.confmat: ConfusionMatrix | None = None
        self.seg_metrics: dict[str, Any] | None = None
        self.val_num_seg_images = 0

    @staticmethod
    def batch_ids(batch: tuple[Tensor, list[dict]]) -> list[str]:
        """Names of a batch's images (COCO ids, VOC ids) for ``FiniteLossGuard``."""
        return [str(t.get("id", t["image_id"])) for t in batch[1]]

    def losses(self, out: dict[str, Tensor], images: Tensor, targets: Sequence[dict]) -> dict[str, Tensor]:
        """The pair's loss terms for one batch, each head on the samples labelled for it (module docstring)."""
        det_rows = [i for i, t in enumerate(targets) if t.get("has_boxes", True)]
        seg_rows = [i for i, t in enumerate(targets) if "mask" in t]
        n = len(targets)
        if det_rows:
            pick = slice(None) if len(det_rows) == n else torch.tensor(det_rows, device=images.device)
            d = ssd_multibox_loss(out["cls_logits"][pick], out["bbox_regression"][pick], self._anchors(images),
                                  [targets[i] for i in det_rows], self.coder, neg_pos_ratio=self.loss_cfg.neg_pos_ratio,
                                  box_weight=self.loss_cfg.box_weight, label_smoothing=self.loss_cfg.label_smoothing)
            loss_cls, loss_box, loss_det = d["loss_cls"], d["loss_box"], d["loss"]
        else:  # no sample with boxes: the detection head gets an exactly zero gradient
            loss_cls = loss_box = loss_det = (out["cls_logits"].sum() + out["bbox_regression"].sum()) * 0.0
        if seg_rows:
            pick = slice(None) if len(seg_rows) == n else torch.tensor(seg_rows, device=images.device)
            masks = torch.stack([targets[i]["mask"] for i in seg_rows]).to(images.device)
            loss_seg = seg_loss(out["out"][pick], masks, IGNORE_INDEX, self.loss_cfg.label_smoothing)
        else:
            loss_seg = out["out"].sum() * 0.0
        return {"loss": loss_det + self.loss_cfg.seg_weight * loss_seg, "loss_det": loss_det, "loss_cls": loss_cls,
                "loss_box": loss_box, "loss_seg": loss_seg}

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.losses(self.model(self._inputs(images)), images, targets)
        n = images.shape[0]
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=n)
        for key in ("loss_det", "loss_cls", "loss_box", "loss_seg"):
            self.log(f"train/{key}", losses[key], batch_size=n)
        return losses["loss"]

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self.confmat = ConfusionMatrix(len(self.seg_class_names), IGNORE_INDEX, device=self.device)
        self._seg_images = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, targets = self._usable(batch)
        if not targets:
            return
        out = self.model(self._inputs(images))
        det_rows = [i for i, t in enumerate(targets) if t.get("has_boxes", True) and int(t["image_id"]) >= 0]
        if det_rows:
            idx = torch.tensor(det_rows, device=images.device)
            self.collect_detections({k: out[k][idx] for k in ("cls_logits", "bbox_regression")}, images,
                                    [targets[i] for i in det_rows])
        seg_rows = [i for i, t in enumerate(targets) if "mask" in t]
        if seg_rows:
            masks = [targets[i]["mask"].to(images.device) for i in seg_rows]
            preds = segment_targets(self.model, images[seg_rows], [tuple(m.shape) for m in masks],
                                    logits=out["out"][seg_rows])
            for pred, mask in zip(preds, masks):
                self.confmat.update(pred, mask)
            self._seg_images += len(seg_rows)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # COCO evaluation of the gathered detections: val/map ...
        reduce = self.trainer.strategy.reduce
        self.confmat.matrix = reduce(self.confmat.matrix, reduce_op="sum")
        metrics = self.confmat.compute()
        self.seg_metrics = {"miou": metrics.miou, "pixel_acc": metrics.pixel_acc,
                            "per_class": metrics.per_class(list(self.seg_class_names))}
        self.log("val/miou", metrics.miou, prog_bar=True)
        self.log("val/pixel_acc", metrics.pixel_acc)
        self.val_num_seg_images = int(reduce(self._seg_images, reduce_op="sum"))
        self.log("val/num_seg_images", float(self.val_num_seg_images))
        for name, iou in self.seg_metrics["per_class"].items():
            self.log(f"val/iou_{re.sub(r'[^0-9A-Za-z_]+', '_', name)}", iou)
        m = self.coco_summary["map"] if self.coco_summary else 0.0
        miou = 0.0 if math.isnan(metrics.miou) else metrics.miou
        self.log("val/score", (m + miou) / 2)
