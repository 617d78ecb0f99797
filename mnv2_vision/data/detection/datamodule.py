"""LightningDataModule for detection: COCO-layout datasets, the presets of ``transforms.py`` run by the fast pipeline
of ``detection_pipeline.py`` (same distribution, a fraction of the CPU time), and the loaders."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, get_worker_info

from ...config import DataCfg
from ..io.skip import Skipped
from ..coco import CocoDetection
from ..distributed import distributed_eval_loader
from ..resumable import ResumableDataLoader, ResumableSampler, replicas
from .pipeline import fast_detection_transform
from ..io.pixels import stack_images

__all__ = ["DetectionDataModule", "detection_collate", "detection_eval_collate", "worker_init"]


def detection_collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, list[dict]]:
    """Images of one size stacked to ``(N, 3, H, W)`` (``stack_images``: training's uint8 images stay channel-last);
    targets stay a list (each image has its own box count)."""
    images, targets = zip(*batch)
    return stack_images(images), list(targets)


def detection_eval_collate(batch: Sequence[tuple[Tensor, dict] | Skipped]) -> tuple[Tensor, list[dict], list[str]]:
    """``detection_collate`` for validation / evaluation: unusable images (``Skipped``, ``on_bad="drop"``) are left
    out and listed, as "file (reason)" strings, in the third element; a batch of only such images has an empty
    ``(0,)`` image tensor."""
    skipped = [str(b) for b in batch if isinstance(b, Skipped)]
    usable = [b for b in batch if not isinstance(b, Skipped)]
    if not usable:
        return torch.zeros(0), [], skipped
    images, targets = detection_collate(usable)
    return images, targets, skipped


def worker_init(worker_id: int) -> None:
    """Per DataLoader worker: no OpenCV thread pool (it oversubscribes the CPU and can deadlock after fork) and
    RNGs of its own (forked workers would otherwise repeat the parent's random stream). The detection and
    segmentation training loaders reseed the transform per sample (``data/resumable.py``), which overrides this."""
    cv2.setNumThreads(0)
    seed = torch.initial_seed() % 2**32  # differs per worker and per epoch (torch sets base_seed + worker_id)
    np.random.seed(seed)
    random.seed(seed)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


class DetectionDataModule(pl.LightningDataModule):
    """COCO-layout detection data: ``<root>/<split>/`` images and ``<root>/annotations/instances_<split>.json``.

    The label map comes from the training annotation file (sorted category ids → 1..C) unless ``category_ids`` is
    given (e.g. from a checkpoint); the validation file must use the same categories. Unusable images are skipped
    with one warning each (``CocoDetection(on_bad=...)``, policy in ``data/io/skip.py``), so an epoch never stops on
    a bad file: in training the next usable image takes its place, in validation the image is left out and listed
    (each usable image is scored exactly once).

    Args:
        root: dataset folder.
        train_split, val_split: image folder names (``train2017``, ``val2017``).
        image_size: network input side.
        augment: training preset (``"ssdlite"`` | ``"none"``); validation only resizes.
        batch_size, val_batch_size, num_workers: loader settings.
        subset: first N images (sorted ids) of each split.
        mean, std: normalisation.
        category_ids: a fixed label map.
        seed: training order and augmentation: an epoch's order depends only on (seed, epoch), an image's
            augmentation only on (seed, epoch, index), and the loader's place in the epoch is saved in checkpoints
            (``data/resumable.py``), so a resumed run continues exactly as an uninterrupted one.
        fmt: the label format (``data/formats``: coco, yolo, voc_xml, cvat, labelme, labelstudio); every one is
            read into a COCO dict, so the rest is the same.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train_split: str = "train2017",
        val_split: str = "val2017",
        image_size: int = 320,
        augment: str = "ssdlite",
        batch_size: int = 24,
        val_batch_size: int = 8,
        num_workers: int = 4,
        subset: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        category_ids: Sequence[int] | None = None,
        seed: int = 0,
        fmt: str = "coco",
    ) -> None:
        super().__init__()
        self.root = Path(root)
        self.fmt = fmt
        self.train_split, self.val_split = train_split, val_split
        self.image_size = image_size
        self.augment = augment
        self.batch_size, self.val_batch_size = batch_size, val_batch_size
        self.num_workers = num_workers
        self.subset = subset
        self.mean, self.std = tuple(mean), tuple(std)
        self._category_ids = list(category_ids) if category_ids is not None else None
        self.seed = seed
        self._train: CocoDetection | None = None
        self._val: CocoDetection | None = None
        fast_detection_transform(augment, True, image_size)  # an unknown preset fails here, before any data is read

    @classmethod
    def from_config(cls, data: DataCfg, root: str | os.PathLike,
                    category_ids: Sequence[int] | None = None, seed: int = 0) -> "DetectionDataModule":
        return cls(root, train_split=data.train_split, val_split=data.val_split, image_size=data.image_size,
                   augment=data.augment, batch_size=data.batch_size, val_batch_size=data.val_batch_size,
                   num_workers=data.num_workers, subset=data.subset, mean=data.mean, std=data.std,
                   category_ids=category_ids, seed=seed, fmt=data.format)

    # ------------------------------------------------------------------ datasets (built on first use)
    @property
    def train_dataset(self) -> CocoDetection:
        if self._train is None:
            tf = fast_detection_transform(self.augment, True, self.image_size, self.mean, self.std, normalize=False)
            self._train = CocoDetection(self.root, self.train_split, tf, self.subset, self._category_ids,
                                        on_bad="replace", **self._labels(self.train_split))
            self._category_ids = self._train.category_ids
        return self._train

    @property
    def val_dataset(self) -> CocoDetection:
        if self._val is None:
            tf = fast_detection_transform(self.augment, False, self.image_size, self.mean, self.std)
            self._val = CocoDetection(self.root, self.val_split, tf, self.subset, self.category_ids, on_bad="drop",
                                      **self._labels(self.val_split))
            if self._train is not None and self._val.category_names != self._train.category_names:
                raise ValueError(f"{self._val.ann_file} and {self._train.ann_file} name their categories "
                                 f"differently: {self._val.category_names[:5]} vs {self._train.category_names[:5]}")
        return self._val

    def _labels(self, split: str) -> dict:
        """``CocoDetection``'s in-memory labels for a labelling-tool format (none for COCO: it reads the file)."""
        from ..formats import dataset_kwargs

        return dataset_kwargs(self.fmt, self.root, split)

    @property
    def category_ids(self) -> list[int]:
        if self._category_ids is None:
            self._category_ids = self.train_dataset.category_ids
        return list(self._category_ids)

    @property
    def category_names(self) -> list[str]:
        if self._train is None and self._val is not None:  # evaluation with a checkpoint's label map
            return list(self._val.category_names)
        return list(self.train_dataset.category_names)

    @property
    def num_classes(self) -> int:
        """Foreground classes + background."""
        return len(self.category_ids) + 1

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            _ = self.train_dataset
        _ = self.val_dataset

    def on_after_batch_transfer(self, batch: tuple, dataloader_idx: int) -> tuple:
        """Training batches arrive as uint8 (a quarter of the bytes from the workers, no float work in them) and are
        normalised here, on the training device (the same numbers the workers would give, ``pixels.Normalizer``).
        Validation batches are normalised in the workers, since tools also iterate ``val_dataloader()`` directly
        (they carry a third element, the unusable images left out: ``detection_eval_collate``)."""
        images, rest = batch[0], tuple(batch[1:])
        if images.dtype == torch.uint8:
            images = self.train_dataset.transform.normalizer.batch(images)
        return (images, *rest)

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: CocoDetection, batch_size: int, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            # A lone last sample would reach BatchNorm on the 1×1 extra layers with one value per channel.
            drop_last=train and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            collate_fn=detection_collate if train else detection_eval_collate,
            worker_init_fn=worker_init,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled and augmented, resumable mid-epoch (``data/resumable.py``); each rank its share under DDP.
        Images are uint8 until ``on_after_batch_transfer`` (a Trainer given this data module calls it)."""
        dataset = self.train_dataset
        num_replicas, rank = replicas(self.trainer)
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=self.seed)
        return ResumableDataLoader(
            dataset,
            sampler=sampler,
            batch_size=self.batch_size,
            # A lone last sample would reach BatchNorm on the 1×1 extra layers with one value per channel.
            drop_last=len(sampler) >= self.batch_size,
            num_workers=self.num_workers,
            collate_fn=detection_collate,
            worker_init_fn=worker_init,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        """In order, no augmentation. Under DDP each rank reads a disjoint share and no image is repeated
        (``data/distributed.py``: Lightning's default sampler would pad the split by repeating images); the module
        still de-duplicates by image id after gathering, so a padded loader gives the same mAP."""
        return distributed_eval_loader(self._loader(self.val_dataset, self.val_batch_size, train=False), self.trainer)
