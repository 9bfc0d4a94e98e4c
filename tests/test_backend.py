"""Where calls run: GPU, interpreter, or torch's fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_suite_refuses_to_run_torch_against_itself():
    """TRITON_INTERPRET=0 without a GPU would send every fused call to torch.nn: the suite stops at collection."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", str(tests / "test_backend.py")], env=env,
                          cwd=tests.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "TRITON_INTERPRET='0' with no GPU" in done.stdout + done.stderr
