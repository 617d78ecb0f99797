"""``load(path).predict(inputs)``: an exported model on images, with the result dicts of ``mnv2_vision``'s
predictor, as numpy arrays.

    import mnv2_runtime
    model = mnv2_runtime.load("model.onnx")                         # or model.tflite, model.xml (their extras)
    [r] = model.predict("photo.jpg", score_thresh=0.3)             # r["boxes"], r["scores"], r["names"], ...

Detection results hold ``boxes`` ``(D, 4)`` float32 xyxy in the pixels of the original image (after its EXIF
orientation), ``scores`` ``(D,)`` float32, ``labels`` ``(D,)`` int64 (1..C, 0 is background), ``names`` and COCO
``category_ids``; segmentation a ``mask`` ``(H, W)`` int64 of label indices (and ``probs`` ``(K, H, W)`` float32 on
request); the multi-task pair both, from one forward pass. Every result carries ``size`` ``(H, W)`` and, for a file,
its ``path``. Inputs are prepared as in evaluation (``images``, ``preprocess``), so the detections are
``tools/eval_det.py``'s.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .backends import Backend, backend_class
from .errors import ModelError
from .images import expand_inputs, to_rgb
from .postprocess import (DEFAULT_BOX_CODER_WEIGHTS, Postprocess, detections, resize_bilinear, resize_boxes,
                          softmax)
from .preprocess import detection_input, resize_linear, segmentation_input

__all__ = ["Model", "load", "check_score_thresh"]

_DETECTS = ("detection", "multitask")


def check_score_thresh(value: Any, name: str = "score_thresh") -> float:
    """``value`` as a float, or ``ValueError`` naming ``name`` unless it is a number in [0, 1] (scores are
    probabilities; NaN would silently keep no box, a negative value means nothing more than 0)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not 0.0 <= v <= 1.0:  # False for NaN
        raise ValueError(f"{name} must be a number in [0, 1] (the lowest score kept), got {value}")
    return v


def _batches(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


class Model:
    """An exported model ready for images (made by ``load``).

    Args:
        backend: the opened file (``backends.Backend``).
        source: what messages name (the file).
        metadata: checked metadata to use instead of the backend's own (a test's edited copy).

    Attributes:
        task: ``"detection"``, ``"segmentation"`` or ``"multitask"``.
        names: class names by label (0 = background); of the boxes for a multi-task model.
        mask_names: the names of the mask's labels (segmentation and multi-task).
        category_ids: detection: the COCO category id of label ``i`` is ``category_ids[i - 1]``.
        input_size: detection: the network's ``(H, W)``.
        postprocess: detection: the ``Postprocess`` settings (``score_thresh`` is ``predict``'s default).
    """

    def __init__(self, backend: Backend, source: str, metadata: Mapping[str, Any] | None = None) -> None:
        self.backend, self.source = backend, source
        meta = self.metadata = backend.metadata if metadata is None else metadata
        self.task: str = meta["task"]
        size = int(meta["input_size"][0])
        self.input_size = (size, size)
        self.mean = tuple(float(v) for v in meta["mean"])
        self.std = tuple(float(v) for v in meta["std"])
        self.names: list[str] = list(meta["class_names"])
        detects = self.task in _DETECTS
        self.mask_names: list[str] = list(meta.get("seg_class_names") or (self.names if not detects else []))
        self.category_ids: list[int] = list(meta["category_ids"]) if detects else []
        self.postprocess = Postprocess.from_dict(meta["postprocess"]) if detects else None
        self.box_weights = tuple(meta.get("box_coder_weights") or DEFAULT_BOX_CODER_WEIGHTS)
        fixed = backend.fixed_input
        if detects and fixed is not None and tuple(fixed) != self.input_size:
            raise ModelError(f"{source}: metadata key 'input_size' is {list(meta['input_size'])} but the graph takes "
                             f"{fixed[0]} × {fixed[1]} images; export it again with tools/export.py")

    def __repr__(self) -> str:
        return (f"Model({self.task}, {len(self.names) - 1} classes, {getattr(self.backend, 'name', 'backend')}, "
                f"source={self.source})")

    # ------------------------------------------------------------------ prediction
    def predict(self, inputs: Any, *, batch_size: int = 1, score_thresh: float | None = None,
                probs: bool = False) -> list[dict[str, Any]]:
        """Predictions for ``inputs``: a path, a folder, a PIL image, an ``(H, W, 3)`` uint8 array, an ``(N, H, W,
        3)`` batch, or a list of any of these; one result per image, in order. A file that cannot be read raises
        (``ValueError``, ``FileNotFoundError``) naming it: nothing is skipped.

        Args:
            batch_size: images per forward pass (any sizes share one for detection; segmentation passes images of
                one size together). Results do not depend on it.
            score_thresh: detection: the lowest score kept (default: the model's ``postprocess.score_thresh``, the
                value its mAP was measured with: up to ``detections_per_img`` boxes, most of them unlikely). Raise
                it (0.3, say) to draw boxes.
            probs: masks: also return ``probs`` ``(K, H, W)`` softmax probabilities.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        settings = self.postprocess
        if score_thresh is not None and settings is not None:
            settings = Postprocess(check_score_thresh(score_thresh), settings.nms_iou, settings.topk_candidates,
                                   settings.detections_per_img)
        results: list[dict[str, Any]] = []
        for chunk in _batches(expand_inputs(inputs), batch_size):
            images = [to_rgb(item) for item in chunk]
            if self.task in _DETECTS:
                batch = self._detect(images, settings, probs)
            else:
                batch = self._segment(images, probs)
            for item, image, r in zip(chunk, images, batch):
                r["size"] = (int(image.shape[0]), int(image.shape[1]))
                if isinstance(item, (str, os.PathLike)):
                    r["path"] = str(item)
                results.append(r)
        return results

    __call__ = predict

    def _masks(self, logits: np.ndarray, size: tuple[int, int], probs: bool) -> dict[str, np.ndarray]:
        """The mask (and probabilities) of one image's ``(K, h, w)`` logits at the image's ``size``."""
        up = resize_bilinear(logits, size)
        out = {"mask": up.argmax(0).astype(np.int64)}
        if probs:
            out["probs"] = softmax(up, axis=0)
        return out

    def _detect(self, images: list[np.ndarray], settings: Postprocess, probs: bool) -> list[dict[str, Any]]:
        x = np.stack([detection_input(im, self.input_size, self.mean, self.std) for im in images])
        sizes = [im.shape[:2] for im in images]
        out = self.backend.run(x)
        if "cls_logits" in out:
            dets = detections(out["cls_logits"], out["bbox_regression"], out["anchors"][0], self.input_size, sizes,
                              settings, self.box_weights)
        else:  # NMS in the graph: boxes in network-input pixels, padded rows
            thresh = np.float32(settings.score_thresh)
            dets = []
            for i, s in enumerate(sizes):
                n = int(out["num_detections"][i])
                keep = out["scores"][i, :n] > thresh
                dets.append({"boxes": resize_boxes(out["boxes"][i, :n][keep], self.input_size, s),
                             "scores": out["scores"][i, :n][keep], "labels": out["labels"][i, :n][keep]})
        results = []
        for i, d in enumerate(dets):
            labels = d["labels"].astype(np.int64)
            if len(labels) and int(labels.max()) >= len(self.names):
                # a graph with NMS inside shows its class count in no output shape, so loading could not compare
                raise ModelError(f"{self.source}: the model predicts label {int(labels.max())} but its class names "
                                 f"('class_names') stop at label {len(self.names) - 1}; give it the label map it "
                                 "was trained with (export it again with tools/export.py)")
            r = {"boxes": d["boxes"].astype(np.float32), "scores": d["scores"].astype(np.float32), "labels": labels,
                 "names": [self.names[k] for k in labels.tolist()],
                 "category_ids": [self.category_ids[k - 1] for k in labels.tolist()]}
            if self.task == "multitask":  # the mask of the same pass, upsampled from the network size to the image
                r.update(self._masks(out["logits"][i], tuple(sizes[i]), probs))
            results.append(r)
        return results

    def _segment(self, images: list[np.ndarray], probs: bool) -> list[dict[str, Any]]:
        fixed = self.backend.fixed_input
        out: list[dict[str, Any]] = [{} for _ in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):  # images of one size share a forward pass; no padding enters the network
            groups.setdefault((0, 0) if fixed else tuple(im.shape[:2]), []).append(i)
        for idx in groups.values():
            x = np.stack([segmentation_input(resize_linear(images[i], fixed) if fixed else images[i], self.mean,
                                             self.std) for i in idx])
            logits = self.backend.run(x)["logits"]
            for j, i in enumerate(idx):
                out[i] = self._masks(logits[j], tuple(images[i].shape[:2]), probs)
        return out


def load(path: str | os.PathLike, threads: int | None = None, *, device: str = "cpu") -> Model:
    """A ``Model`` for an exported file: ``.onnx`` (ONNX Runtime), ``.tflite`` (LiteRT, extra ``litert``) or
    OpenVINO's ``.xml`` (extra ``openvino``).

    Args:
        path: the file ``tools/export.py`` wrote.
        threads: intra-op CPU threads (default: the runtime's own choice).
        device: ``"cpu"``; ``"cuda"`` runs an ``.onnx`` file on ONNX Runtime's CUDA provider where installed.

    Raises:
        FileNotFoundError: no such file.
        ModelError: a file that cannot be used (one line naming the file and, for metadata, the key).
        MissingRuntime: the format's inference package is not installed (the line names the extra).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    cls = backend_class(path)
    backend = cls(path, threads) if device == "cpu" else cls(path, threads, device=device)
    return Model(backend, str(path))
