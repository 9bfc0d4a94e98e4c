"""One recurrent layer and direction over a whole sequence, as a torch.library custom op.

``fused_rnn::sequence`` runs the time loop in one Triton launch; its autograd
runs the reverse-time Triton kernel for the gate gradients and the carried
state gradient, then takes the weight gradient from one GEMM over the whole
sequence. The input projection (x W_ih^T + biases) is a torch GEMM outside
the op, so autograd gives dX, dW_ih and the bias gradients from the gate
gradients with one GEMM each.

Double backward: when the backward itself is being recorded
(``create_graph=True``), the op's input gradients come instead from autograd
through a plain-torch recomputation of the layer-direction over time
(``reference.sequence`` with the reference cells), keeping its graph, so
gradients of gradients work to any order. For that the op keeps its input xp
(and GRU's b_hn) for backward. Without create_graph the Triton kernel runs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .cell_ops import _differentiable_grads
from .kernels import sequence_kernels as K

LSTM, GRU = K.LSTM, K.GRU
MODES = {cell: mode for mode, cell in K.CELLS.items()}  # torch.nn's mode name of each cell id


@torch.library.custom_op("fused_rnn::sequence", mutates_args=())
def sequence(
    xp: Tensor, w_hh: Tensor, b_hn: Tensor | None, w_hr: Tensor | None, h0: Tensor, c0: Tensor | None,
    lengths: Tensor, cell: int, reverse: bool, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """xp (T, B, G), w_hh (G, R), b_hn (H,) GRU only, w_hr (R, H) LSTM projection or None (then R = H),
    h0 (B, R), c0 (B, H), lengths (B,) int64.

    Returns y (T, B, R), h_n (B, R), c_n (B, H) (empty unless LSTM), and what
    backward needs: the saved gates and cell states (empty unless ``save``,
    which a caller that will not differentiate clears) and the pre-projection outputs.
    """
    y, h_n, c_n, ws, cs, ms = K.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, reverse, save)
    return y, h_n, c_n, ws, cs, ms


@torch.library.custom_op("fused_rnn::sequence_backward", mutates_args=())
def sequence_backward(
    dy: Tensor, dh_n: Tensor, dc_n: Tensor | None, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor,
    c0: Tensor | None, lengths: Tensor, y: Tensor, ws: Tensor, cs: Tensor, cell: int, reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gate gradients (T, B, GS); dh0 (B, R) and dc0 (B, H) in the compute dtype (dc0 empty unless LSTM);
    the gradient of every step's h (T, B, R) with a projection (else empty)."""
    dg, dh0, dc0, dhs = K.sequence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, reverse)
    return dg, dh0, dc0, dhs


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@sequence.register_fake
def _(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, reverse, save):
    T, B, _ = xp.shape
    R = w_hh.shape[1]
    H = w_hr.shape[1] if w_hr is not None else R
    acc = _acc(xp)
    lstm = cell == LSTM
    saved = K.SAVED[cell] * H if save else 0
    return (
        xp.new_empty(T, B, R), xp.new_empty(B, R), xp.new_empty((B, H) if lstm else (0,)),
        xp.new_empty((T, B, saved) if saved else (0,), dtype=acc),
        xp.new_empty((T, B, H) if lstm and save else (0,), dtype=acc),
        xp.new_empty((T, B, H) if w_hr is not None else (0,)),
    )


@sequence_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, reverse):
    T, B, R = y.shape
    H = w_hr.shape[1] if w_hr is not None else R
    gs = (4 if cell in (LSTM, GRU) else 1) * H
    acc = _acc(y)
    return (
        y.new_empty(T, B, gs), y.new_empty(B, R, dtype=acc), y.new_empty((B, H) if cell == LSTM else (0,), dtype=acc),
        y.new_empty((T, B, R) if w_hr is not None else (0,)),
    )


def previous_states(y: Tensor, h0: Tensor, lengths: Tensor, reverse: bool) -> Tensor:
    """h_{t-1} for every time position, (T, B, H): what each step's recurrent product read.

    Forward: [h0, y_0, ..., y_{T-2}]. Reverse: y_{t+1}, and h0 at each row's last valid step.
    Positions past a row's length get values whose gate gradients are zero.
    """
    if not reverse:
        return torch.cat([h0.unsqueeze(0), y[:-1]], dim=0)
    prev = torch.cat([y[1:], torch.zeros_like(y[:1])], dim=0)
    rows = torch.arange(y.shape[1], device=y.device)
    return prev.index_put((lengths - 1, rows), h0)


def _setup(ctx, inputs, output) -> None:
    xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, reverse, _save = inputs
    y, h_n, c_n, ws, cs, ms = output
    ctx.cell, ctx.reverse, ctx.has_bhn = cell, reverse, b_hn is not None
    ctx.mark_non_differentiable(ws, cs, ms)
    # xp and b_hn only for double backward (_recomputed_grads); the kernel's backward does not read them.
    ctx.save_for_backward(xp, b_hn, w_hh, w_hr, h0, c0, lengths, y, ws, cs, ms)


def _recomputed_grads(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor) -> tuple[Tensor | None, ...]:
    """The op's input gradients by autograd through ``reference.sequence``, keeping the graph (double backward).

    Half types recompute in fp32, as the kernels compute; the gradients come back in the inputs' dtypes.
    """
    xp, b_hn, w_hh, w_hr, h0, c0, lengths = ctx.saved_tensors[:7]
    mode, reverse, dtype = MODES[ctx.cell], ctx.reverse, xp.dtype
    acc = _acc(xp)

    def recurrence(*inputs: Tensor | None) -> tuple[Tensor, ...]:
        with torch.autocast(xp.device.type, enabled=False):
            inputs = [t.to(acc) if t is not None else None for t in inputs]
            y, h_n, c_n = reference.sequence(mode, *inputs, lengths, reverse)
        outs = (y, h_n) if c_n is None else (y, h_n, c_n)
        return tuple(o.to(dtype) for o in outs)

    grads = (dy, dh_n, dc_n) if ctx.cell == LSTM else (dy, dh_n)
    return _differentiable_grads(recurrence, (xp, w_hh, b_hn, w_hr, h0, c0), grads, ctx.needs_input_grad[:6])


def _backward(ctx, dy, dh_n, dc_n, _dws, _dcs, _dms):
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        return (*_recomputed_grads(ctx, dy, dh_n, dc_n), None, None, None, None)
    _xp, _b_hn, w_hh, w_hr, h0, c0, lengths, y, ws, cs, ms = ctx.saved_tensors
    cell = ctx.cell
    dg, dh0, dc0, dhs = sequence_backward(
        dy, dh_n, dc_n if cell == LSTM else None, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, ctx.reverse
    )
    T, B, R = y.shape
    H = ms.shape[-1] if w_hr is not None else R
    if cell == GRU:
        d_xp = dg[..., : 3 * H]
        d_hidden = torch.cat([dg[..., : 2 * H], dg[..., 3 * H :]], dim=-1)
        d_bhn = dg[..., 3 * H :].sum((0, 1)) if ctx.has_bhn else None
    else:
        d_xp, d_hidden, d_bhn = dg, dg, None
    d_w = d_wr = None
    if ctx.needs_input_grad[1]:
        h_prev = previous_states(y, h0, lengths, ctx.reverse)
        d_w = d_hidden.reshape(T * B, d_hidden.shape[-1]).t().mm(h_prev.reshape(T * B, R).to(d_hidden.dtype))
    if w_hr is not None and ctx.needs_input_grad[3]:
        d_wr = dhs.reshape(T * B, R).t().mm(ms.reshape(T * B, H))
    d_c0 = dc0.to(c0.dtype) if cell == LSTM and c0 is not None else None
    return d_xp, d_w, d_bhn, d_wr, dh0.to(h0.dtype), d_c0, None, None, None, None


sequence.register_autograd(_backward, setup_context=_setup)
