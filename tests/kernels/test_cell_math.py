"""The shared device functions of cell_math, run through a small test kernel."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from fused_rnn.kernels.cell_math import sigmoid, tanh


@triton.jit
def _activations_kernel(x, t, s, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(x + offs, mask=mask)
    tl.store(t + offs, tanh(v), mask=mask)
    tl.store(s + offs, sigmoid(v), mask=mask)


def activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t, s = torch.empty_like(x), torch.empty_like(x)
    _activations_kernel[(1,)](x, t, s, x.numel(), BLOCK=triton.next_power_of_2(x.numel()))
    return t, s


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tanh_and_sigmoid_accuracy(dtype, device):
    """Measured bounds, stated in docs/cells.md: tanh within 2 eps absolute (and 128 eps relative,
    the worst just above the series switch); sigmoid within 4 eps relative."""
    x = torch.cat([torch.linspace(-20, 20, 20001), torch.logspace(-30, 0, 2000), -torch.logspace(-30, 0, 2000)])
    x = x.to(device, dtype)
    t, s = activations(x)
    eps = torch.finfo(dtype).eps
    ref_t, ref_s = torch.tanh(x.double()), torch.sigmoid(x.double())
    assert (t.double() - ref_t).abs().max().item() <= 2 * eps
    assert ((t.double() - ref_t).abs() / ref_t.abs()).nan_to_num(0.0).max().item() <= 128 * eps
    assert ((s.double() - ref_s).abs() / ref_s).max().item() <= 4 * eps


def test_saturation_and_special_values(device):
    """Huge pre-activations saturate without NaN; NaN propagates; +-inf give +-1 and 0/1."""
    x = torch.tensor([1e30, -1e30, 1e4, -1e4, float("inf"), float("-inf"), float("nan"), 0.0], device=device)
    t, s = activations(x)
    torch.testing.assert_close(t, torch.tanh(x), equal_nan=True)
    torch.testing.assert_close(s, torch.sigmoid(x), equal_nan=True)
