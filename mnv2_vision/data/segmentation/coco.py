"""COCO instance annotations painted into semantic label maps, as a segmentation dataset."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch.utils.data import Dataset

from ...errors import DataError
from ..coco import CocoDetection, area_of
from ..io.skip import Skipped, load_or_skip
from ..resumable import seed_sample

__all__ = ["CocoSegmentation"]

log = logging.getLogger("mnv2_vision")


class CocoSegmentation(Dataset):
    """Semantic segmentation from COCO instance annotations: items ``{"image", "mask", "id"}`` like
    ``VOCSegmentation``'s, the label map painted by ``data/masks.py`` (TF DeepLab's COCO pre-training on the VOC
    classes with ``masks="voc20"``).

    Args:
        root, split, subset: as ``CocoDetection``.
        transform: ``(image uint8, mask uint8) → (image tensor, mask tensor)`` (``data/segmentation/transforms.py``).
        masks: ``"voc20"`` or ``"all"``.
        min_mask_pixels: keep only images whose selected, non-crowd instances cover more than this many pixels by
            the annotations' ``area`` (torchvision's COCO segmentation reference keeps > 1000 for training); 0 keeps
            every image.
        on_bad: an unusable image (unreadable, size differing from the annotation file, an RLE of another size):
            ``"raise"``, ``"replace"`` it by the next usable one (training) or ``"drop"`` it as a ``Skipped``
            record (evaluation), with one warning naming the file (the bad-data policy, ``data/io/skip.py``).
    """

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable[[np.ndarray, np.ndarray], Any],
                 masks: str = "voc20", subset: int | None = None, min_mask_pixels: int = 0,
                 on_bad: str = "raise", fmt: str = "coco") -> None:
        from ..formats import dataset_kwargs

        self.source = CocoDetection(root, split, None, None, masks=masks, **dataset_kwargs(fmt, root, split))
        self.transform, self.on_bad, self.masks = transform, on_bad, masks
        ids = self.source.ids
        if min_mask_pixels > 0:
            labels = self.source.mask_labels

            def covered(img_id: int) -> float:
                return sum(area_of(a) for a in self.source.coco.imgToAnns.get(img_id, [])
                           if a.get("category_id") in labels and not a.get("iscrowd", 0))

            kept = [i for i in ids if covered(i) > min_mask_pixels]
            log.info("%s: %d of %d images have more than %d labelled pixels", self.source.ann_file, len(kept),
                     len(ids), min_mask_pixels)
            ids = kept
        if not ids:
            raise DataError(f"{self.source.ann_file}: no image left for segmentation (masks={masks!r}, "
                            f"min_mask_pixels={min_mask_pixels})")
        self.source.ids = ids[:subset] if subset else ids
        self.ids = [str(i) for i in self.source.ids]
        self.missing: list[str] = []  # as VOCSegmentation's: a missing image is skipped when it is read
        self.class_names: list[str] = self.source.mask_class_names
        self.num_classes = len(self.class_names)

    def __len__(self) -> int:
        return len(self.source.ids)

    def image_path(self, index: int) -> Path:
        return self.source.image_path(index)

    def __getitem__(self, index: int | tuple[int, int]) -> dict | Skipped:
        """Item ``index``; an ``(index, seed)`` pair (``data/resumable.py``) first reseeds the transform."""
        index = seed_sample(self.transform, index)
        if self.on_bad == "raise":
            return self._item(index)
        return load_or_skip(self._item, index, len(self), lambda i: str(self.image_path(i)), self.source._warned,
                            self.on_bad)

    def _item(self, index: int) -> dict:
        image = self.source.load_image(index)
        mask = self.source.load_mask(index, (int(image.shape[0]), int(image.shape[1])))
        image_t, mask_t = self.transform(image, mask)
        return {"image": image_t, "mask": mask_t, "id": self.ids[index]}

    def __repr__(self) -> str:
        return f"CocoSegmentation({self.source.root}, split={self.source.split!r}, images={len(self)}, " \
               f"masks={self.masks!r}, classes={self.num_classes})"
