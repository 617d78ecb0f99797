"""What every format of ``tools/export.py`` shares: the metadata an exported file carries, the validation images
its parity check runs on and the training images int8 calibrates on (``commands/export.py`` imports it with the
``deploy`` extra; ``litert.py`` and ``openvino.py`` after it).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mnv2_vision.config import to_dict
from mnv2_vision.data import resolve_root
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.deploy.quantize import detection_calibration, segmentation_calibration
from mnv2_vision.lit.detection import categories_from
from mnv2_vision.lit.segmentation import build_seg_datamodule
from mnv2_vision.version import __version__

__all__ = ["export_metadata", "sample_inputs", "calibration", "segmentation_images", "fixed_size"]


def export_metadata(cfg, hparams, kind: str, size: tuple[int, int], wrapper) -> dict:
    """What the ONNX file carries in ``metadata_props``: preprocessing, labels and, for a detector, the wrapper's
    output mode, box coder and post-processing settings (a raw-mode export's runtime applies them itself)."""
    meta = {"model_name": cfg.model.name, "task": kind, "producer": f"mnv2_vision {__version__}",
            "input_name": "images", "input_layout": "NCHW", "input_size": list(size), "color_order": "RGB",
            "pixel_scaling": "x / 255, then (x - mean) / std per channel", "mean": list(cfg.data.mean),
            "std": list(cfg.data.std), "config": to_dict(cfg)}
    if kind in ("detection", "multitask"):
        ids, names = categories_from(hparams)
        meta.update(class_names=["background", *names], category_ids=ids, resize="plain resize to input_size",
                    box_format="xyxy, pixels of the network input (scale by original / input_size)",
                    detection_output=wrapper.mode, box_coder_weights=list(wrapper.coder.weights),
                    postprocess=wrapper.postprocess.as_dict())
        if kind == "multitask":
            meta.update(seg_class_names=list(hparams.get("class_names") or []), ignore_index=255,
                        seg_output="logits (N, K, H, W) at input_size: upsample to the original image, then argmax")
    else:
        meta.update(class_names=list(hparams.get("class_names") or segmentation_class_names(cfg)),
                    resize="none: any height and width (input_size is the training crop)", ignore_index=255)
    return meta


def sample_inputs(cfg, kind: str, size: tuple[int, int], n: int) -> list[torch.Tensor]:
    """Preprocessed validation images (a batch of ``n`` for detection, one per image for segmentation's varying
    sizes), plus a random batch of 2 at ``size`` so the dynamic batch is always exercised."""
    inputs = [torch.randn(2, 3, *size)]
    if n > 0:
        d = cfg.data
        root = resolve_root(d)
        if kind in ("detection", "multitask"):
            inputs.append(torch.from_numpy(np.concatenate(
                detection_calibration(root, d.val_split, d.image_size, d.mean, d.std, n))))
        else:
            inputs += [torch.from_numpy(a) for a in segmentation_images(cfg, d.val_split, n)]
    return inputs


def calibration(cfg, kind: str, n: int) -> list[np.ndarray]:
    """The first ``n`` training images, preprocessed by the evaluation pipeline, for int8 calibration."""
    d = cfg.data
    if kind in ("detection", "multitask"):  # the pair takes the detector's fixed input size
        return detection_calibration(resolve_root(d), d.train_split, d.image_size, d.mean, d.std, n)
    return segmentation_images(cfg, d.train_split, n)


def segmentation_images(cfg, split: str, n: int) -> list[np.ndarray]:
    """The first ``n`` images of ``split`` normalised at their own size: ``(1, 3, H, W)`` arrays. A VOC layout by
    ``segmentation_calibration``; COCO with painted masks (``data.masks``), which that reader lacks, by the
    segmentation datamodule's evaluation dataset of ``split``."""
    d = cfg.data
    if d.format != "coco":
        return segmentation_calibration(resolve_root(d), split, d.mean, d.std, n, cfg.model.num_classes)
    dm = build_seg_datamodule(dataclasses.replace(cfg, data=dataclasses.replace(d, val_split=split)))
    dataset = dm.val_dataset()
    return [dataset[i]["image"].unsqueeze(0).numpy() for i in range(min(n, len(dataset)))]


def fixed_size(images: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Images resized (bilinear, half-pixel centres) to a fixed-size graph's input, as ``ExportedSegmenter`` does."""
    return [a if tuple(a.shape[-2:]) == size else F.interpolate(torch.from_numpy(a), size=size, mode="bilinear",
                                                                 align_corners=False).numpy() for a in images]
