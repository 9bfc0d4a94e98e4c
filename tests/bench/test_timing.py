"""The wall-clock fallback timer, the CPU answers of the GPU-only measures, and the time cap."""

from __future__ import annotations

import time

import pytest
import torch

from fused_rnn.bench.timing import TimeLimitExceeded, gpu_kernels, measure, peak_memory, time_limit, wall_clock

CPU = torch.device("cpu")


def test_wall_clock_quantiles_skip_the_slow_first_calls():
    durations = iter([0.05, 0.05] + [0.001] * 1000)
    median, p20, p80 = wall_clock(lambda: time.sleep(next(durations)), warmup_ms=1, rep_ms=30)
    assert p20 <= median <= p80
    assert 1 <= median < 20, "the median is a fast call"


def test_measure_on_cpu_uses_the_wall_clock():
    timing = measure(lambda: time.sleep(0.002), CPU, warmup_ms=1, rep_ms=10)
    assert 2 <= timing.p20_ms <= timing.median_ms <= timing.p80_ms < 100


def test_gpu_measures_are_none_on_cpu():
    assert peak_memory(lambda: None, CPU) is None
    assert gpu_kernels(lambda: None, CPU) is None


def test_time_limit():
    with time_limit(None) as limit:
        time.sleep(0.01)
    assert not limit.expired
    with pytest.raises(TimeLimitExceeded), time_limit(0.05) as limit:
        while True:
            time.sleep(0.01)
    assert limit.expired
    with time_limit(10) as limit:
        pass
    time.sleep(0.01)
    assert not limit.expired, "the timer is disarmed on exit"
