"""SegmentationModule (training system for DeepLab) and the inference helpers shared by the tools.

Inference: single scale, or multi-scale + left-right flip as in TF DeepLab (paper Table 7 "MF"): for every scale the
image is resized, the logits are resized back to the full image, turned into probabilities and averaged; the flipped
pass is flipped back first. Validation is single-scale on full images; ``tools/eval_seg.py --ms-flip`` uses the scales
in ``eval.ms_scales``. Each image is predicted at its own size, so results do not depend on the batch size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..config import Config, ConfigError, OptimCfg, SchedCfg
from ..data.io.labels import IGNORE_INDEX
from ..data.classes import segmentation_class_names
from ..eval.miou import ConfusionMatrix
from ..ops.losses import seg_loss
from .common import build_optimizer, build_scheduler, gather_lists, skipped_note

__all__ = ["SegmentationModule", "size_groups", "predict_probs", "predict_batch", "predict_segmentation",
           "resolve_num_classes", "build_seg_datamodule"]


# ---------------------------------------------------------------------------------------------- inference
def size_groups(sizes: Tensor) -> dict[tuple[int, int], list[int]]:
    """Batch indices grouped by true (h, w), from the (N, 2) ``size`` of a ``pad_collate`` batch."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (h, w) in enumerate(sizes.tolist()):
        groups.setdefault((h, w), []).append(i)
    return groups


@torch.no_grad()
def predict_probs(model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities (N, K, H, W) at the input's full resolution, averaged over scales (and flips).

    Args:
        model: returns ``{"out": logits}`` at its input size (``DeepLabV3``).
        images: (N, 3, H, W) normalised images of one size.
        scales: resize factors; (1.0,) is single-scale inference.
        flip: also run every scale on the left-right flipped image.
    """
    if not scales:
        raise ValueError("scales must not be empty")
    h, w = images.shape[-2:]
    total: Tensor | None = None
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        x = images if size == (h, w) else F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            logits = model(x.flip(-1) if flipped else x)["out"]
            logits = logits.flip(-1) if flipped else logits
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            probs = logits.float().softmax(1)
            total = probs if total is None else total + probs
    passes = len(scales) * (2 if flip else 1)
    return total / passes


@torch.no_grad()
def predict_batch(model: nn.Module, images: Tensor, sizes: Tensor | None = None, scales: Sequence[float] = (1.0,),
                  flip: bool = False) -> list[Tensor]:
    """Label maps (h_i, w_i) for a padded batch (``pad_collate``), each image run at its own true size.

    Images that share a size run together; the padding never enters the network.
    """
    n = images.shape[0]
    groups = size_groups(sizes if sizes is not None else torch.tensor([list(images.shape[-2:])] * n))
    out: list[Tensor] = [images.new_empty(0)] * n
    for (h, w), idx in groups.items():
        labels = predict_probs(model, images[idx, :, :h, :w], scales, flip).argmax(1)
        for j, i in enumerate(idx):
            out[i] = labels[j]
    return out


@torch.no_grad()
def predict_segmentation(model: nn.Module, image: np.ndarray, cfg: Config, ms_flip: bool = False) -> np.ndarray:
    """Label map (H, W) uint8 for one RGB uint8 image (H, W, 3), e.g. from ``data.io.images.load_rgb``.

    Normalises with ``cfg.data.mean/std`` (the training normalisation); ``ms_flip`` uses ``cfg.eval.ms_scales`` and
    left-right flips when ``cfg.eval.flip``. The model is used as given (put it in eval mode first).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    param = next(model.parameters())
    x = torch.from_numpy(np.ascontiguousarray(image)).to(param.device).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(cfg.data.mean, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.data.std, device=x.device).view(3, 1, 1)
    x = ((x - mean) / std).unsqueeze(0).to(param.dtype)
    scales, flip = (tuple(cfg.eval.ms_scales), cfg.eval.flip) if ms_flip else ((1.0,), False)
    return predict_probs(model, x, scales, flip).argmax(1)[0].to(torch.uint8).cpu().numpy()


# ---------------------------------------------------------------------------------------------- config → parts
def resolve_num_classes(cfg: Config) -> Config:
    """``cfg`` with ``model.num_classes`` filled in from the dataset, so checkpoints rebuild the same head."""
    k = len(segmentation_class_names(cfg))
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=k))


def build_seg_datamodule(cfg: Config):
    """The ``SegmentationDataModule`` that ``cfg.data`` describes (VOC layout, or the built-in shapes)."""
    from ..data import resolve_root
    from ..data.segmentation.datamodule import SegmentationDataModule

    from ..data.formats import DETECTION_FORMATS

    if not (cfg.data.format == "voc" or (cfg.data.format in DETECTION_FORMATS and cfg.data.masks is not None)):
        raise ConfigError(f"segmentation reads the VOC layout (data.format: voc) or instances with painted masks "
                          f"(data.format: {' | '.join(DETECTION_FORMATS)}, data.masks: voc20 | all); got "
                          f"data.format={cfg.data.format!r}, data.masks={cfg.data.masks!r}")
    d = cfg.data
    return SegmentationDataModule(
        resolve_root(d), train_split=d.train_split, val_split=d.val_split,
        num_classes=len(segmentation_class_names(cfg)), crop_size=d.image_size, scale_range=d.scale_range,
        mean=d.mean, std=d.std, batch_size=d.batch_size, val_batch_size=d.val_batch_size,
        num_workers=d.num_workers, subset=d.subset, seed=cfg.seed,
        masks=d.masks if d.format != "voc" else None, min_mask_pixels=d.min_mask_pixels, fmt=d.format)


# ---------------------------------------------------------------------------------------------- training system
class SegmentationModule(pl.LightningModule):
    """DeepLab training: cross-entropy with ignore 255, SGD + poly LR (from the config), mIoU over the whole val set.

    Args:
        model: a network returning ``{"out": logits (N, K, H, W)}`` at its input size.
        num_classes: K.
        optim, sched: optimiser and per-step LR schedule settings.
        class_names: K names used in the per-class IoU log keys (``val/iou_<name>``).
        label_smoothing: cross-entropy label smoothing.
        config: the resolved config as a dict, stored in every checkpoint (``hyper_parameters["config"]``).

    Logs ``train/loss``, ``val/loss``, ``val/miou``, ``val/pixel_acc``, ``val/iou_<name>`` (NaN for a class absent
    from both the targets and the predictions of the whole set) and ``val/num_images`` (images evaluated, summed over
    ranks; ``val_skipped`` lists the unusable images left out, each usable image is scored once). Under DDP each rank
    accumulates its own matrix and the matrices are summed once, at the end of the epoch
    (no collective per step, so ranks may run different batch counts); the validation loader gives every image to
    exactly one rank (``data/distributed.py``), so no image is counted twice.
    """

    def __init__(self, model: nn.Module, *, num_classes: int, optim: OptimCfg, sched: SchedCfg,
                 class_names: Sequence[str] | None = None, label_smoothing: float = 0.0,
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        names = tuple(class_names) if class_names is not None else tuple(str(i) for i in range(num_classes))
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for num_classes={num_classes}")
        self.save_hyperparameters({"config": config or {}, "class_names": list(names)})
        self.model = model
        self.num_classes, self.class_names = num_classes, names
        self.optim_cfg, self.sched_cfg, self.label_smoothing = optim, sched, label_smoothing
        self.confmat: ConfusionMatrix | None = None
        self.val_skipped: list[str] = []
        self.val_num_images = 0

    def skipped_note(self) -> str:
        return skipped_note(self.val_skipped)

    @staticmethod
    def batch_ids(batch: dict) -> list[str]:
        """VOC ids of a batch (named by ``FiniteLossGuard`` when the loss turns non-finite)."""
        return list(batch["id"])

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        logits = self.model(batch["image"])["out"]
        loss = seg_loss(logits, batch["mask"], IGNORE_INDEX, self.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def on_validation_epoch_start(self) -> None:
        self.confmat = ConfusionMatrix(self.num_classes, IGNORE_INDEX, device=self.device)
        self._val_loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_pixels = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_images = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_skipped: list[str] = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        images, masks = batch["image"], batch["mask"]
        self._val_skipped += [str(s) for s in batch.get("skipped", [])]
        self._val_images += images.shape[0]
        if images.shape[0] == 0:
            return
        # Each image at its own size (images of one size together): the collate's padding never enters the network.
        for (h, w), idx in size_groups(batch["size"]).items():
            logits = self.model(images[idx, :, :h, :w])["out"]
            target = masks[idx, :h, :w]
            self._val_loss_sum += F.cross_entropy(logits.float(), target, ignore_index=IGNORE_INDEX, reduction="sum")
            self._val_pixels += (target != IGNORE_INDEX).sum()
            self.confmat.update(logits.argmax(1), target)

    def on_validation_epoch_end(self) -> None:
        # Sum the matrices of all ranks before computing anything: mIoU of the union, never a mean of per-rank mIoUs.
        reduce = self.trainer.strategy.reduce
        self.confmat.matrix = reduce(self.confmat.matrix, reduce_op="sum")
        loss = reduce(self._val_loss_sum, reduce_op="sum") / reduce(self._val_pixels, reduce_op="sum").clamp(min=1)
        images = reduce(self._val_images, reduce_op="sum")
        self.val_num_images = int(images)
        dataset = getattr(self.trainer.val_dataloaders, "dataset", None)
        missing = [f"{i} (image or label file missing)" for i in getattr(dataset, "missing", [])]
        self.val_skipped = sorted(set(gather_lists(self._val_skipped))) + missing
        metrics = self.confmat.compute()
        self.log("val/loss", loss.float())
        self.log("val/miou", metrics.miou, prog_bar=True)
        self.log("val/pixel_acc", metrics.pixel_acc)
        self.log("val/num_images", images.float())
        for name, iou in metrics.per_class(self.class_names).items():
            self.log(f"val/iou_{name}", iou)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.optim_cfg, self.model)
        total = int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        per_epoch = max(1, total // epochs) if epochs and epochs > 0 else total
        return {"optimizer": optimizer,
                "lr_scheduler": build_scheduler(self.sched_cfg, optimizer, total, per_epoch)}
