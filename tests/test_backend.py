"""Where calls run: GPU, interpreter, or torch's fallback."""

from __future__ import annotations

import pytest
import torch

from fused_rnn.backend import triton_runs_on


def test_cpu_tensors_follow_the_interpreter_switch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_runs_on(torch.zeros(1))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not triton_runs_on(torch.zeros(1))
    assert not triton_runs_on(torch.zeros(1, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA or ROCm GPU")
def test_gpu_tensors_run_triton():
    assert triton_runs_on(torch.zeros(1, device="cuda"))
