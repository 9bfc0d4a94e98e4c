"""The reference cells of ``fused_rnn.reference`` looped over time, layers and directions: what torch.compile compiles.

Plain differentiable torch code with torch.nn.RNNBase's semantics for
time-major input with per-sequence lengths (a finished sequence keeps its
state and outputs zeros; the reverse direction starts at each sequence's end).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import reference


def _step(cell: str, x: Tensor, h: Tensor, c: Tensor | None, w: list[Tensor]) -> tuple[Tensor, Tensor | None]:
    """One step of ``cell`` for x (B, I), h and c (B, H); w = [w_ih, w_hh, b_ih, b_hh]."""
    if cell == "lstm":
        return reference.lstm_cell(x, h, c, *w)
    if cell == "gru":
        return reference.gru_cell(x, h, *w), None
    return reference.rnn_cell(x, h, *w, nonlinearity=cell[4:]), None


def recurrent_loop(
    cell: str, x: Tensor, lengths: Tensor, h0: Tensor, c0: Tensor | None, weights: list[Tensor], bidirectional: bool
) -> tuple[Tensor, ...]:
    """x (T, B, I), lengths (B,) int64 on x's device, h0 and c0 (L * D, B, H), weights in torch.nn's parameter order.

    Returns y (T, B, D * H), zero past each length, h_n[, c_n] (L * D, B, H), as torch.nn.LSTM/GRU/RNN do.
    """
    T = x.shape[0]
    t = torch.arange(T, device=x.device)[:, None]
    valid = (t < lengths)[..., None]
    # Reverses each sequence within its length, leaving the padding where it is; its own inverse.
    flip = torch.where(t < lengths, lengths - 1 - t, t)[..., None]
    dirs = 2 if bidirectional else 1
    per = len(weights) // (h0.shape[0])
    h_n, c_n = [], []
    for layer in range(h0.shape[0] // dirs):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            seq = x if d == 0 else x.gather(0, flip.expand_as(x))
            h, c, ys = h0[k], None if c0 is None else c0[k], []
            for s in range(T):
                h_new, c_new = _step(cell, seq[s], h, c, weights[k * per : (k + 1) * per])
                h = torch.where(valid[s], h_new, h)
                c = None if c is None else torch.where(valid[s], c_new, c)
                ys.append(torch.where(valid[s], h_new, torch.zeros_like(h_new)))
            y = torch.stack(ys)
            outs.append(y if d == 0 else y.gather(0, flip.expand_as(y)))
            h_n.append(h)
            c_n.append(c)
        x = torch.cat(outs, dim=-1)
    return (x, torch.stack(h_n)) + ((torch.stack(c_n),) if c0 is not None else ())
