"""Peak tensor memory of a call, from PyTorch's allocator events (the memory-efficient mode's measurement)."""
from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_memory_bytes"]


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
