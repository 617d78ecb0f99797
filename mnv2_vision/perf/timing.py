"""Latency measurement: warm-up, then the median of N timed runs; several candidates are timed round-robin.

Round-robin (A, B, C, A, B, C, ...) rather than all of A then all of B: on a shared machine a burst of load then
lands on every candidate alike, so the ratios between them stay meaningful even when the absolute numbers move.

Runtimes keep their worker threads spinning for a while after a call (ONNX Runtime's intra-op pool, OpenMP), so
the first call after switching candidates shares the cores with the previous candidate's still-spinning threads
(measured: ONNX Runtime SSDLite 20 ms interleaved call by call, 9 ms alone). ``block`` > 1 runs each candidate
``block`` times in a row per round and drops the first of them, so every timed call starts with the cores to itself.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["Timing", "time_round_robin", "matmul_madd_rate"]


class Timing(dict):
    """``{"median_ms", "p10_ms", "p90_ms", "runs", "samples_ms"}`` of one candidate (``samples_ms``: every timed
    call, in order, for pooling with samples from elsewhere)."""


def _stats(samples: list[float]) -> Timing:
    s = sorted(samples)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731
    return Timing(median_ms=statistics.median(s) * 1e3, p10_ms=q(0.1) * 1e3, p90_ms=q(0.9) * 1e3, runs=len(s),
                  samples_ms=[t * 1e3 for t in samples])


def time_round_robin(candidates: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 3,
                     block: int = 1) -> dict[str, Timing]:
    """Median latency (ms) of each zero-argument callable, timed in interleaved rounds after ``warmup`` rounds.

    With ``block`` = b > 1 each round calls every candidate b times in a row and times the last b − 1 calls
    (``runs`` rounds give ``runs · (b − 1)`` samples); see the module docstring.
    """
    if runs < 1:
        raise ValueError(f"runs must be ≥ 1, got {runs}")
    if block < 1:
        raise ValueError(f"block must be ≥ 1, got {block}")
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples: dict[str, list[float]] = {k: [] for k in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            if block > 1:
                fn()  # absorbs the switch from the previous candidate
            for _ in range(max(1, block - 1)):
                t0 = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - t0)
    return {k: _stats(v) for k, v in samples.items()}


def matmul_madd_rate(size: int = 2048, runs: int = 10, warmup: int = 2) -> float:
    """The fp32 multiply-add rate (per second) of a ``size``² matrix product on torch's current thread count.

    This is the machine's compute ceiling for dense fp32 work: a network of M multiply-adds cannot run in less
    than ``M / rate`` seconds on the same threads (the "compute floor"). The best of ``runs`` is used, the usual
    way to estimate a peak.
    """
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(warmup):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return size ** 3 / best
