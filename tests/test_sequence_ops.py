"""The fused_rnn::sequence custom op: gradcheck with lengths and both directions, and its limits."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from fused_rnn.kernels.sequence_kernels import CELLS, GATES, LSTM

from fused_rnn import reference, sequence_ops

T, B, H, I = 3, 3, 3, 2


def op_inputs(cell: int, device: str, bias: bool = True):
    """x (T, B, I), w_ih, b_ih, b_hh (None without ``bias``), w_hh, h0, c0 (LSTM), lengths; float64."""
    torch.manual_seed(2)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    G = GATES[cell] * H
    x, w_ih, w_hh = t(T, B, I), t(G, I), t(G, H)
    b_ih, b_hh = (t(G), t(G)) if bias else (None, None)
    h0, c0 = t(B, H), (t(B, H) if cell == LSTM else None)
    lengths = torch.tensor([T, 2, 1], device=device)
    return x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", list(CELLS), ids=str)
def test_gradcheck_with_lengths(cell, reverse, device):
    """Every input: x, W_ih and both biases (the projection inside the op; GRU's b_hh[2H:] is b_hn), W_hh,
    h0 and c0."""
    cid = CELLS[cell]
    x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths = op_inputs(cid, device)
    if cell == "RNN_RELU":  # away from relu's kink, where finite differences fail
        b_ih = (b_ih.detach() + 0.5).requires_grad_()

    def fn(x, w_ih, b_ih, b_hh, w_hh, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, lengths, cid, reverse, True)
        return (y, h_n, c_n) if cid == LSTM else (y, h_n)

    inputs = [x, w_ih, b_ih, b_hh, w_hh, h0] + ([c0] if cid == LSTM else [])
    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(lambda *a: fn(*a, *([None] * (7 - len(a)))), inputs, fast_mode=True)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_lstm_projection(reverse, device):
    """w_hr (R, H) with R = 2 < H = 3: the projection inside the time loop, and dW_hr from one GEMM; no biases."""
    x, w_ih, _, _, w_hh, h0, c0, lengths = op_inputs(LSTM, device, bias=False)
    torch.manual_seed(4)
    w_hh = torch.randn(4 * H, 2, dtype=torch.float64, device=device, requires_grad=True)
    w_hr = torch.randn(2, H, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(B, 2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(x, w_ih, w_hh, w_hr, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(x, w_ih, None, None, w_hh, w_hr, h0, c0, lengths, LSTM, reverse, True)
        return y, h_n, c_n

    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(fn, (x, w_ih, w_hh, w_hr, h0, c0), fast_mode=True)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}


def test_padding_is_zero_and_final_state_is_last_valid(device):
    x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths = op_inputs(LSTM, device)
    with torch.no_grad():
        y, h_n, *_ = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, lengths, LSTM, False, True)
    for b, n in enumerate(lengths.tolist()):
        assert (y[n:, b] == 0).all()
        assert torch.equal(h_n[b], y[n - 1, b])


@pytest.mark.parametrize("cell", list(CELLS), ids=str)
def test_projection_inside_the_op_equals_the_projection_outside(cell, device):
    """The op's outputs and first-order gradients equal those of ``project`` outside the op followed by the
    reference recurrence (autograd through F.linear derives dX, dW_ih and the bias gradients)."""
    cid = CELLS[cell]
    x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths = op_inputs(cid, device)
    leaves = [t for t in (x, w_ih, b_ih, b_hh, w_hh, h0, c0) if t is not None]
    outs = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, lengths, cid, True, True)[:3]
    xp, b_hn = sequence_ops.project(x, w_ih, b_ih, b_hh, cid)
    ref = reference.sequence(cell, xp, w_hh, b_hn, None, h0, c0, lengths, True)
    outs, ref = outs[:3] if cid == LSTM else outs[:2], ref[:3] if cid == LSTM else ref[:2]
    torch.manual_seed(6)
    seeds = [torch.randn_like(o) for o in outs]
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r)
    got = torch.autograd.grad(outs, leaves, seeds)
    expected = torch.autograd.grad(ref, leaves, seeds)
    for name, g, e in zip(("x", "w_ih", "b_ih", "b_hh", "w_hh", "h0", "c0"), got, expected):
        torch.testing.assert_close(g, e, msg=name)
