"""The fused_rnn::sequence custom op: gradcheck with lengths and both directions, and its limits."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only

from fused_rnn import sequence_ops
from fused_rnn.kernels.sequence_kernels import CELLS, GATES, GRU, LSTM

T, B, H = 3, 3, 3


def op_inputs(cell: int, device: str):
    torch.manual_seed(2)

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)

    xp, w_hh = t(T, B, GATES[cell] * H), t(GATES[cell] * H, H)
    b_hn = t(H) if cell == GRU else None
    h0, c0 = t(B, H), (t(B, H) if cell == LSTM else None)
    lengths = torch.tensor([T, 2, 1], device=device)
    return xp, w_hh, b_hn, h0, c0, lengths


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell", list(CELLS), ids=str)
def test_gradcheck_with_lengths(cell, reverse, device):
    cid = CELLS[cell]
    xp, w_hh, b_hn, h0, c0, lengths = op_inputs(cid, device)
    if cell == "RNN_RELU":  # away from relu's kink, where finite differences fail
        xp = (xp.detach() + 0.5).requires_grad_()

    def fn(xp, w_hh, b_hn, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(xp, w_hh, b_hn, None, h0, c0, lengths, cid, reverse, True)
        return (y, h_n, c_n) if cid == LSTM else (y, h_n)

    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(fn, (xp, w_hh, b_hn, h0, c0), fast_mode=True)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_gradcheck_lstm_projection(reverse, device):
    """w_hr (R, H) with R = 2 < H = 3: the projection inside the time loop, and dW_hr from one GEMM."""
    xp, w_hh, _, h0, c0, lengths = op_inputs(LSTM, device)
    torch.manual_seed(4)
    w_hh = torch.randn(4 * H, 2, dtype=torch.float64, device=device, requires_grad=True)
    w_hr = torch.randn(2, H, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(B, 2, dtype=torch.float64, device=device, requires_grad=True)

    def fn(xp, w_hh, w_hr, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(xp, w_hh, None, w_hr, h0, c0, lengths, LSTM, reverse, True)
        return y, h_n, c_n

    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(fn, (xp, w_hh, w_hr, h0, c0), fast_mode=True)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}


def test_padding_is_zero_and_final_state_is_last_valid(device):
    xp, w_hh, _, h0, c0, lengths = op_inputs(LSTM, device)
    with torch.no_grad():
        y, h_n, *_ = sequence_ops.sequence(xp, w_hh, None, None, h0, c0, lengths, LSTM, False, True)
    for b, n in enumerate(lengths.tolist()):
        assert (y[n:, b] == 0).all()
        assert torch.equal(h_n[b], y[n - 1, b])
