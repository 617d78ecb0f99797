"""``tools/benchmark.py``'s latency table: each model's variants (eager and fused PyTorch, ONNX Runtime fp32 and int8)
timed round-robin at batch 1, against the model's compute floor, and where ONNX Runtime's fp32 time goes.

A model is a group: its input, the module (for params and MAdds) and ``{variant: runner}``, each runner a
zero-argument callable from ``perf.network``. The compute floor of a model is its MAdds divided by the multiply-add
rate of a large fp32 matrix product on the same threads (``timing.matmul_madd_rate``). Needs the ``deploy`` extra.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..data.synthetic import SHAPE_CLASSES, ensure_shapes
from ..deploy.fuse import fuse_for_inference
from ..deploy.onnx_export import DetectionExport, MultiTaskExport, SegmentationExport, export_onnx, ort_session
from ..deploy.quantize import detection_calibration, quantize_int8, segmentation_calibration
from ..models import build_model
from ..ops.postprocess import PostprocessSettings
from .complexity import count_madds, count_params
from .network import detection_runner, ort_runner, segmentation_runner, torchvision_peers
from .ort_profile import kernel_breakdown
from .timing import matmul_madd_rate, time_round_robin

__all__ = ["DETECTOR", "SEGMENTER", "MULTITASK", "Group", "model_groups", "multitask_groups", "peer_groups",
           "time_groups", "kernel_breakdowns", "ratios", "format_latency_table", "format_kernel_breakdown"]

DETECTOR, SEGMENTER = "ssdlite320_mobilenet_v2", "deeplabv3_mobilenet_v2 (lite)"
MULTITASK = "ssdlite320_deeplabv3_mobilenet_v2"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
Group = tuple[Tensor, nn.Module, dict[str, Callable[[], Any]]]  # input, module, {variant: runner}


def _ort_variants(name: str, wrapper: nn.Module, size: tuple[int, int], calib, tmp: Path) -> dict[str, Path]:
    fp32 = export_onnx(wrapper, tmp / f"{name}.onnx", size, {})
    int8 = quantize_int8(fp32, tmp / f"{name}_int8.onnx", calib)
    return {"onnxruntime fp32": fp32, "onnxruntime int8": int8}


def _detection_variants(model: nn.Module, x: Tensor, postprocess: PostprocessSettings, onnx: dict[str, Path],
                        threads: int) -> dict[str, Callable[[], Any]]:
    return {"eager": detection_runner(model, x, postprocess),
            "fused": detection_runner(fuse_for_inference(model), x, postprocess, fast_nms=True),
            **{k: ort_runner(ort_session(p, threads), x) for k, p in onnx.items()}}


def _segmentation_variants(model: nn.Module, x: Tensor, onnx: dict[str, Path],
                           threads: int) -> dict[str, Callable[[], Any]]:
    return {"eager": segmentation_runner(model, x), "fused": segmentation_runner(fuse_for_inference(model), x),
            **{k: ort_runner(ort_session(p, threads), x) for k, p in onnx.items()}}


def model_groups(postprocess: PostprocessSettings, det_size: int, seg_size: int, calib_images: int, threads: int,
                 tmp: Path) -> tuple[dict[str, Group], dict[str, tuple[Path, Tensor]]]:
    """SSDLite at ``det_size`` and DeepLab (lite) at ``seg_size``, random α = 1 weights, in all four variants (int8
    calibrated on ``calib_images`` images of the shapes dataset; ONNX files under ``tmp``); and, per model, its fp32
    ONNX file and input for ``kernel_breakdowns``."""
    shapes = ensure_shapes()
    det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
    sd, ss = (det_size,) * 2, (seg_size,) * 2
    xd, xs = torch.randn(1, 3, *sd), torch.randn(1, 3, *ss)
    det_calib = detection_calibration(shapes / "coco", "train2017", det_size, MEAN, STD, calib_images)
    seg_calib = segmentation_calibration(shapes / "VOC2012", "train", MEAN, STD, calib_images, 1 + len(SHAPE_CLASSES))
    det_ort = _ort_variants("det", DetectionExport(det, sd, "nms", postprocess), sd, det_calib, tmp)
    seg_ort = _ort_variants("seg", SegmentationExport(seg), ss, seg_calib, tmp)
    groups = {DETECTOR: (xd, det, _detection_variants(det, xd, postprocess, det_ort, threads)),
              SEGMENTER: (xs, seg, _segmentation_variants(seg, xs, seg_ort, threads))}
    fp32 = {DETECTOR: (det_ort["onnxruntime fp32"], xd), SEGMENTER: (seg_ort["onnxruntime fp32"], xs)}
    return groups, fp32


def multitask_groups(pair: nn.Module, det: nn.Module, seg: nn.Module, size: int, tag: str,
                     postprocess: PostprocessSettings, threads: int, tmp: Path,
                     with_detector: bool = False) -> dict[str, Group]:
    """The SSDLite + DeepLab ``pair`` (one backbone pass) and the DeepLab ``seg`` it replaces at the pair's input
    ``size``, eager, fused and ONNX Runtime fp32; with ``with_detector`` also the SSDLite ``det`` there (the default
    detector row is α = 1 at its own size). ``tag`` ends every group's name."""
    x = torch.randn(1, 3, size, size)
    s2 = (size, size)
    pair_onnx = export_onnx(MultiTaskExport(pair, s2, "nms", postprocess), tmp / "pair.onnx", s2, {})
    seg_onnx = export_onnx(SegmentationExport(seg), tmp / "seg_pair_size.onnx", s2, {})
    groups = {
        f"{MULTITASK} ({pair.sharing}){tag}": (x, pair, _detection_variants(
            pair, x, postprocess, {"onnxruntime fp32": pair_onnx}, threads)),
        f"{SEGMENTER}{tag}": (x, seg, _segmentation_variants(seg, x, {"onnxruntime fp32": seg_onnx}, threads))}
    if with_detector:
        det_onnx = export_onnx(DetectionExport(det, s2, "nms", postprocess), tmp / "det_pair_size.onnx", s2, {})
        groups[f"{DETECTOR}{tag}"] = (x, det, _detection_variants(
            det, x, postprocess, {"onnxruntime fp32": det_onnx}, threads))
    return groups


def peer_groups(postprocess: PostprocessSettings, det_input: Tensor, seg_input: Tensor) -> dict[str, Group]:
    """torchvision's MobileNetV3 SSDLite, LR-ASPP and DeepLabv3 (``network.torchvision_peers``), eager."""
    peers = torchvision_peers(postprocess)
    ssd = peers["ssdlite320_mobilenet_v3_large"]
    groups: dict[str, Group] = {
        "ssdlite320_mobilenet_v3_large (torchvision)": (det_input, ssd, {"eager": lambda: ssd(list(det_input))})}
    for name in ("lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"):
        groups[f"{name} (torchvision)"] = (seg_input, peers[name],
                                            {"eager": segmentation_runner(peers[name], seg_input)})
    return groups


def time_groups(groups: dict[str, Group], runs: int, warmup: int, block: int,
                matmul_size: int) -> tuple[list[dict[str, Any]], float]:
    """Every variant timed round-robin (``timing.time_round_robin``: ``runs`` rounds of ``block`` calls, the first
    untimed, after ``warmup`` rounds) under inference mode; one row per model and variant (params, MAdds, median /
    p10 / p90 ms, floor ms, × floor) and the fp32 multiply-add rate (per second) the floors are taken at."""
    rate = matmul_madd_rate(matmul_size)
    with torch.inference_mode():
        timing = time_round_robin({f"{g}|{v}": fn for g, (_, _, variants) in groups.items()
                                   for v, fn in variants.items()}, runs, warmup, block)
    rate = max(rate, matmul_madd_rate(matmul_size))  # before and after: the better estimate of the peak
    rows = []
    for g, (x, model, variants) in groups.items():
        madds = count_madds(model, tuple(x.shape[-2:]))
        for v in variants:
            t = timing[f"{g}|{v}"]
            floor_ms = madds / rate * 1e3
            rows.append({"model": g, "variant": v, "input": int(x.shape[-1]), "params_m": count_params(model) / 1e6,
                         "madds_b": madds / 1e9, "median_ms": t["median_ms"], "p10_ms": t["p10_ms"],
                         "p90_ms": t["p90_ms"], "floor_ms": floor_ms, "x_floor": t["median_ms"] / floor_ms})
    return rows, rate


def kernel_breakdowns(fp32: dict[str, tuple[Path, Tensor]], rate: float, runs: int, warmup: int,
                      threads: int) -> dict[str, list[dict[str, Any]]]:
    """Per model, ONNX Runtime's profiled fp32 time by part (``ort_profile.kernel_breakdown``); each convolution
    kind also with its floor and its multiply-add rate as a fraction of the matrix product's ``rate``."""
    breakdown = {}
    for name, (path, x) in fp32.items():
        breakdown[name] = kernel_breakdown(path, {"images": x.numpy()}, runs=runs, warmup=warmup, threads=threads)
        for r in breakdown[name]:
            if r["madds"] is not None:
                r.update(floor_ms=r["madds"] / rate * 1e3, of_matmul_rate=r["gmadds_per_s"] * 1e9 / rate)
    return breakdown


def _multitask_ratios(rows: list[dict]) -> dict[str, float]:
    """The pair against SSDLite and DeepLab run one after the other at the same size, per variant, and MAdds."""
    pairs = [r for r in rows if r["model"].startswith(MULTITASK)]
    out: dict[str, float] = {}
    for r in pairs:
        tag = r["model"].split(")", 1)[1]
        det_name = f"{DETECTOR}{tag}" if any(q["model"] == f"{DETECTOR}{tag}" for q in rows) else DETECTOR
        det = {q["variant"]: q for q in rows if q["model"] == det_name}
        seg = {q["variant"]: q for q in rows if q["model"] == f"{SEGMENTER}{tag}"}
        v = r["variant"]
        if v in det and v in seg:
            out[f"multitask {v} / (ssdlite + deeplab {v}, one after the other){tag}"] = r["median_ms"] / (
                det[v]["median_ms"] + seg[v]["median_ms"])
        if v == "fused":
            out[f"multitask MAdds / ssdlite MAdds{tag}"] = r["madds_b"] / det[v]["madds_b"]
    return out


def ratios(rows: list[dict]) -> dict[str, float]:
    """The table's headline ratios: ONNX Runtime fp32 against the floor, int8 against fp32, ours fused against the
    torchvision peers that were timed, and the multi-task pair against the two models it replaces."""
    ms = {(r["model"], r["variant"]): r["median_ms"] for r in rows}
    x = {(r["model"], r["variant"]): r["x_floor"] for r in rows}
    d, s = DETECTOR, SEGMENTER
    out = {"ssdlite onnxruntime fp32 / floor": x[(d, "onnxruntime fp32")],
           "deeplab onnxruntime fp32 / floor": x[(s, "onnxruntime fp32")],
           "ssdlite int8 / fp32 (onnxruntime)": ms[(d, "onnxruntime int8")] / ms[(d, "onnxruntime fp32")],
           "deeplab int8 / fp32 (onnxruntime)": ms[(s, "onnxruntime int8")] / ms[(s, "onnxruntime fp32")]}
    peers = {"ssdlite fused / torchvision ssdlite320_mobilenet_v3_large": (d, "ssdlite320_mobilenet_v3_large"),
             "deeplab fused / torchvision lraspp_mobilenet_v3_large": (s, "lraspp_mobilenet_v3_large"),
             "deeplab fused / torchvision deeplabv3_mobilenet_v3_large": (s, "deeplabv3_mobilenet_v3_large")}
    for key, (ours, peer) in peers.items():
        if (f"{peer} (torchvision)", "eager") in ms:
            out[key] = ms[(ours, "fused")] / ms[(f"{peer} (torchvision)", "eager")]
    return {**out, **_multitask_ratios(rows)}


def format_latency_table(rows: list[dict[str, Any]]) -> str:
    """``time_groups``'s rows as a Markdown table."""
    lines = ["| model | variant | input | params (M) | MAdds (B) | median ms | floor ms | × floor |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['variant']} | {r['input']}² | {r['params_m']:.2f} | {r['madds_b']:.2f} | "
              f"{r['median_ms']:.1f} | {r['floor_ms']:.1f} | {r['x_floor']:.2f} |" for r in rows]
    return "\n".join(lines)


def format_kernel_breakdown(breakdown: dict[str, list[dict[str, Any]]]) -> str:
    """``kernel_breakdowns`` as a Markdown table: each convolution kind, the other operators above 0.1 ms, the rest
    in one row, and the totals."""
    lines = ["where ONNX Runtime fp32 spends its time (profiler kernel times per run; MAdds as executed, channels "
             "padded to ONNX Runtime's SIMD blocks):",
             "| model | part | nodes | ms | MAdds (B) | G MAdds/s | of matmul rate | floor ms |",
             "|---|---|---|---|---|---|---|---|"]
    for name, parts in breakdown.items():
        small = [r for r in parts if r["madds"] is None and r["ms"] < 0.1]
        for r in parts:
            if r in small:
                continue
            conv = r["madds"] is not None
            lines.append(f"| {name} | {r['part']} | {r['nodes']} | {r['ms']:.2f} | "
                         + (f"{r['madds'] / 1e9:.3f} | {r['gmadds_per_s']:.0f} | {r['of_matmul_rate']:.2f} | "
                            f"{r['floor_ms']:.2f} |" if conv else "| | | |"))
        if small:
            lines.append(f"| {name} | {len(small)} other op types | {sum(r['nodes'] for r in small)} | "
                         f"{sum(r['ms'] for r in small):.2f} | | | | |")
        lines.append(f"| {name} | **all kernels** | {sum(r['nodes'] for r in parts)} | "
                     f"{sum(r['ms'] for r in parts):.2f} | {sum(r['madds'] or 0 for r in parts) / 1e9:.3f} | | | "
                     f"{sum(r.get('floor_ms', 0) for r in parts):.2f} |")
    return "\n".join(lines)
