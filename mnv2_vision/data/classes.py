"""Class names of each task's data, from the config alone (the checkpoint stores the same names).

Label ``i`` of a segmentation map is ``names[i]``, 0 = background; detection's names come from the annotation
file's categories (``CocoDetection``).
"""
from __future__ import annotations

import json

from ..config import Config, ConfigError
from ..errors import DataError
from . import resolve_root
from .coco import annotation_file
from .synthetic import SHAPE_CLASSES
from .voc import VOC_CLASSES

__all__ = ["segmentation_class_names", "coco_category_names", "multitask_seg_class_names"]


def segmentation_class_names(cfg: Config) -> tuple[str, ...]:
    """Class names: VOC's for COCO masks in the 20 VOC classes, the annotation file's categories for COCO masks of
    every category, the shapes' for the built-in data, VOC's otherwise; generic names if model.num_classes differs."""
    if cfg.data.format != "voc" and cfg.data.masks == "all":
        names: tuple[str, ...] = ("background", *coco_category_names(cfg))
    elif cfg.data.format != "voc" and cfg.data.masks == "voc20":
        names = VOC_CLASSES
    elif cfg.data.synthetic:
        names = ("background", *SHAPE_CLASSES)
    else:
        names = VOC_CLASSES
    k = cfg.model.num_classes
    if k is not None and k != len(names):
        names = ("background", *(f"class{i}" for i in range(1, k)))
    return names


def coco_category_names(cfg: Config) -> list[str]:
    """The category names of ``cfg.data``'s COCO training annotation file, sorted by id (the label order), or of
    its labelling-tool dataset (``data/formats``); a file whose categories cannot be read is a ``DataError`` naming
    it."""
    if cfg.data.format != "coco":
        from .formats import format_names

        return format_names(cfg.data.format, resolve_root(cfg.data), cfg.data.train_split)
    path = annotation_file(resolve_root(cfg.data), cfg.data.train_split)
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        cats = json.loads(path.read_bytes())["categories"]
        names = [str(c["name"]) for c in sorted(cats, key=lambda c: c["id"])]
    except (ValueError, KeyError, TypeError) as e:  # not JSON, no "categories", entries without id / name
        raise DataError(f"cannot read the categories of {path}: {type(e).__name__}: {e}") from e
    if not names:
        raise DataError(f"{path} defines no categories")
    return names


def multitask_seg_class_names(cfg: Config) -> tuple[str, ...]:
    """The pair's segmentation classes: VOC's for COCO masks in VOC classes, the annotation file's categories for
    masks of every category, else those of the segmentation-only dataset (the shapes' or VOC's)."""
    d = cfg.data
    if d.masks == "voc20":
        return VOC_CLASSES
    if d.masks == "all":
        return ("background", *coco_category_names(cfg))
    if d.seg_root is None:
        raise ConfigError("the multi-task pair needs segmentation labels: set data.masks (voc20 | all) and/or "
                          "data.seg_root (a VOC-layout segmentation dataset)")
    if d.synthetic:
        return ("background", *SHAPE_CLASSES)
    return VOC_CLASSES
