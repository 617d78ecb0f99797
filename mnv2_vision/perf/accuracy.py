"""Accuracy of exported models through the project's own evaluation code, and the int8 accuracy gate.

An exported model is wrapped as a module with the PyTorch models' output contract, so a float or int8 export in any
format is scored by exactly the code that scores the PyTorch model: detection by the steps of ``DetectionModule``'s
validation (``postprocess_detections`` → ``to_coco_results`` → one COCO evaluation over the whole split, as
``tools/eval_det.py``), segmentation through ``predict_batch`` and one ``ConfusionMatrix`` over the split (as
``tools/eval_seg.py``). A format enters as a ``run(images) -> {output name: array}`` callable (ONNX Runtime:
``ort_run``; LiteRT: ``deploy.litert_export.litert_runner``; any runtime backend's ``run``) with the ONNX export's
output names. ``check_int8_drop`` refuses an int8 model that lost more than the allowed accuracy.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..deploy.onnx_export import ort_run  # re-exported: the accuracy wrappers take a run callable
from ..errors import UserError
from ..eval.coco import evaluate_coco, to_coco_results
from ..ops.boxes import BoxCoder
from ..ops.postprocess import PostprocessSettings, postprocess_detections

__all__ = ["Run", "ort_run", "ExportedDetector", "ExportedSegmenter",
           "evaluate_detection", "evaluate_segmentation", "Int8AccuracyError", "check_int8_drop"]

Run = Callable[[np.ndarray], Mapping[str, np.ndarray]]  # (N, 3, H, W) float32 images → outputs by ONNX name
_RAW_DETECTION = ("cls_logits", "bbox_regression", "anchors")


def _numpy(images: Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)


class ExportedDetector(nn.Module):
    """A raw-mode detection export (``cls_logits``, ``bbox_regression``, ``anchors``) behind SSDLite's interface."""

    def __init__(self, run: Run, num_classes: int) -> None:
        super().__init__()
        self.run, self.num_classes = run, num_classes
        self._anchors: Tensor | None = None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        out = self.run(_numpy(images))
        missing = [k for k in _RAW_DETECTION if k not in out]
        if missing:
            raise ValueError(f"ExportedDetector needs a raw-mode detection export; its outputs lack {missing}")
        self._anchors = torch.from_numpy(np.asarray(out["anchors"][0]))
        return {k: torch.from_numpy(np.ascontiguousarray(out[k])) for k in _RAW_DETECTION[:2]}

    def anchors(self, image_size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
        if self._anchors is None:
            raise RuntimeError("anchors are read from the exported model's output: run a forward first")
        return self._anchors.to(device or "cpu")


class ExportedSegmenter(nn.Module):
    """A segmentation export (``logits``) behind DeepLab's ``{"out": logits}`` interface.

    Args:
        run: the export's ``Run``.
        fixed_size: the (H, W) of a fixed-size graph (LiteRT): each image is resized to it (bilinear, half-pixel
            centres, as ``cv2.resize``) and the logits are resized back to the image's size, so the scores are those
            the runtime's masks come from. ``None``: the graph takes any size.
    """

    def __init__(self, run: Run, fixed_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.run, self.fixed_size = run, fixed_size

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])
        if self.fixed_size is None or size == tuple(self.fixed_size):
            return {"out": torch.from_numpy(np.ascontiguousarray(self.run(_numpy(images))["logits"]))}
        resized = F.interpolate(images.float(), size=tuple(self.fixed_size), mode="bilinear", align_corners=False)
        logits = torch.from_numpy(np.ascontiguousarray(self.run(_numpy(resized))["logits"]))
        return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}


@torch.inference_mode()
def evaluate_detection(model: nn.Module, datamodule, category_ids: Sequence[int], postprocess: PostprocessSettings,
                       evaluator: str = "pycocotools") -> dict[str, Any]:
    """COCO summary (``map``, ``map50``, ``map75``, ``stats``, ``per_class``...: ``eval.coco.evaluate_coco``) of
    ``model`` on the datamodule's validation split, by the steps of ``DetectionModule``'s validation: raw outputs →
    ``postprocess_detections`` → ``to_coco_results`` → one evaluation of the whole split (images the loader leaves
    out as unreadable are not scored), on the CPU."""
    model.eval()
    coder = BoxCoder()
    found: dict[int, dict[str, Tensor]] = {}
    for batch in datamodule.val_dataloader():
        images, targets = batch[0], batch[1]
        if not targets:
            continue
        # Channels-last, the layout DetectionModule validates in on a CPU (lit/detection.py ``_inputs``), so the
        # PyTorch model's numbers are tools/eval_det.py's; an ONNX Runtime session reads the same values either way.
        model.to(memory_format=torch.channels_last)
        out = model(images.contiguous(memory_format=torch.channels_last))
        size = tuple(images.shape[-2:])
        dets = postprocess_detections(out["cls_logits"], out["bbox_regression"], model.anchors(size, images.device),
                                      coder, size, [tuple(t["orig_size"]) for t in targets], postprocess)
        found.update((int(t["image_id"]), {k: v.cpu() for k, v in d.items()}) for t, d in zip(targets, dets))
    ids = sorted(found)
    results = to_coco_results([found[i] for i in ids], ids, category_ids)
    return evaluate_coco(datamodule.val_dataset.coco, results, image_ids=ids, evaluator=evaluator)


@torch.no_grad()
def evaluate_segmentation(model: nn.Module, datamodule, class_names: Sequence[str]) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU of ``model`` on the datamodule's validation split, single scale,
    each image at its own size (``predict_batch``), one confusion matrix over the split."""
    from ..data.io.labels import IGNORE_INDEX
    from ..eval.miou import ConfusionMatrix
    from ..lit.segmentation import predict_batch

    datamodule.setup("validate")
    confmat = ConfusionMatrix(len(class_names), IGNORE_INDEX)
    for batch in datamodule.val_dataloader():
        preds = predict_batch(model, batch["image"], batch["size"])
        for pred, mask, (h, w) in zip(preds, batch["mask"], batch["size"].tolist()):
            confmat.update(pred, mask[:h, :w])
    metrics = confmat.compute()
    return {"miou": metrics.miou, "pixel_acc": metrics.pixel_acc, "per_class": metrics.per_class(list(class_names))}


class Int8AccuracyError(UserError):
    """An int8 export lost more accuracy than allowed (``--int8-max-drop``): the file is written, the command fails."""


def check_int8_drop(fp32: Mapping[str, Any], int8: Mapping[str, Any], max_drop: float, what: str) -> float:
    """The accuracy change of an int8 model (``int8`` − ``fp32``: mAP for detection, mIoU for segmentation, both for
    the multi-task pair, from ``evaluate_detection`` / ``evaluate_segmentation`` on the same split); an
    ``Int8AccuracyError`` naming ``what`` (the model), every metric that lost more than ``max_drop`` (absolute) and
    what to try. Returns the largest loss (the smallest change) over the metrics."""
    keys = [k for k in ("map", "miou") if k in fp32 and k in int8]
    if not keys:
        raise ValueError(f"check_int8_drop needs 'map' or 'miou' in both results, got {sorted(fp32)} and "
                         f"{sorted(int8)}")
    changes = {k: float(int8[k]) - float(fp32[k]) for k in keys}
    names = {"map": "mAP", "miou": "mIoU"}
    lost = [f"int8 {names[k]} {float(int8[k]):.4f} vs fp32 {float(fp32[k]):.4f} ({c:+.4f})"
            for k, c in changes.items() if not c >= -max_drop]  # a NaN metric fails too
    if lost:
        raise Int8AccuracyError(
            f"{what}: {'; '.join(lost)}, more than the allowed drop of {max_drop:g}; try more calibration images "
            "(--calib-images), keep the heads in fp32 (the last convolutions, which the error reaches unaveraged), "
            "or allow more with --int8-max-drop (the config key export.int8_max_drop)")
    return min(changes.values())
