"""Plain-PyTorch recurrent cells written from the equations, with no torch.nn RNN calls.

They are the second oracle of the tests (beside torch.nn) and, being ordinary
differentiable torch code, the path that double backward goes through.
Shapes: x (N, I), h and c (N, H), w_ih (G, I), w_hh (G, H), biases (G,) or
None, with G = 4H (LSTM, gates i, f, g, o), 3H (GRU, gates r, z, n) or H (RNN).

``sequence`` is one layer and direction over time, the contract of the
``fused_rnn::sequence`` op written once as a Python loop over a step function:
with the cells here it is the op's differentiable recomputation (its backward
under ``create_graph=True``); with the fused cell ops it is the layers'
stepwise path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _with_bias(gates: Tensor, bias: Tensor | None) -> Tensor:
    return gates if bias is None else gates + bias


def lstm_from_gates(
    ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, c: Tensor
) -> tuple[Tensor, Tensor]:
    """LSTM step from the products ig = x W_ih^T and hg = h W_hh^T, both (N, 4H)."""
    i, f, g, o = (_with_bias(ig, b_ih) + _with_bias(hg, b_hh)).chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    return o * torch.tanh(c_new), c_new


def gru_from_gates(ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, h: Tensor) -> Tensor:
    """GRU step from ig = x W_ih^T and hg = h W_hh^T, both (N, 3H)."""
    x_r, x_z, x_n = _with_bias(ig, b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = _with_bias(hg, b_hh).chunk(3, dim=-1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_from_gates(ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, relu: bool) -> Tensor:
    """Vanilla RNN step from ig = x W_ih^T and hg = h W_hh^T, both (N, H)."""
    pre = _with_bias(ig, b_ih) + _with_bias(hg, b_hh)
    return torch.relu(pre) if relu else torch.tanh(pre)


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One LSTM step: returns (h', c')."""
    return lstm_from_gates(x @ w_ih.t(), h @ w_hh.t(), b_ih, b_hh, c)


def gru_cell(
    x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None = None, b_hh: Tensor | None = None
) -> Tensor:
    """One GRU step: returns h'."""
    return gru_from_gates(x @ w_ih.t(), h @ w_hh.t(), b_ih, b_hh, h)


def rnn_cell(
    x: Tensor,
    h: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """One vanilla RNN step: returns h'."""
    return rnn_from_gates(x @ w_ih.t(), h @ w_hh.t(), b_ih, b_hh, nonlinearity == "relu")


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """(T, B) time index that reverses each row within its length (an involution)."""
    t = torch.arange(T, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


# The step functions of ``sequence``: (lstm, gru, rnn), each with the signature of the *_from_gates functions.
CELLS = (lstm_from_gates, gru_from_gates, rnn_from_gates)


def sequence(
    mode: str, xp: Tensor, w_hh: Tensor, b_hn: Tensor | None, w_hr: Tensor | None, h0: Tensor, c0: Tensor | None,
    lengths: Tensor, reverse: bool, cells: tuple[Callable, Callable, Callable] = CELLS,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """One layer and direction over time, as ``fused_rnn::sequence`` computes it after its input projection
    (``sequence_ops.project``); mode is torch.nn's ("LSTM", "GRU", "RNN_TANH", "RNN_RELU").

    xp (T, B, G) the input projection with the foldable biases added, w_hh (G, R), b_hn (H,) GRU's hidden-side
    bias of n or None, w_hr (R, H) LSTM's projection or None (then R = H), h0 (B, R), c0 (B, H) or None (zeros;
    LSTM only), lengths (B,) int64. Row b runs its first lengths[b] steps (in reverse order when ``reverse``);
    its outputs past them are zero and its final state is the last valid one. Returns y (T, B, R), h_n (B, R)
    and c_n (B, H) (None unless LSTM). ``cells``: the step functions (lstm, gru, rnn).
    """
    lstm_step, gru_step, rnn_step = cells
    T = xp.shape[0]
    if reverse:
        idx = reverse_index(lengths, T)
        xp = xp.gather(0, idx[..., None].expand_as(xp))
    valid = (torch.arange(T, device=xp.device)[:, None] < lengths[None, :])[..., None]
    if mode == "GRU" and b_hn is not None:
        b_h = torch.cat([torch.zeros_like(b_hn), torch.zeros_like(b_hn), b_hn])
        b_i = torch.zeros_like(b_h)
    else:
        b_i = b_h = None
    if mode == "LSTM" and c0 is None:
        c0 = h0.new_zeros(h0.shape[0], w_hh.shape[0] // 4)
    h, c, ys = h0, (c0 if mode == "LSTM" else None), []
    for t in range(T):
        hg = F.linear(h, w_hh)
        if mode == "LSTM":
            h_new, c_new = lstm_step(xp[t], hg, None, None, c)
            if w_hr is not None:
                h_new = F.linear(h_new, w_hr)
            c = torch.where(valid[t], c_new, c)
        elif mode == "GRU":
            h_new = gru_step(xp[t], hg, b_i, b_h, h)
        else:
            h_new = rnn_step(xp[t], hg, None, None, mode == "RNN_RELU")
        h = torch.where(valid[t], h_new, h)
        ys.append(torch.where(valid[t], h_new, torch.zeros_like(h_new)))
    y = torch.stack(ys)
    if reverse:
        y = y.gather(0, idx[..., None].expand_as(y))
    return y, h, c
