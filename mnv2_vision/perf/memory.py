"""Peak tensor memory, from PyTorch's allocator events: the memory-efficient mode's measurement
(``deploy/memory.py``) and ``tools/benchmark.py``'s memory table."""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

from ..deploy.fuse import fold_batchnorm
from ..deploy.memory import memory_efficient
from ..models import build_model

__all__ = ["peak_memory_bytes", "memory_rows", "memory_table", "format_memory_table"]


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak CPU tensor memory (bytes) allocated while ``fn()`` runs, above the level when it starts.

    Read from the allocator events of ``torch.profiler`` (``profile_memory=True``): every allocation and free of
    tensor storage, replayed in order. Tensors alive before the call (model weights, the input) are not counted;
    the output is, since it is allocated inside.
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())
    level = peak = 0
    for e in events:
        level += e.nbytes()
        peak = max(peak, level)
    return peak


@torch.inference_mode()
def memory_rows(model: nn.Module, x: Tensor, chunks: tuple[int, ...] = (1, 2, 6)) -> list[dict[str, Any]]:
    """Peak tensor memory of one forward of ``model`` with its inverted residuals in k expansion chunks, and the
    largest output difference from k = 1 (absolute, and relative to the largest output magnitude)."""
    ref = None
    rows = []
    for k in chunks:
        m = memory_efficient(model, k)
        out = m(x)
        peak = peak_memory_bytes(lambda: m(x))
        if ref is None:
            ref = out
        diff = max(float((out[key] - ref[key]).abs().max()) for key in ref)
        scale = max(float(ref[key].abs().max()) for key in ref)
        rows.append({"chunks": k, "peak_mib": peak / 2 ** 20, "max_abs_diff": diff, "max_rel_diff": diff / scale})
    base = rows[0]["peak_mib"]
    for r in rows:
        r["reduction"] = 1.0 - r["peak_mib"] / base
    return rows


def memory_table(det_size: int, seg_size: int) -> dict[str, list[dict[str, Any]]]:
    """``memory_rows`` of SSDLite at ``det_size`` and DeepLab (lite) at ``seg_size``, random weights, DeepLab also
    with its BatchNorm folded into the convolutions."""
    det, seg = build_model("ssdlite320_mobilenet_v2").eval(), build_model("deeplabv3_mobilenet_v2").eval()
    xd, xs = torch.randn(1, 3, det_size, det_size), torch.randn(1, 3, seg_size, seg_size)
    folded = copy.deepcopy(seg).eval()
    fold_batchnorm(folded)
    return {
        f"ssdlite320_mobilenet_v2 @{det_size}": memory_rows(det, xd),
        f"deeplabv3_mobilenet_v2 @{seg_size}": memory_rows(seg, xs),
        f"deeplabv3_mobilenet_v2 @{seg_size}, BN folded": memory_rows(folded, xs),
    }


def format_memory_table(table: dict[str, list[dict[str, Any]]]) -> str:
    """``memory_table`` as printed by ``tools/benchmark.py``."""
    return "peak tensor memory of one forward, expansion in k chunks (torch.profiler allocator events):\n" + "\n".join(
        f"  {name}: " + ", ".join(f"k={r['chunks']} {r['peak_mib']:.1f} MiB ({-100 * r['reduction']:+.0f} %, "
                                  f"max rel. diff {r['max_rel_diff']:.1e})" for r in rows)
        for name, rows in table.items())
