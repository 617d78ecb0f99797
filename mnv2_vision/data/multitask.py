"""Data for the multi-task pair (boxes + semantic masks): one COCO dataset with masks, optionally next to a
segmentation-only VOC-layout dataset, each sample carrying the labels it has.

Every item is ``(image, target)`` as in detection (``data/coco.py``): images go through one detection pipeline
(``data/transforms.py``, resize to the network input), so samples of both sources batch together. ``target`` holds

- ``boxes``, ``labels`` and ``has_boxes``: ``True`` for a sample of the detection dataset, including an image with no
  object (a real negative: its anchors train the background class); ``False`` for a sample of a segmentation-only
  dataset, which says nothing about boxes and must not train the detection head;
- ``mask`` (int64 label map, 255 = ignore) when the sample has segmentation labels: the COCO masks painted from its
  instances (``data.masks``) or the VOC label map; absent otherwise (then the segmentation head is not trained on it);
- ``image_id`` (COCO id, -1 for the segmentation-only source), ``orig_size`` and ``id`` (a name for messages).

Training masks are in the network frame; validation masks stay at the image's own size, where mIoU is computed.
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from .check import Skipped
from .coco import CocoDetection
from .datamodules import detection_collate, detection_eval_collate, worker_init
from .distributed import distributed_eval_loader
from .resumable import ResumableDataLoader, ResumableSampler, replicas
from .transforms import DetectionTransform, detection_transform
from .voc import VOCSegmentation

__all__ = ["SegmentationOnly", "TaskConcat", "MultiTaskDataModule"]


class _MaskOnlyTransform:
    """A detection pipeline applied to an (image, label map) pair without boxes (``VOCSegmentation``'s call)."""

    def __init__(self, transform: DetectionTransform) -> None:
        self.transform = transform

    def set_random_seed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[Tensor, Tensor]:
        image_t, _, _, mask_t = self.transform.with_mask(image, np.zeros((0, 4), np.float32),
                                                         np.zeros((0,), np.int64), mask)
        return image_t, mask_t


class SegmentationOnly(Dataset):
    """A VOC-layout segmentation dataset as multi-task items: the detection pipeline's image, its label map, and
    ``has_boxes=False``.

    Args:
        root, split, num_classes, subset: as ``VOCSegmentation``.
        transform: a detection pipeline (``detection_transform``).
        on_bad: the bad-data policy (``data/check.py``): ``"raise"``, ``"replace"`` (training) or ``"drop"``
            (evaluation: an unusable item comes back as a ``check.Skipped`` record).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: DetectionTransform, num_classes: int,
                 subset: int | None = None, on_bad: str = "raise") -> None:
        self.source = VOCSegmentation(root, split, _MaskOnlyTransform(transform), num_classes=num_classes,
                                      subset=subset, on_bad=on_bad)
        self.transform = self.source.transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict] | Skipped:
        item = self.source[index]  # reseeds the transform for an (index, seed) pair, applies the bad-data policy
        if isinstance(item, Skipped):
            return item
        image, mask = item["image"], item["mask"]
        # Evaluation leaves the mask at the image's own size; training moves it into the network frame.
        size = tuple(int(v) for v in (image.shape[-2:] if self.transform.transform.moves_masks else mask.shape))
        return image, {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                       "has_boxes": False, "mask": mask, "image_id": -1, "orig_size": size, "id": item["id"]}

    def __repr__(self) -> str:
        return f"SegmentationOnly({self.source.root}, split={self.source.split!r}, images={len(self)})"


class TaskConcat(Dataset):
    """Datasets one after the other; an ``(index, seed)`` pair from ``ResumableSampler`` reaches the dataset holding
    ``index`` with its seed, so every source is augmented reproducibly (``data/resumable.py``)."""

    def __init__(self, datasets: Sequence[Dataset], coco: Any = None) -> None:
        self.datasets = list(datasets)
        self.coco = coco  # the detection source's pycocotools ground truth, for validation
        self.offsets = list(np.cumsum([0, *(len(d) for d in self.datasets)]))  # type: ignore[arg-type]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        i, seed = (index if isinstance(index, tuple) else (index, None))
        if not 0 <= int(i) < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k = bisect.bisect_right(self.offsets, int(i)) - 1
        local = int(i) - int(self.offsets[k])
        return self.datasets[k][(local, seed) if seed is not None else local]


def _add_id(item: tuple[Tensor, dict] | Skipped) -> tuple[Tensor, dict] | Skipped:
    if isinstance(item, Skipped):
        return item
    image, target = item
    target.setdefault("has_boxes", True)
    target.setdefault("id", str(target["image_id"]))
    return image, target


class _CocoItems(Dataset):
    """``CocoDetection`` items with the multi-task flags (``has_boxes``, ``id``) filled in."""

    def __init__(self, dataset: CocoDetection) -> None:
        self.dataset = dataset
        self.transform = dataset.transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[Tensor, dict] | Skipped:
        return _add_id(self.dataset[index])


class MultiTaskDataModule(pl.LightningDataModule):
    """COCO-layout detection data with painted masks (``masks``), and/or a segmentation-only VOC-layout dataset
    (``seg_root``), for the multi-task pair.

    Args:
        root: COCO folder (``<split>/`` and ``annotations/instances_<split>.json``).
        train_split, val_split: its image folders.
        masks: ``None`` (boxes only), ``"voc20"`` or ``"all"`` (``data/masks.py``).
        seg_root: a VOC-layout folder whose samples train only the segmentation head, or ``None``.
        seg_train_split, seg_val_split: its ``ImageSets/Segmentation`` lists.
        seg_class_names: the segmentation classes (background first); a COCO mask label space must agree with it.
        image_size, augment, batch_size, val_batch_size, num_workers, subset, mean, std, category_ids, seed: as
            ``DetectionDataModule`` (``subset`` applies to each source).
    """

    def __init__(self, root: str | os.PathLike, *, train_split: str = "train2017", val_split: str = "val2017",
                 masks: str | None = None, seg_root: str | os.PathLike | None = None, seg_train_split: str = "train",
                 seg_val_split: str = "val", seg_class_names: Sequence[str] = (), image_size: int = 320,
                 augment: str = "ssdlite", batch_size: int = 24, val_batch_size: int = 8, num_workers: int = 4,
                 subset: int | None = None, mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225), category_ids: Sequence[int] | None = None,
                 seed: int = 0) -> None:
        super().__init__()
        if masks is None and seg_root is None:
            raise ValueError("the multi-task pair needs segmentation labels: COCO masks (masks='voc20' or 'all') "
                             "and/or a segmentation-only dataset (seg_root)")
        self.root, self.seg_root = Path(root), Path(seg_root) if seg_root is not None else None
        self.train_split, self.val_split, self.masks = train_split, val_split, masks
        self.seg_train_split, self.seg_val_split = seg_train_split, seg_val_split
        self.seg_class_names = list(seg_class_names)
        self.image_size, self.augment, self.mean, self.std = image_size, augment, tuple(mean), tuple(std)
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.subset, self.seed = subset, seed
        self._category_ids = list(category_ids) if category_ids is not None else None
        self._train: TaskConcat | None = None
        self._val: TaskConcat | None = None
        self._coco_train: CocoDetection | None = None
        self._coco_val: CocoDetection | None = None
        detection_transform(augment, True, image_size)  # an unknown preset fails here, before any data is read

    # ------------------------------------------------------------------ datasets (built on first use)
    def _sources(self, train: bool) -> TaskConcat:
        tf = detection_transform(self.augment, train, self.image_size, self.mean, self.std)
        split = self.train_split if train else self.val_split
        # Training replaces an unusable image by the next usable one, validation leaves it out and lists it.
        on_bad = "replace" if train else "drop"
        coco = CocoDetection(self.root, split, tf, self.subset, self._category_ids, on_bad=on_bad, masks=self.masks)
        if self._category_ids is None:
            self._category_ids = coco.category_ids
        if self.masks is not None and self.seg_class_names and coco.mask_class_names != self.seg_class_names:
            raise ValueError(f"{coco.ann_file} with masks={self.masks!r} gives the segmentation classes "
                             f"{coco.mask_class_names[:6]}..., the model expects {self.seg_class_names[:6]}...")
        sources: list[Dataset] = [_CocoItems(coco)]
        if self.seg_root is not None:
            seg_tf = detection_transform(self.augment, train, self.image_size, self.mean, self.std)
            sources.append(SegmentationOnly(self.seg_root, self.seg_train_split if train else self.seg_val_split,
                                            seg_tf, num_classes=len(self.seg_class_names), subset=self.subset,
                                            on_bad=on_bad))
        if train:
            self._coco_train = coco
        else:
            self._coco_val = coco
        return TaskConcat(sources, coco=coco.coco)

    @property
    def train_dataset(self) -> TaskConcat:
        if self._train is None:
            self._train = self._sources(train=True)
        return self._train

    @property
    def val_dataset(self) -> TaskConcat:
        """Validation samples; ``.coco`` is the detection source's pycocotools ground truth."""
        if self._val is None:
            self._val = self._sources(train=False)
        return self._val

    @property
    def category_ids(self) -> list[int]:
        if self._category_ids is None:
            _ = self.train_dataset
        return list(self._category_ids or [])

    @property
    def category_names(self) -> list[str]:
        coco = self._coco_train or self._coco_val
        if coco is None:
            _ = self.train_dataset
            coco = self._coco_train
        return list(coco.category_names)  # type: ignore[union-attr]

    @property
    def num_classes(self) -> int:
        """Detection classes + background."""
        return len(self.category_ids) + 1

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            _ = self.train_dataset
        _ = self.val_dataset

    # ------------------------------------------------------------------ loaders
    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled over both sources, augmented, resumable mid-epoch (``data/resumable.py``); DDP-aware."""
        dataset = self.train_dataset
        num_replicas, rank = replicas(self.trainer)
        sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, seed=self.seed)
        return ResumableDataLoader(
            dataset, sampler=sampler, batch_size=self.batch_size,
            drop_last=len(sampler) >= self.batch_size,  # BatchNorm on the 1×1 extra layers needs > 1 value
            num_workers=self.num_workers, collate_fn=detection_collate, worker_init_fn=worker_init,
            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader:
        """In order, resized only, batches ``(images, targets, skipped files)`` (``detection_eval_collate``); under DDP
        every image on exactly one rank (``data/distributed.py``)."""
        loader = DataLoader(self.val_dataset, batch_size=self.val_batch_size, shuffle=False,
                            num_workers=self.num_workers, collate_fn=detection_eval_collate, worker_init_fn=worker_init,
                            persistent_workers=self.num_workers > 0, pin_memory=torch.cuda.is_available())
        return distributed_eval_loader(loader, self.trainer)
