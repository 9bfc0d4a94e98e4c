"""Launch bookkeeping: block choices, launch counting, output poisoning."""

from __future__ import annotations

import itertools

import pytest
import torch

from fused_rnn.kernels import cell_kernels
from fused_rnn.kernels.launch import cell_blocks, count_launches, new_output, poison_outputs, sequence_blocks


def test_cell_blocks_are_powers_of_two_within_budget():
    for (n, h), dtype in itertools.product(
        itertools.product([0, 1, 3, 64, 1000, 100_000], [1, 3, 17, 100, 512, 4096]), [torch.float32, torch.float64]
    ):
        b = cell_blocks(n, h, dtype)
        assert b.block_n & (b.block_n - 1) == 0 and b.block_h & (b.block_h - 1) == 0
        budget = 1024 if dtype == torch.float64 else 2048
        assert b.block_n * b.block_h <= max(budget, b.block_h) and b.block_h >= min(h, 256)
        assert cell_blocks(n, h, dtype) == b, "a pure function of the sizes"


def test_sequence_blocks_stay_within_16_and_32():
    """Half types up to 32 wide on NVIDIA; fp32 (TF32 or FMA) and fp64 16 wide."""
    for b, h in itertools.product([1, 16, 1000], [1, 17, 64, 2048]):
        blocks = sequence_blocks(b, h, torch.bfloat16)
        assert blocks.block_b == 16 and 16 <= blocks.block_h == blocks.block_k <= 32
        assert sequence_blocks(b, h, torch.float16) == blocks
        for dtype in (torch.float64, torch.float32):
            assert sequence_blocks(b, h, dtype).block_h == 16


def test_launches_are_counted_and_empty_grids_skipped(device):
    ig = torch.randn(2, 3, device=device)
    with count_launches() as outer:
        cell_kernels.rnn_cell_forward(ig, ig, None, None, relu=False)
        with count_launches() as inner:
            cell_kernels.rnn_cell_forward(ig[:0], ig[:0], None, None, relu=False)
    assert inner.total == 0
    assert outer.total == 1 and outer.by_kernel == {"rnn_cell_fwd_kernel": 1}


def test_poisoned_outputs_start_as_nan(device):
    like = torch.zeros(1, device=device)
    with poison_outputs():
        assert new_output(like, (2, 3)).isnan().all()
    with poison_outputs(False):
        assert new_output(like, (2, 3)).shape == (2, 3)


@pytest.mark.parametrize(("hip", "widest"), [(None, 32), ("6.0", 16)], ids=["cuda", "rocm"])
def test_sequence_blocks_on_amd_are_16_wide(monkeypatch, hip, widest):
    """Half types take 32-wide blocks on NVIDIA; on AMD 16 (the 32-wide LSTM with a projection spilled VGPRs on
    gfx942)."""
    monkeypatch.setattr(torch.version, "hip", hip)
    assert sequence_blocks(64, 1000, torch.float16).block_h == widest
    assert sequence_blocks(64, 1000, torch.bfloat16).block_h == widest


@pytest.mark.parametrize(("hip", "maxnreg"), [(None, 255), ("6.0", None)], ids=["cuda", "rocm"])
def test_step_kernel_options_follow_the_backend(monkeypatch, hip, maxnreg):
    """8 warps; on NVIDIA every register a thread can have (ptxas would cap 256 threads at 128 and spill, the
    compile report found), on AMD no maxnreg (Triton's AMD backend rejects it)."""
    monkeypatch.setattr(torch.version, "hip", hip)
    meta = cell_kernels._grid_and_meta(4096, 129, torch.float64)[1]
    assert meta["num_warps"] == 8 and meta.get("maxnreg") == maxnreg
