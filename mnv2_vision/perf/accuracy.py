"""Accuracy of exported models through the project's own evaluation code.

ONNX Runtime sessions are wrapped as modules with the PyTorch models' output contract, so a float or int8 export is
scored by exactly the code that scores the PyTorch model: detection by the steps of ``DetectionModule``'s validation
(``postprocess_detections`` → ``to_coco_results`` → one COCO evaluation over the whole split, as
``tools/eval_det.py``), segmentation through ``predict_batch`` and one ``ConfusionMatrix`` over the split (as
``tools/eval_seg.py``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..eval.coco import evaluate_coco, to_coco_results
from ..ops.boxes import BoxCoder
from ..ops.postprocess import PostprocessSettings, postprocess_detections

__all__ = ["OrtDetector", "OrtSegmenter", "evaluate_detection", "evaluate_segmentation"]


def _run(session, images: Tensor) -> list[np.ndarray]:
    return session.run(None, {"images": np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)})


class OrtDetector(nn.Module):
    """A raw-mode detection export (``cls_logits``, ``bbox_regression``, ``anchors``) behind SSDLite's interface."""

    def __init__(self, session, num_classes: int) -> None:
        super().__init__()
        names = [o.name for o in session.get_outputs()]
        if names[:2] != ["cls_logits", "bbox_regression"]:
            raise ValueError(f"OrtDetector needs a raw-mode detection export, got outputs {names}")
        self.session, self.num_classes = session, num_classes
        self._anchors: Tensor | None = None

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        cls_logits, bbox_regression, anchors = _run(self.session, images)
        self._anchors = torch.from_numpy(anchors[0])
        return {"cls_logits": torch.from_numpy(cls_logits), "bbox_regression": torch.from_numpy(bbox_regression)}

    def anchors(self, image_size: tuple[int, int], device: torch.device | str | None = None) -> Tensor:
        if self._anchors is None:
            raise RuntimeError("anchors are read from the exported model's output: run a forward first")
        return self._anchors.to(device or "cpu")


class OrtSegmenter(nn.Module):
    """A segmentation export (``logits``) behind DeepLab's ``{"out": logits}`` interface."""

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return {"out": torch.from_numpy(_run(self.session, images)[0])}


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
