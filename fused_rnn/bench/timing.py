"""Timing (GPU events through triton.testing.do_bench, else a wall clock), peak memory, kernel counts, time caps."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import triton.testing

# Median, then the 20% and 80% quantiles of the per-call times.
QUANTILES = [0.5, 0.2, 0.8]


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call: median and the 20% / 80% quantiles."""

    median_ms: float
    p20_ms: float
    p80_ms: float


def _calls(fn: Callable[[], object], min_calls: int, min_ms: float) -> list[float]:
    """Call ``fn`` at least ``min_calls`` times and for at least ``min_ms``; the time of each call in ms."""
    times: list[float] = []
    while len(times) < min_calls or sum(times) < min_ms:
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def wall_clock(fn: Callable[[], object], warmup_ms: float, rep_ms: float, min_reps: int = 3) -> list[float]:
    """QUANTILES of the call time in ms on time.perf_counter, for machines without a GPU.

    Warm-up calls for ``warmup_ms`` (at least one), then timed calls for
    ``rep_ms`` (at least ``min_reps``): slow first calls cannot dominate the median.
    """
    _calls(fn, 1, warmup_ms)
    times = torch.tensor(_calls(fn, min_reps, rep_ms), dtype=torch.float64)
    return torch.quantile(times, torch.tensor(QUANTILES, dtype=torch.float64)).tolist()


def measure(fn: Callable[[], object], device: torch.device, warmup_ms: float, rep_ms: float) -> Timing:
    """Time ``fn``: CUDA events through triton.testing.do_bench on a GPU (L2 flushed before each call), else
    wall_clock."""
    if device.type == "cuda":
        quantiles = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=QUANTILES)
    else:
        quantiles = wall_clock(fn, warmup_ms, rep_ms)
    return Timing(*quantiles)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Bytes allocated by one call of ``fn`` at its peak, beyond what was allocated before (CUDA only, else None)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def gpu_kernels(fn: Callable[[], object], device: torch.device) -> int | None:
    """GPU kernels one call of ``fn`` runs, from torch.profiler (memset and memcpy excluded); None off CUDA."""
    if device.type != "cuda":
        return None
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(
        1
        for e in prof.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and not e.name.startswith(("Memset", "Memcpy"))
    )


class TimeLimit:
    """State of a time_limit block: whether its deadline passed."""

    expired = False


class TimeLimitExceeded(Exception):
    """Raised inside a time_limit block when its deadline passes."""


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[TimeLimit]:
    """Raise TimeLimitExceeded in the block after ``seconds`` of wall time (None: no limit).

    SIGALRM based: main thread, Unix only. The exception is raised at the
    next Python bytecode, so a single long native call can overrun; callers
    that catch exceptions broadly read ``expired`` to tell a timeout apart.
    """
    limit = TimeLimit()
    if seconds is None:
        yield limit
        return

    def expire(signum, frame):
        limit.expired = True
        raise TimeLimitExceeded(f"over the {seconds:g} s cap")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield limit
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
