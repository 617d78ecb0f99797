"""What every format of ``tools/export.py`` shares: the metadata an exported file carries, the validation images
its parity check runs on, the training images int8 calibrates on and the validation scoring of the fp32 and int8
files (``commands/export.py`` imports it with the ``deploy`` extra; ``litert.py`` and ``openvino.py`` after it).
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
from mnv2_vision.lit.detection import build_det_datamodule, categories_from
from mnv2_vision.lit.segmentation import build_seg_datamodule
from mnv2_vision.ops.postprocess import PostprocessSettings
from mnv2_vision.perf import accuracy as ev
from mnv2_vision.perf.timing import time_round_robin
from mnv2_vision.version import __version__

__all__ = ["export_metadata", "sample_inputs", "calibration", "segmentation_images", "fixed_size", "int8_latency",
           "METRICS", "score_exports", "report_int8"]

# the validation metrics each task's int8 gate checks (the pair keeps both)
METRICS = {"detection": ("map",), "segmentation": ("miou",), "multitask": ("map", "miou")}


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


def score_exports(cfg, hparams, model, postprocess: PostprocessSettings, detectors: Mapping[str, ev.Run],
                  segmenters: Mapping[str, ev.Run], seg_fixed: tuple[int, int] | None = None) -> dict[str, dict]:
    """Validation accuracy of the PyTorch ``model`` (``"pytorch"``) and of each exported file, by the project's eval
    code: mAP of the raw-mode runs in ``detectors`` (a detector, or the pair's boxes), mIoU of the runs in
    ``segmenters`` whose ``logits`` are the shipped file's (segmentation: each image at its own size, or resized to
    ``seg_fixed`` and back; the pair: at the network size, as its training module's validation). Both for the pair,
    under the same names."""
    kind = cfg.task
    if kind == "segmentation":
        dm, names = build_seg_datamodule(cfg), list(hparams.get("class_names") or segmentation_class_names(cfg))
        models = {"pytorch": model, **{k: ev.ExportedSegmenter(run, seg_fixed) for k, run in segmenters.items()}}
        return {k: ev.evaluate_segmentation(m, dm, names) for k, m in models.items()}
    ids, _ = categories_from(hparams)
    dm, k = build_det_datamodule(cfg, category_ids=ids), model.num_classes
    models = {"pytorch": model, **{name: ev.ExportedDetector(run, k) for name, run in detectors.items()}}
    out = {name: ev.evaluate_detection(m, dm, ids, postprocess, cfg.eval.coco_evaluator) for name, m in models.items()}
    if kind == "multitask":  # the masks of the shipped files themselves
        masks = {"pytorch": model, **{name: ev.ExportedSegmenter(run) for name, run in segmenters.items()}}
        for name, m in masks.items():
            out[name].update(_pair_segmentation(cfg, m, ids, model.seg_num_classes))
    return out


def _pair_segmentation(cfg, model, category_ids, num_classes: int) -> dict:
    """mIoU and pixel accuracy of a multi-task ``model`` (``{"out": logits}`` at the network size) on the pair's
    validation split, as its training module's validation scores them (``segmentation_pairs``)."""
    from mnv2_vision.data.io.labels import IGNORE_INDEX
    from mnv2_vision.eval.miou import ConfusionMatrix
    from mnv2_vision.lit.multitask import build_mt_datamodule, segmentation_pairs

    dm = build_mt_datamodule(cfg, category_ids=category_ids)
    dm.setup("validate")
    confmat = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for pred, mask, _ in segmentation_pairs(model.eval(), dm.val_dataloader()):
        confmat.update(pred, mask)
    metrics = confmat.compute()
    return {"miou": metrics.miou, "pixel_acc": metrics.pixel_acc}


def report_int8(out_dir: Path, report: dict[str, Any], kind: str, fmt: str, name: str, threads: int,
                max_drop: float, what: str) -> None:
    """The end of every format's ``--int8``: print PyTorch, fp32 and int8 of each metric of ``kind`` (``report``'s
    ``accuracy`` from ``score_exports`` with the run names ``{fmt}_fp32`` / ``{fmt}_int8``) and the latency
    (``int8_latency``), store each int8 − fp32 change (``int8_change``) and the ``int8_max_drop`` applied, write
    ``export_report.json``, then ``check_int8_drop`` (every metric the results share: both for the pair). The figures
    stay, also when the gate fails."""
    acc = report["accuracy"]
    fp32, int8 = acc[f"{fmt}_fp32"], acc[f"{fmt}_int8"]
    report["int8_change"] = changes = {k: float(int8[k]) - float(fp32[k]) for k in METRICS[kind]}
    for k, change in changes.items():
        print(f"{k}: PyTorch {acc['pytorch'][k]:.4f}  {name} fp32 {fp32[k]:.4f}  {name} int8 {int8[k]:.4f}  "
              f"(change {change:+.4f})")
    ms = report["latency_ms"]
    print(f"{name} latency, batch 1, {threads} threads: fp32 {ms['fp32']:.1f} ms, int8 {ms['int8']:.1f} ms "
          f"(speed-up {report['speedup']:.2f}x)")
    report["int8_max_drop"] = max_drop
    write_json(out_dir / "export_report.json", report, indent=1)
    ev.check_int8_drop(fp32, int8, max_drop, what)