"""The shared device functions of cell_math, run through a small test kernel."""

from __future__ import annotations

import mpmath
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


def _exact_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh of every element, correctly rounded to float64 (60-digit mpmath)."""
    with mpmath.workdps(60):
        return torch.tensor([float(mpmath.tanh(mpmath.mpf(v))) for v in x.double().tolist()], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_tanh_and_sigmoid_accuracy(dtype, device):
    """Dense sweep of [-20, 20] plus a log sweep down to 1e-30, both signs, against float64 (fp32; glibc's tanh
    is within one float64 ulp) or 60-digit arithmetic (fp64). Bounds stated in docs/cells.md: tanh within
    2 eps relative everywhere (measured 1.6 eps in fp32, 1.0 in fp64), sigmoid within 4 eps relative."""
    x = torch.cat([torch.linspace(-20, 20, 40001, dtype=torch.float64), torch.logspace(-30, 1, 4000, dtype=torch.float64)])
    if dtype == torch.float64:
        x = x[::4]  # mpmath's reference costs about 20 us an element
    x = torch.cat([x, -x]).to(device, dtype)
    t, s = activations(x)
    eps = torch.finfo(dtype).eps
    ref_t = torch.tanh(x.double()) if dtype == torch.float32 else _exact_tanh(x).to(device)
    ref_s = torch.sigmoid(x.double())
    rel_t = ((t.double() - ref_t).abs() / ref_t.abs()).nan_to_num(0.0)  # 0/0 at x = 0, where both are 0
    assert rel_t.max().item() <= 2 * eps, f"tanh: {rel_t.max().item() / eps:.2f} eps at x = {x[rel_t.argmax()]}"
    assert ((s.double() - ref_s).abs() / ref_s).max().item() <= 4 * eps


def test_saturation_and_special_values(device):
    """Huge pre-activations saturate without NaN; NaN propagates; +-inf give +-1 and 0/1."""
    x = torch.tensor([1e30, -1e30, 1e4, -1e4, float("inf"), float("-inf"), float("nan"), 0.0], device=device)
    t, s = activations(x)
    torch.testing.assert_close(t, torch.tanh(x), equal_nan=True)
    torch.testing.assert_close(s, torch.sigmoid(x), equal_nan=True)


def test_tanh_near_saturation_is_as_close_as_torchs(device):
    """A saturated unit's gate gradient dh * (1 - tanh^2) turns tanh's absolute error near +-1 into its own
    relative error, so there fp32 tanh must be as close to the exact value as torch.tanh (mean 0.25 units of
    2^-24 on [1, 9]; the form (1 - e) / (1 + e) gave 0.52, and module_db's bidirectional 2-layer nn.RNN showed
    weight_ih_l0 gradients 1.7x torch's error in the median, 9x at worst: tests/test_layers.py)."""
    x = torch.linspace(1, 9, 100001, dtype=torch.float32, device=device)
    t, _ = activations(torch.cat([x, -x]))
    err = (t.double() - torch.tanh(torch.cat([x, -x]).double())).abs() / 2**-24
    assert err.mean().item() <= 0.3, f"mean {err.mean().item():.3f} units of 2^-24 (torch.tanh: 0.25)"
