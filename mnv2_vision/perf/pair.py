"""The multi-task pair against the two single-task networks it replaces: parameters, MAdds and fused batch-1 latency
(``tools/compare_multitask.py``'s cost rows)."""
from __future__ import annotations

from typing import Any, Sequence

import torch

from ..deploy.fuse import fuse_for_inference
from ..models import build_model
from .complexity import count_madds, count_params
from .timing import time_round_robin

__all__ = ["pair_cost_rows"]


def pair_cost_rows(sharings: Sequence[str], threads: int, runs: int, size: int = 320) -> dict[str, dict[str, Any]]:
    """Params (M), MAdds (B) and fused batch-1 network latency (ms, median) at ``size``² of SSDLite, DeepLab (lite,
    OS 16) and the pair with each stride-sharing option, α = 1, random weights, timed round-robin on ``threads``
    threads (``runs`` rounds). Rows ``"ssdlite"``, ``"deeplab"`` and ``"pair <sharing>"``.

    The networks alone: detection post-processing is the same work after SSDLite and after the pair (and with random
    weights at the mAP threshold 0.001 its NMS would outweigh both networks, hiding what one shared pass saves;
    ``tools/benchmark.py --multitask`` times the end-to-end paths)."""
    torch.set_num_threads(threads)
    x = torch.randn(1, 3, size, size)
    models = {"ssdlite": build_model("ssdlite320_mobilenet_v2"), "deeplab": build_model("deeplabv3_mobilenet_v2"),
              **{f"pair {s}": build_model("ssdlite320_deeplabv3_mobilenet_v2", sharing=s) for s in sharings}}
    runners = {name: (lambda fused=fuse_for_inference(model.eval()): fused(x)) for name, model in models.items()}
    timing = time_round_robin(runners, runs=runs, warmup=2, block=6)
    return {name: {"params_m": count_params(m) / 1e6, "madds_b": count_madds(m, (size, size)) / 1e9,
                   "fused_ms": timing[name]["median_ms"]} for name, m in models.items()}
