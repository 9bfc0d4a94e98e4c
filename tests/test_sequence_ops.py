"""The fused_rnn::sequence custom op: gradcheck with lengths, each direction and both in one op, and its limits."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from fused_rnn.kernels.sequence_kernels import CELLS, GATES, LSTM, NN_CELLS

from fused_rnn import reference, sequence_ops

T, B, H, I = 3, 3, 3, 2


def op_inputs(cell: int, device: str, bias: bool = True, directions: int = 1):
    """x (T, B, I), then stacked over the directions: w_ih, b_ih, b_hh (None without ``bias``), w_hh, h0, c0
    (LSTM); lengths; float64."""
    torch.manual_seed(2)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    G, D = GATES[cell] * H, directions
    x, w_ih, w_hh = t(T, B, I), t(D, G, I), t(D, G, H)
    b_ih, b_hh = (t(D, G), t(D, G)) if bias else (None, None)
    h0, c0 = t(D, B, H), (t(D, B, H) if cell == LSTM else None)
    lengths = torch.tensor([T, 2, 1], device=device)
    return x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths


# (reverse, directions): each direction alone, and both in one op (direction 1 in reverse)
DIRECTIONS = [(False, 1), (True, 1), (False, 2)]
DIRECTION_IDS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize(("reverse", "directions"), DIRECTIONS, ids=DIRECTION_IDS)
@pytest.mark.parametrize("cell", NN_CELLS, ids=str)
def test_gradcheck_with_lengths(cell, reverse, directions, device):
    """Every input: x, W_ih and both biases (the projection inside the op; GRU's b_hh[2H:] is b_hn), W_hh,
    h0 and c0."""
    cid = CELLS[cell]
    x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths = op_inputs(cid, device, directions=directions)
    if cell == "RNN_RELU":  # away from relu's kink, where finite differences fail
        b_ih = (b_ih.detach() + 0.5).requires_grad_()

    def fn(x, w_ih, b_ih, b_hh, w_hh, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, lengths, cid, reverse, True)
        return (y, h_n, c_n) if cid == LSTM else (y, h_n)

    inputs = [x, w_ih, b_ih, b_hh, w_hh, h0] + ([c0] if cid == LSTM else [])
    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(lambda *a: fn(*a, *([None] * (7 - len(a)))), inputs, fast_mode=True)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}


@pytest.mark.parametrize(("reverse", "directions"), DIRECTIONS, ids=DIRECTION_IDS)
def test_gradcheck_lstm_projection(reverse, directions, device):
    """w_hr (R, H) with R = 2 < H = 3: the projection inside the time loop, and dW_hr from one GEMM; no biases."""
    x, w_ih, _, _, w_hh, h0, c0, lengths = op_inputs(LSTM, device, bias=False, directions=directions)
    torch.manual_seed(4)
    D = directions
    w_hh = torch.randn(D, 4 * H, 2, dtype=torch.float64, device=device, requires_grad=True)
    w_hr = torch.randn(D, 2, H, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(D, B, 2, dtype=torch.float64, device=device, requires_grad=True)

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
        assert torch.equal(h_n[0, b], y[n - 1, b])


@pytest.mark.parametrize("cell", NN_CELLS, ids=str)
def test_projection_inside_the_op_equals_the_projection_outside(cell, device):
    """The op's outputs and first-order gradients equal those of ``project`` outside the op followed by the
    reference recurrence (autograd through F.linear derives dX, dW_ih and the bias gradients)."""
    cid = CELLS[cell]
    x, w_ih, b_ih, b_hh, w_hh, h0, c0, lengths = op_inputs(cid, device)
    leaves = [t for t in (x, w_ih, b_ih, b_hh, w_hh, h0, c0) if t is not None]
    outs = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, None, h0, c0, lengths, cid, True, True)[:3]
    xp, b_hn = sequence_ops.project(x, w_ih, b_ih, b_hh, cid)
    ref = reference.sequence(cell, xp, w_hh[0], None if b_hn is None else b_hn[0], None, h0[0],
                             None if c0 is None else c0[0], lengths, True)
    ref = (ref[0], ref[1][None], None if ref[2] is None else ref[2][None])
    outs, ref = outs[:3] if cid == LSTM else outs[:2], ref[:3] if cid == LSTM else ref[:2]
    torch.manual_seed(6)
    seeds = [torch.randn_like(o) for o in outs]
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r)
    got = torch.autograd.grad(outs, leaves, seeds)
    expected = torch.autograd.grad(ref, leaves, seeds)
    for name, g, e in zip(("x", "w_ih", "b_ih", "b_hh", "w_hh", "h0", "c0"), got, expected):
        torch.testing.assert_close(g, e, msg=name)
