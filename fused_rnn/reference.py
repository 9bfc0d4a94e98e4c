"""Plain-PyTorch recurrent cells written from the equations, with no torch.nn RNN calls.

They are the second oracle of the tests (beside torch.nn) and, being ordinary
differentiable torch code, the path that double backward goes through.
Shapes: x (N, I), h and c (N, H), w_ih (G, I), w_hh (G, H), biases (G,) or
None, with G = 4H (LSTM, gates i, f, g, o), 3H (GRU, gates r, z, n) or H (RNN).
"""

from __future__ import annotations

import torch
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
