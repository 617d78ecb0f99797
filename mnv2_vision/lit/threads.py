"""How many intra-op threads a CPU process should use: the cores it may actually run on.

PyTorch starts one thread per core of the machine. On a busy machine (other trainings, the DataLoader workers) the
threads of one parallel region wait for each other behind the other processes: a 10-step probe on 2 cores took
127 s with the default threads and 17 s with one thread while another job ran. So the default counts what this
process can really use: the CPUs it may run on (affinity), the cgroup CPU quota (containers), less its own data
workers and the cores other processes keep busy right now.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

__all__ = ["available_cores", "busy_cores", "choose_num_threads"]


def _cgroup_quota() -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, v1 ``cfs_quota_us / cfs_period_us``); ``None`` when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by the cgroup quota (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def _running() -> int | None:
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(samples: int = 5, interval_s: float = 0.02) -> int:
    """Cores that other processes keep busy now: the median count of runnable tasks (``/proc/loadavg``) over a few
    samples, less this process itself; 0 where the count is not available."""
    counts = []
    for i in range(samples):
        n = _running()
        if n is None:
            return 0
        counts.append(n)
        if i + 1 < samples:
            time.sleep(interval_s)
    counts.sort()
    return max(0, counts[len(counts) // 2] - 1)


def choose_num_threads(configured: int | None, num_workers: int = 0) -> tuple[int, str]:
    """``(threads, reason)``: ``configured`` if set, else ``OMP_NUM_THREADS`` if the user set it, else the available
    cores less the data workers and the busy cores (at least 1)."""
    if configured is not None:
        return configured, "trainer.num_threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, busy = available_cores(), busy_cores()
    threads = max(1, min(cores - num_workers, cores - busy))
    return threads, (f"{cores} core(s) available, {num_workers} data worker(s), {busy} busy with other processes; "
                     "set trainer.num_threads to choose")
