"""``tools/benchmark.py --runtimes``: one table per model (SSDLite, DeepLab-lite, the multi-task pair) with the
PyTorch CPU graph and every export format (``perf.formats.FORMATS``) in fp32 and int8, side by side in one run.

Each network is timed on its raw outputs (detection: class logits and box regression, no NMS; segmentation: the
logits at the head's output stride, before the bilinear upsampling), batch 1, random weights; the post-processing
that turns those outputs into results (``postprocess_detections`` with the benchmark's settings; the logits'
upsampling to the input size and the mask's argmax) is timed on each row's own outputs and shown in its own column.
So the network columns hold the work the compute floor counts (a bilinear resize has no multiply-adds), for
detection and segmentation alike; the shipped segmentation files upsample inside the graph, which adds the
post-processing column's upsampling to their time. All candidates of all tables run round-robin in blocks (``timing.time_round_robin``), so
load from elsewhere hits them alike: compare ratios within one run. Each row also says how far its outputs are from
the eager model's (``max |Δ| / max |ref|`` over the raw outputs): fp32 rows at float rounding, int8 rows
quantisation error.

Columns: median ms, × the fp32 compute floor (the model's MAdds at the fp32 multiply-add rate of a large matrix
product on the same threads, ``timing.matmul_madd_rate``), int8 / fp32 of the same runtime. Targets (issue #25):
an fp32 runtime ≤ 1.25× its floor (SSDLite, DeepLab), the fastest int8 ≤ 0.6× (SSDLite) / ≤ 0.5× (DeepLab) the
fastest fp32, and the PyTorch DeepLab-lite graph ≤ 0.8× torchvision's ``lraspp_mobilenet_v3_large`` run eager in
channels-last under inference mode (random weights), a row of the DeepLab table.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.synthetic import SHAPE_CLASSES, ensure_shapes
from ..deploy.fuse import freeze_for_cpu
from ..deploy.onnx_export import DetectionExport, MultiTaskExport, SegmentationExport
from ..deploy.quantize import detection_calibration, segmentation_calibration
from ..models import build_model
from ..ops.boxes import BoxCoder
from ..ops.postprocess import PostprocessSettings, postprocess_detections
from .complexity import count_madds
from .formats import FORMATS, Run, available
from .timing import matmul_madd_rate, time_round_robin

__all__ = ["MODELS", "PYTORCH", "PEER", "TARGETS", "runtime_tables", "format_runtime_tables"]

MODELS = ("ssdlite", "deeplab", "pair")
NAMES = {"ssdlite": "ssdlite320_mobilenet_v2", "deeplab": "deeplabv3_mobilenet_v2 (lite)",
         "pair": "ssdlite320_deeplabv3_mobilenet_v2"}
PYTORCH = "pytorch cpu graph"
PEER = "torchvision lraspp_mobilenet_v3_large (channels-last eager)"
# model → (fp32 × floor at most, fastest int8 / fastest fp32 at most): issue #25's speed acceptance.
TARGETS = {"ssdlite": (1.25, 0.6), "deeplab": (1.25, 0.5)}
PEER_TARGET = 0.8  # PyTorch DeepLab-lite graph / the LR-ASPP peer
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _spread_outputs(model: nn.Module) -> None:
    """Re-initialise the prediction convolutions (SSDLite's class and box heads, the mask classifier) with PyTorch's
    default init, in place. Freshly built they give outputs of ~1e-7 (σ 0.03 truncated normals in series), which an
    int8 graph quantises to zero (LiteRT measured: every raw output 0): with outputs of order one the ``rel_diff``
    column shows the quantisation error, and the timing is the same (no op depends on the values but NMS, whose
    random-score worst case stays)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and ("_heads." in name or name.endswith("classifier")):
            m.reset_parameters()


def _wrapper(key: str, model: nn.Module, size: tuple[int, int]) -> nn.Module:
    if key == "ssdlite":
        return DetectionExport(model, size, "raw")
    if key == "deeplab":
        return SegmentationExport(model, upsample=False)
    return MultiTaskExport(model, size, "raw", upsample=False)


class _RawNetwork(nn.Module):
    """The model's raw outputs: segmentation logits at the head's stride (``upsample=False``)."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model, self.segments = model, key != "ssdlite"

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.model(x, upsample=False) if self.segments else self.model(x)


def _torch_run(graph: Callable[[Tensor], dict[str, Tensor]], x: Tensor) -> Callable[[], dict[str, Tensor]]:
    """A model's ``{"cls_logits", "bbox_regression", "out"}`` under the export's names (``out`` → ``logits``)."""
    return lambda: {("logits" if k == "out" else k): v for k, v in graph(x).items()}


def _postprocess(key: str, model: nn.Module, size: tuple[int, int],
                 pp: PostprocessSettings) -> Callable[[dict[str, Any]], Any]:
    """What the predictor does with the raw outputs (at the network size): per-class NMS of the decoded boxes,
    and/or the logits' bilinear upsampling to the input size (as the model's own) and the mask's argmax."""
    anchors, coder = (model.anchors(size), BoxCoder()) if key != "deeplab" else (None, None)

    def post(out: dict[str, Any]) -> Any:
        res = []
        if anchors is not None:
            res.append(postprocess_detections(torch.as_tensor(out["cls_logits"]),
                                              torch.as_tensor(out["bbox_regression"]), anchors, coder, size, [size],
                                              pp))
        if "logits" in out:
            logits = F.interpolate(torch.as_tensor(out["logits"]), size=size, mode="bilinear", align_corners=False)
            res.append(logits.argmax(1))
        return res
    return post


def _calibration(key: str, size: tuple[int, int], n: int) -> list[np.ndarray]:
    """``n`` images of the shapes dataset preprocessed as the model's evaluation input, at the graph's fixed size."""
    shapes = ensure_shapes()
    if key != "deeplab":
        return detection_calibration(shapes / "coco", "train2017", size[0], MEAN, STD, n)
    images = segmentation_calibration(shapes / "VOC2012", "train", MEAN, STD, n, 1 + len(SHAPE_CLASSES))
    return [F.interpolate(torch.from_numpy(a), size=size, mode="bilinear", align_corners=False).numpy()
            for a in images]


def _rel_diff(out: dict[str, Any], ref: dict[str, Tensor]) -> float:
    """Largest ``max |out − ref| / max |ref|`` over the raw outputs both have."""
    diffs = [float((torch.as_tensor(np.asarray(out[k])) - ref[k]).abs().max() / ref[k].abs().max().clamp_min(1e-30))
             for k in ref if k in out]
    return max(diffs)


def _candidates(key: str, model: nn.Module, x: Tensor, formats: Sequence[str], threads: int, calib_images: int,
                tmp: Path) -> tuple[dict[str, tuple[str, Callable[[], Any]]], dict[str, float]]:
    """``{row name: (precision, network call on x)}`` of one model: its PyTorch CPU graph and each format's fp32 and
    int8 file (exported under ``tmp``), and each file's export seconds."""
    size = (int(x.shape[-2]), int(x.shape[-1]))
    rows: dict[str, tuple[str, Callable[[], Any]]] = {
        PYTORCH: ("fp32", _torch_run(freeze_for_cpu(_RawNetwork(model, key), x),
                                     x.contiguous(memory_format=torch.channels_last)))}
    export_s: dict[str, float] = {}
    images = np.ascontiguousarray(x.numpy())
    calibration = _calibration(key, size, calib_images)
    wrapper = _wrapper(key, model, size)
    for name in formats:
        fmt = FORMATS[name]
        for precision, calib in (("fp32", None), ("int8", calibration)):
            t0 = time.perf_counter()
            path = fmt.export(wrapper, tmp / f"{key}_{name}_{precision}", size, calib)
            export_s[f"{name} {precision}"] = time.perf_counter() - t0
            run: Run = fmt.load(path, threads)
            rows[f"{name} {precision}"] = (precision, lambda run=run: run(images))
    return rows, export_s


def _peer(size: tuple[int, int], num_classes: int) -> tuple[nn.Module, Callable[[], Any]]:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    peer = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes).eval()
    peer = peer.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, *size).contiguous(memory_format=torch.channels_last)
    # its raw outputs as ours: the classifier's logits at stride 8, before torchvision's upsampling to the input size
    return peer, lambda: {"logits": peer.classifier(peer.backbone(x))}


def runtime_tables(models: Sequence[str], det_size: int, seg_size: int, formats: Sequence[str],
                   postprocess: PostprocessSettings, threads: int, calib_images: int, runs: int, warmup: int,
                   block: int, matmul_size: int, tmp: Path, peer: bool = True) -> dict[str, Any]:
    """The tables of ``models`` (keys of ``NAMES``; the pair at ``det_size``), random α = 1 weights, every format of
    ``formats`` that is installed (the others listed under ``"skipped"``), timed in one round-robin run.

    Returns ``{"tables": {model: {"name", "input", "madds_b", "floor_ms", "rows": [row...], "export_s"}},
    "matmul_gmadds_per_s", "targets": {...}, "skipped": {format: line}}``; a row holds ``runtime``, ``precision``,
    ``median_ms``, ``p10_ms``, ``p90_ms``, ``x_floor``, ``int8_over_fp32`` (int8 rows), ``post_ms`` and
    ``rel_diff``.
    """
    unknown = [m for m in models if m not in NAMES]
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose from {list(NAMES)}")
    usable, skipped = available(formats)
    torch.manual_seed(0)
    tables: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], Any]] = {}
    for key in models:
        size = (seg_size,) * 2 if key == "deeplab" else (det_size,) * 2
        model = build_model({"ssdlite": "ssdlite320_mobilenet_v2", "deeplab": "deeplabv3_mobilenet_v2",
                             "pair": "ssdlite320_deeplabv3_mobilenet_v2"}[key]).eval()
        _spread_outputs(model)
        x = torch.randn(1, 3, *size)
        rows, export_s = _candidates(key, model, x, usable, threads, calib_images, tmp)
        ours = count_madds(model, size)
        madds = {r: ours for r in rows}
        if key == "deeplab" and peer:
            peer_model, peer_run = _peer(size, model.num_classes)
            rows[PEER] = ("fp32", peer_run)
            madds[PEER] = count_madds(peer_model, size)
        with torch.no_grad():
            ref = _torch_run(_RawNetwork(model, key), x)()  # the eager model: every row's outputs are compared with it
        post = _postprocess(key, model, size, postprocess)
        table = tables[key] = {"name": NAMES[key], "input": list(size), "madds_b": ours / 1e9,
                               "export_s": export_s, "rows": []}
        for row, (precision, net) in rows.items():
            with torch.inference_mode():
                out = net()
            calls[f"{key}|{row}"] = net
            calls[f"{key}|{row}|post"] = lambda post=post, out=out: post(out)
            table["rows"].append({"runtime": row, "precision": precision, "madds_b": madds[row] / 1e9,
                                  "rel_diff": None if row == PEER else _rel_diff(out, ref)})
    rate = matmul_madd_rate(matmul_size)
    with torch.inference_mode():
        timing = time_round_robin(calls, runs, warmup, block)
    rate = max(rate, matmul_madd_rate(matmul_size))  # before and after: the better estimate of the peak
    for key, table in tables.items():
        table["floor_ms"] = table["madds_b"] * 1e9 / rate * 1e3
        fp32_ms = {}
        for r in table["rows"]:
            t = timing[f"{key}|{r['runtime']}"]
            r.update(median_ms=t["median_ms"], p10_ms=t["p10_ms"], p90_ms=t["p90_ms"],
                     post_ms=timing[f"{key}|{r['runtime']}|post"]["median_ms"],
                     x_floor=t["median_ms"] / (r["madds_b"] * 1e9 / rate * 1e3))
            if r["precision"] == "fp32":
                fp32_ms[r["runtime"].rsplit(" ", 1)[0]] = t["median_ms"]
        for r in table["rows"]:
            base = r["runtime"].rsplit(" ", 1)[0]
            r["int8_over_fp32"] = r["median_ms"] / fp32_ms[base] if r["precision"] == "int8" else None
    return {"tables": tables, "matmul_gmadds_per_s": rate / 1e9, "targets": _targets(tables), "skipped": skipped,
            "formats": usable}


def _targets(tables: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each target's measured value, limit and whether it holds (``TARGETS``, ``PEER_TARGET``)."""
    out: dict[str, dict[str, Any]] = {}
    for key, (floor_max, int8_max) in TARGETS.items():
        if key not in tables:
            continue
        ours = [r for r in tables[key]["rows"] if r["runtime"] != PEER]
        fp32 = min((r for r in ours if r["precision"] == "fp32"), key=lambda r: r["median_ms"])
        best = min((r for r in ours if r["precision"] == "fp32"), key=lambda r: r["x_floor"])
        out[f"{key} fp32 × floor"] = {"value": best["x_floor"], "limit": floor_max, "row": best["runtime"]}
        int8 = [r for r in ours if r["precision"] == "int8"]
        if int8:
            fast = min(int8, key=lambda r: r["median_ms"])
            out[f"{key} int8 / fastest fp32"] = {"value": fast["median_ms"] / fp32["median_ms"], "limit": int8_max,
                                                 "row": f"{fast['runtime']} / {fp32['runtime']}"}
    if "deeplab" in tables:
        rows = {r["runtime"]: r for r in tables["deeplab"]["rows"]}
        if PEER in rows:
            out["deeplab pytorch cpu graph / lraspp"] = {
                "value": rows[PYTORCH]["median_ms"] / rows[PEER]["median_ms"], "limit": PEER_TARGET,
                "row": f"{PYTORCH} / {PEER}"}
    for t in out.values():
        t["holds"] = bool(t["value"] <= t["limit"])
    return out


def format_runtime_tables(result: dict[str, Any]) -> str:
    """``runtime_tables``'s result as Markdown: one table per model, then the targets."""
    lines = []
    for table in result["tables"].values():
        h, w = table["input"]
        lines += [f"\n{table['name']} {h}×{w}, batch 1, raw outputs ({table['madds_b']:.2f} B MAdds, fp32 floor "
                  f"{table['floor_ms']:.2f} ms at {result['matmul_gmadds_per_s']:.1f} G MAdds/s):",
                  "| runtime | ms (median) | p10–p90 | × floor | int8 / fp32 | post-processing ms | max Δ / max ref |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in table["rows"]:
            ratio = f"{r['int8_over_fp32']:.2f}" if r["int8_over_fp32"] is not None else ""
            diff = f"{r['rel_diff']:.1e}" if r["rel_diff"] is not None else ""
            lines.append(f"| {r['runtime']} | {r['median_ms']:.2f} | {r['p10_ms']:.1f}–{r['p90_ms']:.1f} | "
                         f"{r['x_floor']:.2f} | {ratio} | {r['post_ms']:.2f} | {diff} |")
    if result["targets"]:
        lines.append("\ntargets:")
        lines += [f"  {k}: {t['value']:.2f} (≤ {t['limit']}: {'holds' if t['holds'] else 'MISSED'}; {t['row']})"
                  for k, t in result["targets"].items()]
    lines += [f"skipped {line}" for line in result["skipped"].values()]
    return "\n".join(lines)
