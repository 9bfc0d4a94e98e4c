"""Numerical edge cases against torch.nn: NaN and Inf propagation, saturation, batch 0.

- A NaN or an Inf in the input, h0 or c0 reaches the same outputs, states and
  gradients as in torch.nn: the same elements are NaN, the same are +-Inf,
  and the finite ones agree (float64, elementwise).
- Pre-activations of +-1e4 (fp32) and beyond (1e30 in the input) saturate
  sigmoid and tanh to their limits: no NaN, finite outputs equal to torch.nn's.
- Batch 0 runs like torch.nn: the same output shapes, empty input gradients
  and zero parameter gradients.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fused_path_only
from helpers import TOL, assert_close, assert_kernels, kernels_of
from torch import nn

import fused_rnn

I, H, T, B = 3, 4, 3, 3
CELLS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
# numpy (under Triton's interpreter) warns on the inf - inf and inf * 0 that these inputs are meant to produce.
pytestmark = [
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
]


def _pair(cell: str, dtype: torch.dtype, device: str, **kwargs) -> tuple[nn.RNNBase, nn.RNNBase]:
    """The fused layer and torch.nn's, with the same weights."""
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = cell[4:].lower()
        fused_cls, torch_cls = fused_rnn.RNN, nn.RNN
    else:
        fused_cls, torch_cls = getattr(fused_rnn, cell), getattr(nn, cell)
    torch.manual_seed(0)
    fused = fused_cls(I, H, **kwargs).to(device, dtype)
    ref = torch_cls(I, H, **kwargs).to(device, dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def _forward_backward(module: nn.Module, x: torch.Tensor, states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Outputs, then gradients of (input, states, parameters) for all-ones output gradients."""
    x = x.detach().clone().requires_grad_()
    states = [s.detach().clone().requires_grad_() for s in states]
    hx = None if not states else (tuple(states) if len(states) == 2 else states[0])
    out = module(x, hx)
    if isinstance(module, nn.RNNBase):
        y, hidden = out
        outs = [y, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    else:
        outs = list(out) if isinstance(out, tuple) else [out]
    grads = torch.autograd.grad(outs, [x, *states, *module.parameters()], [torch.ones_like(o) for o in outs])
    return [o.detach() for o in outs] + list(grads)


def _assert_same_specials(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    """The same NaN and +-Inf elements; finite elements equal to float64 precision."""
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(a.isnan(), b.isnan()), f"tensor {i}: NaN at different elements"
        assert torch.equal(a.isposinf(), b.isposinf()) and torch.equal(a.isneginf(), b.isneginf()), f"tensor {i}: Inf"
        finite = a.isfinite()
        torch.testing.assert_close(a[finite], b[finite], rtol=TOL[torch.float64], atol=TOL[torch.float64])


SPECIALS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}

SPECIAL_CASES = [
    pytest.param(cell, where, value, id=f"{cell}-{where}-{value}")
    for cell in CELLS for where in (["input", "h0", "c0"] if cell == "LSTM" else ["input", "h0"]) for value in SPECIALS
]


@pytest.mark.parametrize("cell,where,value", SPECIAL_CASES)
def test_nan_and_inf_propagate_like_torch(cell: str, where: str, value: str, device: str):
    fused, ref = _pair(cell, torch.float64, device, bidirectional=True)
    torch.manual_seed(1)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    states = [torch.randn(2, B, H, dtype=torch.float64, device=device) for _ in range(2 if cell == "LSTM" else 1)]
    target = {"input": x, "h0": states[0], "c0": states[-1]}[where]
    target[1, 1, 0] = SPECIALS[value]
    want = _forward_backward(ref, x, states)
    with fused_path_only() as launches:
        got = _forward_backward(fused, x, states)
    assert_kernels(launches, kernels_of(fused))
    _assert_same_specials(got, want)


CELL_KINDS = ["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"]
CELL_SPECIAL_CASES = [
    # one step: an Inf alone gives no NaN to drop
    pytest.param(kind, where, value, id=f"{kind}-{where}-{value}",
                 marks=[])
    for kind in CELL_KINDS for where in (["input", "h", "c"] if kind == "LSTMCell" else ["input", "h"])
    for value in SPECIALS
]


@pytest.mark.parametrize("kind,where,value", CELL_SPECIAL_CASES)
def test_nan_and_inf_propagate_like_torch_in_cells(kind: str, where: str, value: str, device: str):
    name, _, act = kind.partition("_")
    kwargs = {"nonlinearity": act} if act else {}
    torch.manual_seed(0)
    fused = getattr(fused_rnn, name)(I, H, **kwargs).to(device, torch.float64)
    ref = getattr(nn, name)(I, H, **kwargs).to(device, torch.float64)
    ref.load_state_dict(fused.state_dict())
    torch.manual_seed(1)
    x = torch.randn(B, I, dtype=torch.float64, device=device)
    states = [torch.randn(B, H, dtype=torch.float64, device=device) for _ in range(2 if name == "LSTMCell" else 1)]
    {"input": x, "h": states[0], "c": states[-1]}[where][1, 0] = SPECIALS[value]
    want = _forward_backward(ref, x, states)
    with fused_path_only() as launches:
        got = _forward_backward(fused, x, states)
    assert_kernels(launches, kernels_of(fused))
    _assert_same_specials(got, want)


SATURATING = [("LSTM", "LSTMCell"), ("GRU", "GRUCell"), ("RNN_TANH", "RNNCell")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cell", [c for c, _ in SATURATING])
def test_large_preactivations_saturate_without_nan(cell: str, dtype: torch.dtype, device: str):
    """Weights scaled by 1e4 give pre-activations of about +-1e4 (exp overflows in fp32); inputs of 1e30 too.

    Outputs and states equal torch.nn's; gradients have no NaN and are finite, and equal torch.nn's in
    float64. In fp32 the gradients of the few gates left unsaturated (1 - sigmoid(x) for x of a few units
    is cancellation-bound in fp32) differ between any two fp32 implementations by more than TOL.
    """
    fused, ref = _pair(cell, dtype, device)
    with torch.no_grad():
        for m in (fused, ref):
            for p in m.parameters():
                p.mul_(1e4)
    torch.manual_seed(1)
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    x[0, 0, 0] = 1e30
    want = _forward_backward(ref, x, [])
    with fused_path_only():
        got = _forward_backward(fused, x, [])
    n_out = 3 if cell == "LSTM" else 2
    assert all(torch.isfinite(t).all() for t in got), "saturated outputs and their gradients are finite"
    assert got[0].abs().max() <= 1, "outputs within tanh's range"
    compared = len(got) if dtype == torch.float64 else n_out
    for a, b in zip(got[:compared], want[:compared], strict=True):
        assert_close(a, b, dtype)


@pytest.mark.parametrize("kind", [k for _, k in SATURATING])
def test_cells_saturate_without_nan(kind: str, device: str):
    torch.manual_seed(0)
    fused = getattr(fused_rnn, kind)(I, H).to(device)
    ref = getattr(nn, kind)(I, H).to(device)
    with torch.no_grad():
        for p in fused.parameters():
            p.mul_(1e4)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(B, I, device=device)
    want = _forward_backward(ref, x, [])
    with fused_path_only():
        got = _forward_backward(fused, x, [])
    for a, b in zip(got, want, strict=True):
        assert not a.isnan().any()
        assert_close(a, b, torch.float32)


BATCH_ZERO = [("LSTM", {}), ("LSTM", {"proj_size": 2}), ("GRU", {}), ("RNN_TANH", {})]
BATCH_ZERO_IDS = ["LSTM", "LSTM_proj", "GRU", "RNN"]


def _batch_zero(cell: str, kwargs: dict, batch_first: bool, device: str):
    """Modules (two bidirectional layers), an input of batch 0 and zero-batch initial states."""
    fused, ref = _pair(cell, torch.float64, device, num_layers=2, bidirectional=True, batch_first=batch_first, **kwargs)
    x = torch.randn((0, T, I) if batch_first else (T, 0, I), dtype=torch.float64, device=device)
    states = [torch.zeros(4, 0, kwargs.get("proj_size", H), dtype=torch.float64, device=device)]
    if cell == "LSTM":
        states.append(torch.zeros(4, 0, H, dtype=torch.float64, device=device))
    return fused, ref, x, states


@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("cell,kwargs", BATCH_ZERO, ids=BATCH_ZERO_IDS)
def test_batch_zero_forward_like_torch(cell: str, kwargs: dict, batch_first: bool, device: str):
    fused, ref, x, states = _batch_zero(cell, kwargs, batch_first, device)
    hx = tuple(states) if cell == "LSTM" else states[0]
    want_y, want_h = ref(x, hx)
    got_y, got_h = fused(x, hx)
    want = [want_y, *(want_h if isinstance(want_h, tuple) else (want_h,))]
    got = [got_y, *(got_h if isinstance(got_h, tuple) else (got_h,))]
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype




@pytest.mark.parametrize("path", ["sequence", "stepwise"])
@pytest.mark.parametrize("cell,kwargs", BATCH_ZERO, ids=BATCH_ZERO_IDS)
def test_batch_zero_backward_like_torch(cell: str, kwargs: dict, path: str, device: str):
    """Backward with batch 0: empty input and state gradients, zero parameter gradients, as torch.nn."""
    fused, ref, x, states = _batch_zero(cell, kwargs, False, device)
    want = _forward_backward(ref, x, states)
    with fused_rnn.force_path(path):
        got = _forward_backward(fused, x, states)
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_with_batch_zero_like_torch(kind: str, device: str):
    torch.manual_seed(0)
    fused = getattr(fused_rnn, kind)(I, H).to(device)
    ref = getattr(nn, kind)(I, H).to(device)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(0, I, device=device)
    want = _forward_backward(ref, x, [])
    with fused_path_only():
        got = _forward_backward(fused, x, [])
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and torch.equal(a, b)
