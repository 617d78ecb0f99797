"""SegmentationDataModule: VOC-layout (or COCO with painted semantic masks) train/val loaders for DeepLab."""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from ..distributed import distributed_eval_loader
from ..resumable import ResumableDataLoader, ResumableSampler, replicas
from .transforms import FastSegEvalTransform, FastSegTrainTransform, pad_collate
from ..voc import VOCSegmentation

if TYPE_CHECKING:
    from .coco import CocoSegmentation

__all__ = ["SegmentationDataModule"]

log = logging.getLogger("mnv2_vision")


class SegmentationDataModule(pl.LightningDataModule):
    """Training crops and full-size validation images: ``SegTrainTransform`` / ``SegEvalTransform``'s distributions,
    run by their fast equivalents (``FastSegTrainTransform``, ``FastSegEvalTransform``).

    Unusable items are skipped with one warning each (``VOCSegmentation(on_bad=...)``, policy in ``data/io/skip.py``),
    so an epoch never stops on a bad file: in training the next usable image takes its place, in validation the
    image is left out and listed (each usable image is scored exactly once).

    Args:
        root: VOC2012 folder (or its VOCdevkit parent).
        train_split, val_split: ``ImageSets/Segmentation`` list names (``train``/``trainaug``/``auto``, ``val``).
        num_classes: label range checked while reading.
        crop_size: training crop side.
        scale_range: random scale range for training.
        mean, std: normalisation.
        batch_size, val_batch_size: loader batch sizes. Training drops the last incomplete batch (BatchNorm statistics
            of a tiny batch are noise) unless that would leave no batch at all.
        num_workers: DataLoader workers.
        subset: first N ids of each split.
        masks: ``None`` reads the VOC layout; ``"voc20"`` / ``"all"`` read a COCO layout (``root`` with
            ``annotations/instances_<split>.json``) and paint semantic labels from its instance masks
            (``data/masks.py``; TF DeepLab's COCO pre-training with ``"voc20"``).
        fmt: with ``masks``, the instances' format (``data/formats``: coco, or the polygons of yolo, cvat,
            labelme, labelstudio; boxes without a polygon are ignored regions, as in ``data/masks.py``).
        min_mask_pixels: COCO training split only: keep images whose labelled pixels exceed this (torchvision: 1000).
        seed: training order and augmentation: an epoch's order depends only on (seed, epoch), an image's
            augmentation only on (seed, epoch, index), and the loader's place in the epoch is saved in checkpoints
            (``data/resumable.py``), so a resumed run continues exactly as an uninterrupted one.
    """

    def __init__(self, root: str | os.PathLike, *, train_split: str = "train", val_split: str = "val",
                 num_classes: int = 21, crop_size: int = 513, scale_range: Sequence[float] = (0.5, 2.0),
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 batch_size: int = 16, val_batch_size: int = 1, num_workers: int = 4,
                 subset: int | None = None, seed: int = 0, masks: str | None = None,
                 min_mask_pixels: int = 0, fmt: str = "coco") -> None:
        super().__init__()
        self.fmt = fmt
        self.root, self.train_split, self.val_split = root, train_split, val_split
        self.num_classes, self.crop_size, self.scale_range = num_classes, crop_size, tuple(scale_range)
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.subset, self.seed = subset, seed
        self.masks, self.min_mask_pixels = masks, min_mask_pixels
        self.train_set: VOCSegmentation | CocoSegmentation | None = None
        self.val_set: VOCSegmentation | CocoSegmentation | None = None

    def _dataset(self, split: str, transform, train: bool) -> "VOCSegmentation | CocoSegmentation":
        if self.masks is None:
            return VOCSegmentation(self.root, split, transform, num_classes=self.num_classes, subset=self.subset,
                                   on_bad="replace" if train else "drop")
        from .coco import CocoSegmentation

        dataset = CocoSegmentation(self.root, split, transform, masks=self.masks, subset=self.subset,
                                   min_mask_pixels=self.min_mask_pixels if train else 0,
                                   on_bad="replace" if train else "drop", fmt=self.fmt)
        if dataset.num_classes != self.num_classes:
            raise ValueError(f"{dataset} has {dataset.num_classes} segmentation classes, the model "
                             f"{self.num_classes}")
        return dataset

    def train_dataset(self) -> "VOCSegmentation | CocoSegmentation":
        if self.train_set is None:
            self.train_set = self._dataset(
                self.train_split,
                FastSegTrainTransform(self.crop_size, self.scale_range, self.mean, self.std, normalize=False), True)
        return self.train_set

    def val_dataset(self) -> "VOCSegmentation | CocoSegmentation":
        if self.val_set is None:
            self.val_set = self._dataset(self.val_split, FastSegEvalTransform(self.mean, self.std), False)
        return self.val_set

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset()
        if stage in (None, "fit", "validate", "test", "predict"):
            self.val_dataset()

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Training crops and masks arrive as uint8 (a fifth of the bytes) and are normalised / widened to int64
        here, on the training device (``pixels.Normalizer``: the numbers the workers would give). Validation batches
        are made in the workers, since tools also iterate ``val_dataloader()`` directly."""
        if batch["image"].dtype == torch.uint8:
            batch = {**batch, "image": self.train_dataset().transform.normalizer.batch(batch["image"]),
                     "mask": batch["mask"].long()}
        return batch

    def _loader(self, dataset: "VOCSegmentation | CocoSegmentation", batch_size: int, train: bool) -> DataLoader:
        drop_last = train and len(dataset) >= batch_size
        if train and not drop_last:
            log.warning("training set has %d images, fewer than batch_size=%d: using one batch of %d",
                        len(dataset), batch_size, len(dataset))
        return DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=drop_last,
                          num_workers=self.num_workers, collate_fn=pad_collate,
                          persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled random crops, resumable mid-epoch (``data/resumable.py``); each rank its share under DDP."""
        dataset = self.train_dataset()
        num_replicas, rank = replicas(self.trainer)
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=self.seed)
        drop_last = len(sampler) >= self.batch_size
        if not drop_last:
            log.warning("training set has %d images, fewer than batch_size=%d: using one batch of %d",
                        len(sampler), self.batch_size, len(sampler))
        return ResumableDataLoader(dataset, sampler=sampler, batch_size=self.batch_size, drop_last=drop_last,
                                   num_workers=self.num_workers, collate_fn=pad_collate,
                                   persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        """Full-size images in order. Under DDP each rank reads a disjoint share and no image is repeated
        (``data/distributed.py``): the ranks' confusion matrices are summed, so an image that Lightning's default
        (padding) sampler repeats would be counted twice."""
        return distributed_eval_loader(self._loader(self.val_dataset(), self.val_batch_size, train=False), self.trainer)
