"""Classification batches: a reader plus a transform preset, the skip policy, and the Lightning data module."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ...config import DataCfg
from ..io.skip import Skipped, load_or_skip
from .datasets import read_classification_split
from .transforms import classification_transform

__all__ = ["TransformedDataset", "classification_eval_collate", "ClassificationDataModule"]


class TransformedDataset(Dataset):
    """``base``'s items (at ``indices``) through ``transform``. ``on_bad``: what an unreadable image does,
    ``"raise"`` its error, or ``"drop"`` it as a ``Skipped`` record (evaluation: ``classification_eval_collate``
    leaves it out and lists it)."""

    def __init__(self, base: Dataset, transform: Callable[..., dict], indices: Sequence[int] | None,
                 on_bad: str = "raise") -> None:
        if on_bad not in ("raise", "drop"):
            raise ValueError(f"on_bad must be 'raise' or 'drop', got {on_bad!r}")
        self.base, self.transform, self.on_bad = base, transform, on_bad
        self.indices = list(range(len(base))) if indices is None else list(indices)  # type: ignore[arg-type]
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[self.indices[i]]
        return self.transform(image=np.asarray(image))["image"], label

    def _name(self, i: int) -> str:
        paths = getattr(self.base, "paths", None)  # file-based readers; CIFAR-10's arrays cannot be unreadable
        return str(paths[self.indices[i]]) if paths is not None else f"item {self.indices[i]}"

    def __getitem__(self, i: int) -> tuple[Tensor, int] | Skipped:
        if self.on_bad == "raise":
            return self._load(i)
        return load_or_skip(self._load, i, len(self), self._name, self._warned, self.on_bad)


def classification_eval_collate(batch: Sequence[tuple[Tensor, int] | Skipped]) -> tuple[Tensor, Tensor, list[str]]:
    """``(images, labels, skipped)`` of an evaluation batch: unusable images (``Skipped``) are left out and listed as
    "file (reason)" strings; a batch of only such images has empty tensors."""
    skipped = [str(b) for b in batch if isinstance(b, Skipped)]
    usable = [b for b in batch if not isinstance(b, Skipped)]
    if not usable:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), skipped
    images, labels = zip(*usable)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64), skipped


def _spread(n: int, k: int | None) -> list[int] | None:
    """``k`` indices spread evenly over ``n`` (every class of a class-sorted dataset keeps a share); None = all."""
    if k is None or k >= n:
        return None
    return np.linspace(0, n - 1, k).round().astype(int).tolist()


class ClassificationDataModule(pl.LightningDataModule):
    """Train / validation loaders for one classification dataset.

    Args:
        root: dataset folder (see ``read_classification_split`` for the layouts).
        fmt: ``imagefolder`` | ``cifar10`` | ``flowers102``.
        train_split, val_split: split names (folders for ImageFolder; ``train``/``test`` for CIFAR-10;
            ``train``/``val``/``test`` for Flowers102).
        image_size: network input side.
        augment: training preset (``cls`` | ``cls_invariant`` | ``cifar`` | ``none``); validation never augments.
        crop_scale: area range of the ``cls`` random-resized crop.
        batch_size, val_batch_size, num_workers: loader settings.
        subset: at most this many images per split, spread evenly over the (class-sorted) split.
        mean, std: normalisation.
        download: let torchvision fetch CIFAR-10 / Flowers102 into ``root`` first.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        fmt: str = "imagefolder",
        train_split: str = "train",
        val_split: str = "val",
        image_size: int = 224,
        augment: str = "cls",
        crop_scale: tuple[float, float] = (0.08, 1.0),
        batch_size: int = 96,
        val_batch_size: int = 100,
        num_workers: int = 4,
        subset: int | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
        download: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        train = read_classification_split(fmt, root, train_split, download)
        val = read_classification_split(fmt, root, val_split, download)
        self.classes: list[str] = list(train.classes)  # type: ignore[attr-defined]
        if list(val.classes) != self.classes:  # type: ignore[attr-defined]
            raise ValueError(f"{root}: splits {train_split!r} and {val_split!r} have different classes: "
                             f"{self.classes[:5]}… vs {list(val.classes)[:5]}…")  # type: ignore[attr-defined]
        tf = dict(image_size=image_size, crop_scale=crop_scale, mean=mean, std=std)
        self.train_dataset = TransformedDataset(train, classification_transform(augment, True, **tf),
                                          _spread(len(train), subset))  # type: ignore[arg-type]
        self.val_dataset = TransformedDataset(val, classification_transform(augment, False, **tf),
                                        _spread(len(val), subset))  # type: ignore[arg-type]
        for name, ds in (("train", self.train_dataset), ("val", self.val_dataset)):
            if len(ds) == 0:
                raise ValueError(f"{root}: the {name} split holds no images")

    @classmethod
    def from_config(cls, data: DataCfg, root: str | os.PathLike, download: bool = False) -> "ClassificationDataModule":
        return cls(root, data.format, data.train_split, data.val_split, data.image_size, data.augment,
                   data.crop_scale, data.batch_size, data.val_batch_size, data.num_workers, data.subset, data.mean,
                   data.std, download)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        from ..detection.datamodule import worker_init

        return DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=self.num_workers,
                          # a lone last sample would give BatchNorm one value per channel at the 1×1 stage
                          drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
                          worker_init_fn=worker_init, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, self.batch_size, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, self.val_batch_size, False)
