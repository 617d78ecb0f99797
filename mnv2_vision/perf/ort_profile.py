"""Where ONNX Runtime's time goes: its profiler's per-node kernel times, with the convolutions grouped by kind
(1×1, depthwise, other) next to their multiply-adds and rate, and every other operator type by itself.

This explains an ONNX Runtime latency against the compute floor (``perf.timing.matmul_madd_rate``): a convolution
kind's rate divided by the matrix-product rate is the fraction of the machine's fp32 peak that ONNX Runtime's
kernels reach on it. Shapes come from the profiler, i.e. as executed: where ONNX Runtime runs a convolution in its
blocked NCHWc layout, channel counts are padded to the SIMD block (SSDLite's 546 class outputs per cell run as 560),
so the multiply-adds counted here are what the kernels actually did, a few per cent above the model's.
"""
from __future__ import annotations

import json
import math
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..deploy.onnx_export import ort_session

__all__ = ["conv_kind", "kernel_breakdown", "CONV_KINDS"]

CONV_KINDS = ("conv 1×1", "conv depthwise", "conv other")
_CONV_OPS = {"Conv", "FusedConv"}  # FusedConv: Conv + activation fused on the plain NCHW path


def conv_kind(weight_shape: list[int]) -> str:
    """The kind of a convolution from its weight shape ``(C_out, C_in / groups, kh, kw)``: ``"conv 1×1"``,
    ``"conv depthwise"`` (one input channel per output channel, a larger kernel) or ``"conv other"``."""
    _, per_group, *kernel = weight_shape
    if all(k == 1 for k in kernel):
        return CONV_KINDS[0]
    return CONV_KINDS[1] if per_group == 1 else CONV_KINDS[2]


def _shapes(entry: list[dict[str, list[int]]]) -> list[list[int]]:
    return [next(iter(d.values())) for d in entry]


def kernel_breakdown(path: str | Path, feeds: dict[str, np.ndarray], runs: int = 30, warmup: int = 5,
                     threads: int = 2) -> list[dict[str, Any]]:
    """Mean per-run kernel time of each part of the model at ``path`` on ``feeds``, from ONNX Runtime's profiler.

    The session is ``onnx_export.ort_session``'s (``threads`` intra-op threads, full optimisation) with profiling
    on; it runs ``warmup`` untimed and ``runs`` profiled times. Returns rows ``{"part", "nodes", "ms", "madds",
    "gmadds_per_s"}``, convolution kinds first (``madds`` per run, ``gmadds_per_s`` = madds / kernel time; ``None``
    for other operators), then the other operator types by decreasing time. Profiling adds a little overhead per
    node, so the kernel times sum to somewhat more than an unprofiled run's compute and omit the time between
    nodes.
    """
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    with tempfile.TemporaryDirectory() as tmp:
        session = ort_session(path, threads, profile_prefix=Path(tmp) / "ort")
        for _ in range(warmup + runs):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    # Keep only the node events inside the last `runs` runs (the warm-up's first run also allocates).
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[-runs:]
    start = windows[0][0]
    time_us: dict[str, float] = defaultdict(float)
    madds: dict[str, float] = defaultdict(float)
    nodes: dict[str, set] = defaultdict(set)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < start:
            continue
        op = e["args"]["op_name"]
        part = op
        if op in _CONV_OPS:
            weight = _shapes(e["args"]["input_type_shape"])[1]
            out = _shapes(e["args"]["output_type_shape"])[0]
            part = conv_kind(weight)
            # N · H_out · W_out · C_out · (C_in / groups) · kh · kw
            madds[part] += out[0] * math.prod(out[2:]) * math.prod(weight)
        time_us[part] += e["dur"]
        nodes[part].add(e["name"])
    rows = []
    for part in [k for k in CONV_KINDS if k in time_us] + sorted(
            (k for k in time_us if k not in CONV_KINDS), key=lambda k: -time_us[k]):
        ms = time_us[part] / runs / 1e3
        m = madds[part] / runs if part in CONV_KINDS else None
        rows.append({"part": part, "nodes": len(nodes[part]), "ms": ms, "madds": m,
                     "gmadds_per_s": m / ms / 1e6 if m is not None and ms > 0 else None})
    return rows
