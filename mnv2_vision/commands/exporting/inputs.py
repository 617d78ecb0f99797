"""What every format of ``tools/export.py`` shares: the metadata an exported file carries, the validation images
its parity check runs on and the training images int8 calibrates on (``commands/export.py`` imports it with the
``deploy`` extra; ``litert.py`` and ``openvino.py`` after it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from mnv2_vision.config import to_dict
from mnv2_vision.data import resolve_root
from mnv2_vision.data.classes import segmentation_class_names
from mnv2_vision.deploy.quantize import detection_calibration, segmentation_calibration
from mnv2_vision.files import write_json
from mnv2_vision.lit.detection import categories_from
from mnv2_vision.lit.segmentation import build_seg_datamodule
from mnv2_vision.perf.accuracy import check_int8_drop
from mnv2_vision.perf.timing import time_round_robin
from mnv2_vision.version import __version__

__all__ = ["export_metadata", "sample_inputs", "calibration", "segmentation_images", "fixed_size", "int8_latency",
           "report_then_gate"]


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
        return detection_calibration(resolve_root(d), d.train_split, d.image_size, d.mean, d.std, n, d.format)
    return segmentation_images(cfg, d.train_split, n)


def segmentation_images(cfg, split: str, n: int) -> list[np.ndarray]:
    """The first ``n`` images of ``split`` normalised at their own size: ``(1, 3, H, W)`` arrays. A VOC layout by
    ``segmentation_calibration``; COCO with painted masks (``data.masks``), which that reader lacks, by the
    segmentation datamodule's evaluation dataset of ``split``."""
    d = cfg.data
    if d.format == "voc":
        return segmentation_calibration(resolve_root(d), split, d.mean, d.std, n, cfg.model.num_classes)
    dm = build_seg_datamodule(dataclasses.replace(cfg, data=dataclasses.replace(d, val_split=split)))
    dataset = dm.val_dataset()
    return [dataset[i]["image"].unsqueeze(0).numpy() for i in range(min(n, len(dataset)))]


def fixed_size(images: Sequence[np.ndarray], size: tuple[int, int]) -> list[np.ndarray]:
    """Images resized (bilinear, half-pixel centres) to a fixed-size graph's input, as ``ExportedSegmenter`` does."""
    return [a if tuple(a.shape[-2:]) == size else F.interpolate(torch.from_numpy(a), size=size, mode="bilinear",
                                                                 align_corners=False).numpy() for a in images]


def int8_latency(fp32: Callable[[], Any], int8: Callable[[], Any], runs: int) -> dict:
    """The fp32 vs int8 latency of one call each (batch 1): ``latency_ms`` (medians) and ``speedup``. Round robin in
    blocks of 11 calls, the first untimed: each timed call finds the cores and caches to itself (see timing.py)."""
    timing = time_round_robin({"fp32": fp32, "int8": int8}, runs=max(1, runs // 10), block=11)
    ms = {k: v["median_ms"] for k, v in timing.items()}
    return {"latency_ms": ms, "speedup": ms["fp32"] / ms["int8"]}


def report_then_gate(out_dir: Path, report: Mapping[str, Any], fp32: Mapping[str, Any], int8: Mapping[str, Any],
                     max_drop: float, what: str) -> None:
    """Write ``export_report.json``, then ``check_int8_drop``: the figures stay, also when the gate fails."""
    write_json(out_dir / "export_report.json", dict(report), indent=1)
    check_int8_drop(fp32, int8, max_drop, what)
