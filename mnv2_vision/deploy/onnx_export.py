"""ONNX export of SSDLite and DeepLabv3 with preprocessing metadata, and the ONNX Runtime parity check.

Detection exports in one of two forms:

* ``"nms"``: the whole post-processing of ``ops.postprocess.postprocess_detections`` in the graph (softmax,
  per-class top-k, decode, clip, per-class NMS with ONNX ``NonMaxSuppression``, best ``detections_per_img``), with
  fixed-size outputs ``boxes (N, D, 4)`` xyxy network-input pixels, ``scores (N, D)``, ``labels (N, D)`` int64
  (0 on padding rows) and ``num_detections (N,)``; the layout TensorRT's EfficientNMS and TF's exporters use.
* ``"raw"``: ``cls_logits (N, A, K)``, ``bbox_regression (N, A, 4)`` and the anchors ``(N, A, 4)`` (the same for
  every image) so a runtime can decode with the box-coder weights stored in the metadata.

Segmentation exports ``logits (N, K, H, W)`` with dynamic batch, height and width. The multi-task pair exports the
detection outputs of either mode followed by its segmentation ``logits (N, K, H, W)`` at the (fixed) input size, all
from one pass.

The TorchScript-based exporter is used (``dynamo=False``): it exports these models in seconds rather than a minute
and has a stable route for custom ONNX nodes (``autograd.Function.symbolic``) that NMS needs.
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import onnx
import torch
from mnv2_runtime.metadata import decode_props, encode_props
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, nms

from ..errors import CheckpointError
from ..files import atomic_write, temp_name
from ..ops.boxes import BoxCoder
from ..ops.postprocess import PostprocessSettings, postprocess_detections

__all__ = [
    "DETECTION_MODES", "DetectionExport", "SegmentationExport", "MultiTaskExport", "export_onnx", "read_onnx",
    "read_metadata", "ort_session", "ort_run", "ParityError", "MIN_MASK_AGREEMENT", "check_parity", "check_outputs",
    "match_detections",
]

DETECTION_MODES = ("nms", "raw")
DEFAULT_OPSET = 17
MIN_MASK_AGREEMENT = 0.999  # of the pixels: an exported segmenter's masks against PyTorch's


class _MultiClassNMS(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (per batch and class, score > threshold, IoU > threshold suppresses) with an
    eager reference of the same semantics. Returns ``(M, 3)`` int64 rows ``(image, class, box)`` ordered by
    image, class, then decreasing score."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou: float, score_thresh: float) -> Tensor:
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                cand = (scores[b, c] > score_thresh).nonzero().squeeze(1)
                keep = cand[nms(boxes[b, cand], scores[b, c, cand], iou)[:max_per_class]]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else boxes.new_zeros((0, 3), dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou: float, score_thresh: float):
        def const(v: Any, dtype: torch.dtype):
            return g.op("Constant", value_t=torch.tensor([v], dtype=dtype))

        return g.op("NonMaxSuppression", boxes, scores, const(max_per_class, torch.int64), const(iou, torch.float32),
                    const(score_thresh, torch.float32))


class DetectionExport(nn.Module):
    """SSDLite + post-processing as one exportable module (see the module docstring for the two modes).

    The ``"nms"`` mode reproduces ``postprocess_detections`` with ``original_sizes`` equal to the input size: each
    class's ``topk_candidates`` best anchors become candidates, NMS runs per class, and the ``detections_per_img``
    best survivors over all classes are kept. Per-class NMS is run as one single-class ``NonMaxSuppression``: every
    class's boxes are shifted to their own cell of a grid of image-sized tiles, so boxes of different classes never
    overlap (torchvision's ``batched_nms`` coordinate trick, on a 2-D grid to keep the offsets, and so the float32
    rounding of the IoUs, small). A single class lets ONNX Runtime stop as soon as ``detections_per_img`` boxes are
    selected instead of running NMS to the end for every class.

    Args:
        model: returns ``{"cls_logits", "bbox_regression"}`` and offers ``anchors(size)``.
        image_size: network input ``(H, W)``; fixed, since the anchors depend on it.
        mode: ``"nms"`` or ``"raw"``.
        postprocess: the settings of ``postprocess_detections``: the ``"nms"`` graph applies them (required there);
            a ``"raw"`` export leaves them to the runtime, which finds them in the metadata (``tools/export.py``).
        coder: the box coder used in training.
    """

    def __init__(self, model: nn.Module, image_size: tuple[int, int], mode: str,
                 postprocess: PostprocessSettings | None = None, coder: BoxCoder | None = None) -> None:
        super().__init__()
        if mode not in DETECTION_MODES:
            raise ValueError(f"detection export mode must be one of {DETECTION_MODES}, got {mode!r}")
        if mode == "nms" and postprocess is None:
            raise ValueError("the 'nms' detection export needs its post-processing settings (postprocess)")
        self.model, self.mode = model, mode
        self.image_size = (int(image_size[0]), int(image_size[1]))
        anchors = model.anchors(self.image_size).clone()
        self.register_buffer("anchors", anchors, persistent=False)
        self.coder = coder or BoxCoder()
        self.postprocess = postprocess
        if postprocess is not None:  # each candidate's class, and the offset that moves it to its class's tile
            num_classes = model.num_classes - 1
            self.k = min(int(postprocess.topk_candidates), anchors.shape[0])
            cls = torch.arange(num_classes).repeat_interleave(self.k)  # (C·k,): class of each candidate, in order
            grid = math.ceil(math.sqrt(num_classes))
            h, w = self.image_size
            ox, oy = (cls % grid).float() * (w + 1), (cls // grid).float() * (h + 1)
            self.register_buffer("labels", cls + 1, persistent=False)
            self.register_buffer("offsets", torch.stack([ox, oy, ox, oy], dim=1), persistent=False)  # (C·k, 4)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return self.detections(self.model(images), images)

    def detections(self, raw: dict[str, Tensor], images: Tensor) -> tuple[Tensor, ...]:
        """The outputs of ``mode`` from the network's raw outputs."""
        if self.mode == "raw":
            # Per image (a view), since the tracer cannot make a constant a graph output.
            return raw["cls_logits"], raw["bbox_regression"], self.anchors.expand(images.shape[0], -1, -1)
        p = self.postprocess
        score_thresh, max_keep = float(p.score_thresh), int(p.detections_per_img)
        scores = torch.softmax(raw["cls_logits"], dim=-1)[..., 1:].transpose(1, 2)  # (N, C, A), background dropped
        boxes = clip_boxes_to_image(self.coder.decode(raw["bbox_regression"], self.anchors), self.image_size)
        n, a, ck = scores.shape[0], scores.shape[2], self.labels.shape[0]
        # Each class's candidates: membership is all that matters, so unsorted (a selection, not a sort).
        top, idx = scores.topk(self.k, dim=2, sorted=False)  # (N, C, k)
        cand_scores = top.reshape(n, ck)
        # Row gathers from the flattened batch (ONNX Gather), cheaper than GatherElements on expanded indices.
        rows = torch.arange(n, device=images.device).unsqueeze(1)
        cand_boxes = boxes.reshape(n * a, 4)[idx.reshape(n, ck) + rows * a]  # (N, C·k, 4)
        selected = _MultiClassNMS.apply(cand_boxes + self.offsets, cand_scores.unsqueeze(1), max_keep,
                                        float(p.nms_iou), score_thresh)  # (M, 3): image, 0, candidate
        flat = selected[:, 0] * ck + selected[:, 2]
        kept = torch.zeros(n * ck, dtype=scores.dtype).scatter(0, flat, 1.0).view(n, ck) > 0
        kept_scores = torch.where(kept, cand_scores, torch.full_like(cand_scores, -1.0))
        d = min(max_keep, ck)
        det_scores, det_idx = kept_scores.topk(d, dim=1)  # (N, D): the survivors, best first
        valid = det_scores > score_thresh
        labels = torch.where(valid, self.labels[det_idx], torch.zeros_like(det_idx))
        det_boxes = cand_boxes.reshape(n * ck, 4)[det_idx + rows * ck]
        det_boxes = det_boxes * valid.unsqueeze(-1).to(det_boxes.dtype)
        det_scores = det_scores * valid.to(det_scores.dtype)
        return det_boxes, det_scores, labels, valid.sum(dim=1)


class SegmentationExport(nn.Module):
    """DeepLab's ``{"out": logits}`` as a plain tensor output: at the input size, or at the output stride with
    ``upsample=False`` (the benchmark's raw network; not a shipped file)."""

    def __init__(self, model: nn.Module, upsample: bool = True) -> None:
        super().__init__()
        self.model, self.upsample = model, upsample

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images, upsample=self.upsample)["out"]


class MultiTaskExport(DetectionExport):
    """The SSDLite + DeepLab pair: ``DetectionExport``'s outputs (either mode) and the segmentation ``logits``, from
    one forward pass. Arguments as ``DetectionExport``, and ``upsample`` as ``SegmentationExport``'s."""

    def __init__(self, model: nn.Module, image_size: tuple[int, int], mode: str,
                 postprocess: PostprocessSettings | None = None, coder: BoxCoder | None = None, *,
                 upsample: bool = True) -> None:
        super().__init__(model, image_size, mode, postprocess, coder)
        self.upsample = upsample

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        raw = self.model(images, upsample=self.upsample)
        return (*self.detections(raw, images), raw["out"])


def _io_names(wrapper: nn.Module) -> tuple[list[str], dict[str, dict[int, str]]]:
    if isinstance(wrapper, SegmentationExport):
        return ["logits"], {"images": {0: "batch", 2: "height", 3: "width"},
                            "logits": {0: "batch", 2: "height", 3: "width"}}
    names = ["cls_logits", "bbox_regression", "anchors"] if wrapper.mode == "raw" else \
        ["boxes", "scores", "labels", "num_detections"]
    if isinstance(wrapper, MultiTaskExport):
        names.append("logits")  # at the fixed input size, like the boxes
    return names, {"images": {0: "batch"}, **{k: {0: "batch"} for k in names}}


def export_onnx(wrapper: nn.Module, path: str | Path, image_size: tuple[int, int], metadata: dict[str, Any],
                opset: int = DEFAULT_OPSET) -> Path:
    """Export ``wrapper`` (``DetectionExport`` or ``SegmentationExport``) to ``path`` with a dynamic batch and the
    ``metadata`` (values JSON-encoded unless already strings) in the model's ``metadata_props``."""
    if opset < 11:
        raise ValueError(f"opset must be ≥ 11 (NonMaxSuppression, dynamic Resize), got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = wrapper.eval()
    output_names, dynamic_axes = _io_names(wrapper)
    # Batch 2 so that nothing specialises on a batch of one.
    sample = torch.randn(2, 3, int(image_size[0]), int(image_size[1]))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about Python ints from shapes: they are static here
        raw = temp_name(path).with_suffix(".raw")  # the exporter writes in place: never at the final name
        try:
            torch.onnx.export(wrapper, (sample,), str(raw), dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=output_names, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
            model = onnx.load(str(raw))
        finally:
            raw.unlink(missing_ok=True)
    props = encode_props(metadata)
    onnx.helper.set_model_props(model, props)
    model.doc_string = f"mnv2_vision {props.get('model_name', '')} ({props.get('task', '')}); see metadata_props"
    onnx.checker.check_model(model)
    with atomic_write(path) as f:
        onnx.save(model, f)
    return path


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """The ONNX model in ``path`` (external weight files not read), or a ``CheckpointError`` naming the file where it
    holds none: random, truncated or empty bytes."""
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable ONNX model ({reason}); export it again with "
                              "tools/export.py") from None
    if not model.HasField("graph"):  # an empty file parses as an empty model
        raise CheckpointError(f"{path} is not an ONNX model (empty, or without a graph); export it again with "
                              "tools/export.py")
    return model


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata_props`` of an ONNX file, decoded by ``metadata.decode_props`` (a value that is not JSON for a
    key written as JSON is a ``CheckpointError`` naming the file and the key); not checked against a task."""
    return decode_props(((p.key, p.value) for p in read_onnx(path).metadata_props), str(path))


def ort_session(path: str | Path, threads: int = 2, profile_prefix: str | Path | None = None):
    """An ONNX Runtime CPU session with ``threads`` intra-op threads and full graph optimisation; with
    ``profile_prefix``, ONNX Runtime's profiler on (its JSON goes to ``<profile_prefix>_<time>.json``)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_run(session) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """An ONNX Runtime session as ``run(images) -> {output name: array}`` (the callable ``check_outputs``, the
    accuracy wrappers and the benchmark take), ``images`` (N, 3, H, W) float32."""
    names = [o.name for o in session.get_outputs()]
    return lambda images: dict(zip(names, session.run(None, {"images": np.ascontiguousarray(images,
                                                                                            dtype=np.float32)})))


class ParityError(AssertionError):
    """The exported model's outputs differ from PyTorch's beyond the tolerance."""


def match_detections(ref: dict[str, Tensor], got: dict[str, Tensor], box_atol: float = 1e-2,
                     score_atol: float = 1e-4) -> list[str]:
    """Differences between two detection sets of one image (empty list: the same detections).

    Detections are matched by label, box (``box_atol`` pixels) and score (``score_atol``). Unmatched ones are
    forgiven only where float rounding may legitimately decide: a pair of unmatched detections (one per side) of
    the same label and score within ``score_atol`` (an NMS or top-k tie broken the other way), or an unmatched
    detection whose score is within ``score_atol`` of the lowest kept score (a tie at the ``detections_per_img``
    cut).
    """
    free = list(range(len(got["scores"])))
    left: list[int] = []
    for i in range(len(ref["scores"])):
        hit = next((j for j in free if int(got["labels"][j]) == int(ref["labels"][i])
                    and abs(float(got["scores"][j]) - float(ref["scores"][i])) <= score_atol
                    and float((got["boxes"][j] - ref["boxes"][i]).abs().max()) <= box_atol), None)
        if hit is None:
            left.append(i)
        else:
            free.remove(hit)
    for i in list(left):  # tie swaps
        hit = next((j for j in free if int(got["labels"][j]) == int(ref["labels"][i])
                    and abs(float(got["scores"][j]) - float(ref["scores"][i])) <= score_atol), None)
        if hit is not None:
            left.remove(i)
            free.remove(hit)
    cut = min([float(d["scores"].min()) for d in (ref, got) if len(d["scores"])], default=0.0)
    problems = [f"reference detection {i} (label {int(ref['labels'][i])}, score {float(ref['scores'][i]):.6f}, "
                f"box {[round(v, 2) for v in ref['boxes'][i].tolist()]}) missing"
                for i in left if float(ref["scores"][i]) > cut + score_atol]
    problems += [f"extra detection (label {int(got['labels'][j])}, score {float(got['scores'][j]):.6f}, "
                 f"box {[round(v, 2) for v in got['boxes'][j].tolist()]})"
                 for j in free if float(got["scores"][j]) > cut + score_atol]
    return problems


def _close(got: np.ndarray, ref: Tensor, atol: float, rtol: float) -> tuple[float, float, bool]:
    """(max |got − ref|, allowed, ok) with allowed = atol + rtol · max |ref|: float32 rounding grows with the
    magnitude of the outputs (an fp32 PyTorch forward differs from its own float64 result by about the same)."""
    diff = float((torch.from_numpy(got) - ref).abs().max()) if ref.numel() else 0.0
    allowed = atol + rtol * (float(ref.abs().max()) if ref.numel() else 0.0)
    return diff, allowed, diff <= allowed


def _segmentation_parity(source: str, runtime: str, got: np.ndarray, ref: Tensor, atol: float,
                         rtol: float) -> dict[str, Any]:
    diff, allowed, ok = _close(got, ref, atol, rtol)
    if not ok:
        raise ParityError(f"{source}: {runtime} logits differ from PyTorch by {diff:.3g} > {allowed:.3g}")
    agreement = float((torch.from_numpy(np.ascontiguousarray(got)).argmax(1) == ref.argmax(1)).float().mean())
    if agreement < MIN_MASK_AGREEMENT:
        raise ParityError(f"{source}: {runtime} masks (argmax of the logits) agree with PyTorch's on "
                          f"{100 * agreement:.3f} % of the pixels, fewer than {100 * MIN_MASK_AGREEMENT:g} %")
    return {"max_abs_diff": diff, "allowed": allowed, "argmax_agreement": agreement}


def _detection_parity(source: str, runtime: str, ref: list[dict[str, Tensor]], got: list[dict[str, Tensor]],
                      report: dict[str, Any]) -> None:
    """Raise ``ParityError`` unless each image's detections match (``match_detections``); counts go to ``report``."""
    problems = [f"image {i}: {p}" for i, (r, g) in enumerate(zip(ref, got)) for p in match_detections(r, g)]
    report.update(detections=sum(len(g["scores"]) for g in got), reference_detections=sum(len(r["scores"])
                                                                                           for r in ref))
    if problems:
        raise ParityError(f"{source}: {runtime} detections differ from postprocess_detections:\n  "
                          + "\n  ".join(problems[:10]) + (f"\n  ... {len(problems) - 10} more" if len(problems) > 10
                                                          else ""))


@torch.no_grad()
def check_parity(path: str | Path, model: nn.Module, kind: str, images: Tensor, *, mode: str = "nms",
                 atol: float = 1e-4, rtol: float = 1e-4, postprocess: PostprocessSettings | None = None,
                 threads: int = 2) -> dict[str, Any]:
    """``check_outputs`` of the ONNX file ``path`` in ONNX Runtime (``threads`` threads)."""
    return check_outputs(ort_run(ort_session(path, threads)), model, kind, images, mode=mode, atol=atol, rtol=rtol, postprocess=postprocess,
                         source=str(path), runtime="ONNX Runtime")


@torch.no_grad()
def check_outputs(run: Callable[[np.ndarray], Mapping[str, np.ndarray]], model: nn.Module, kind: str, images: Tensor,
                  *, mode: str = "nms", atol: float = 1e-4, rtol: float = 1e-4,
                  postprocess: PostprocessSettings | None = None, source: str = "the exported model",
                  runtime: str = "the runtime") -> dict[str, Any]:
    """Run an exported model (``run(images) -> {output name: array}``, the ONNX export's names) and the PyTorch
    ``model`` (eval mode) on ``images`` and raise ``ParityError`` (naming ``source`` and ``runtime``) on a mismatch.

    Raw tensors (segmentation logits, detection logits, offsets, anchors) must agree within
    ``atol + rtol · max |reference|`` (max absolute difference; 1e-4 for outputs of unit scale), and segmentation
    masks (the logits' argmax) agree on at least ``MIN_MASK_AGREEMENT`` of the pixels. Detection must give the same
    detections as ``postprocess_detections`` on the PyTorch outputs with the same ``postprocess`` settings (ties
    handled by ``match_detections``): in ``"nms"`` mode those of the graph (``postprocess`` required there), in
    ``"raw"`` mode, when ``postprocess`` is given, those ``postprocess_detections`` finds in the exported raw outputs
    (what a runtime that decodes outside the graph shows). Returns the measured differences.
    """
    outputs = run(np.ascontiguousarray(images.numpy(), dtype=np.float32))
    model = model.eval()
    report: dict[str, Any] = {"images": list(images.shape)}
    if kind == "segmentation":
        return {**report, **_segmentation_parity(source, runtime, outputs["logits"], model(images)["out"], atol,
                                                 rtol)}
    if kind not in ("detection", "multitask"):
        raise ValueError(f"kind must be 'detection', 'segmentation' or 'multitask', got {kind!r}")
    raw = model(images)
    if kind == "multitask":  # the segmentation logits come with the detection outputs
        report["segmentation"] = _segmentation_parity(source, runtime, outputs["logits"], raw["out"], atol, rtol)
    size = tuple(images.shape[-2:])
    if mode == "raw":
        refs = (raw["cls_logits"], raw["bbox_regression"], model.anchors(size).expand(images.shape[0], -1, -1))
        checks = {name: _close(outputs[name], r, atol, rtol)
                  for name, r in zip(("cls_logits", "bbox_regression", "anchors"), refs)}
        report.update(max_abs_diff={k: v[0] for k, v in checks.items()}, allowed={k: v[1] for k, v in checks.items()})
        bad = {k: f"{v[0]:.3g} > {v[1]:.3g}" for k, v in checks.items() if not v[2]}
        if bad:
            raise ParityError(f"{source}: {runtime} outputs differ from PyTorch: {bad}")
        if postprocess is None:
            return report
    elif postprocess is None:
        raise ValueError("the parity check of an 'nms' detection export needs its post-processing settings")
    sizes = [size] * images.shape[0]
    ref = postprocess_detections(raw["cls_logits"], raw["bbox_regression"], model.anchors(size), BoxCoder(), size,
                                 sizes, postprocess)
    if mode == "raw":
        got = postprocess_detections(*(torch.from_numpy(np.ascontiguousarray(outputs[k]))
                                       for k in ("cls_logits", "bbox_regression")),
                                     torch.from_numpy(np.ascontiguousarray(outputs["anchors"][0])), BoxCoder(), size,
                                     sizes, postprocess)
    else:
        boxes, scores, labels, counts = (torch.from_numpy(outputs[k])
                                         for k in ("boxes", "scores", "labels", "num_detections"))
        got = [{"boxes": boxes[i, :n], "scores": scores[i, :n], "labels": labels[i, :n]}
               for i, n in enumerate(int(c) for c in counts)]
    _detection_parity(source, runtime, ref, got, report)
    return report
