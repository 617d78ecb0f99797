"""Data for the multi-task pair (boxes + semantic masks): one COCO dataset with masks, optionally next to a
segmentation-only VOC-layout dataset, each sample carrying the labels it has.

Every item is ``(image, target)`` as in detection (``data/coco.py``): images go through one detection pipeline
(``data/detection/transforms.py``, resize to the network input), so samples of both sources batch together.
``target`` holds

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
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from .io.skip import Skipped
from .coco import CocoDetection
from .detection.datamodule import DetectionDataModule
from .detection.transforms import DetectionTransform, detection_transform
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
        on_bad: the bad-data policy (``data/io/skip.py``): ``"raise"``, ``"replace"`` (training) or ``"drop"``
            (evaluation: an unusable item comes back as a ``Skipped`` record).
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


class TaskConcat(ConcatDataset):
    """``ConcatDataset`` whose ``(index, seed)`` pairs from ``ResumableSampler`` reach the dataset holding ``index``
    with their seed, so every source is augmented reproducibly (``data/resumable.py``)."""

    def __init__(self, datasets: Sequence[Dataset], coco: Any = None) -> None:
        super().__init__(datasets)
        self.coco = coco  # the detection source's pycocotools ground truth, for validation

    def __getitem__(self, index: int | tuple[int, int]) -> Any:
        if not isinstance(index, tuple):
            return super().__getitem__(index)
        i, seed = int(index[0]), index[1]
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        k = bisect.bisect_right(self.cumulative_sizes, i)
        return self.datasets[k][(i - (self.cumulative_sizes[k - 1] if k else 0), seed)]

    def __repr__(self) -> str:
        return " + ".join(repr(d) for d in self.datasets)


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

    def __repr__(self) -> str:
        return repr(self.dataset)


class MultiTaskDataModule(DetectionDataModule):
    """COCO-layout detection data with painted masks (``masks``), and/or a segmentation-only VOC-layout dataset
    (``seg_root``), for the multi-task pair. The loaders are ``DetectionDataModule``'s (resumable training loader,
    DDP-aware validation loader that lists unusable images) over both sources.

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
                 seed: int = 0, fmt: str = "coco") -> None:
        if masks is None and seg_root is None:
            raise ValueError("the multi-task pair needs segmentation labels: COCO masks (masks='voc20' or 'all') "
                             "and/or a segmentation-only dataset (seg_root)")
        super().__init__(root, train_split=train_split, val_split=val_split, image_size=image_size, augment=augment,
                         batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers,
                         subset=subset, mean=mean, std=std, category_ids=category_ids, seed=seed, fmt=fmt)
        self.seg_root = Path(seg_root) if seg_root is not None else None
        self.masks, self.seg_train_split, self.seg_val_split = masks, seg_train_split, seg_val_split
        self.seg_class_names = list(seg_class_names)
        self._train_concat: TaskConcat | None = None
        self._val_concat: TaskConcat | None = None

    # ------------------------------------------------------------------ datasets (built on first use)
    def _sources(self, train: bool) -> TaskConcat:
        tf = detection_transform(self.augment, train, self.image_size, self.mean, self.std)
        split = self.train_split if train else self.val_split
        # Training replaces an unusable image by the next usable one, validation leaves it out and lists it.
        on_bad = "replace" if train else "drop"
        coco = CocoDetection(self.root, split, tf, self.subset, self._category_ids, on_bad=on_bad, masks=self.masks,
                             **self._labels(split))
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
            self._train = coco
        else:
            self._val = coco
        return TaskConcat(sources, coco=coco.coco)

    @property
    def train_dataset(self) -> TaskConcat:  # type: ignore[override]
        if self._train_concat is None:
            self._train_concat = self._sources(train=True)
        return self._train_concat

    @property
    def val_dataset(self) -> TaskConcat:  # type: ignore[override]
        """Validation samples; ``.coco`` is the detection source's pycocotools ground truth."""
        if self._val_concat is None:
            self._val_concat = self._sources(train=False)
        return self._val_concat

    @property
    def category_ids(self) -> list[int]:
        if self._category_ids is None:
            _ = self.train_dataset
        return list(self._category_ids or [])

    @property
    def category_names(self) -> list[str]:
        if self._train is None and self._val is None:
            _ = self.train_dataset
        return list((self._train or self._val).category_names)  # type: ignore[union-attr]
