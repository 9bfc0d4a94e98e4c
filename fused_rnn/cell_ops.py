"""The fused cell steps as torch.library custom ops, with fake kernels and autograd.

Each op takes the gate products ig = x W_ih^T and hg = h W_hh^T (torch
matmuls), the optional biases and the previous state, and runs one Triton
kernel. Backward runs one Triton kernel too, unless the graph of the backward
itself is being recorded (``create_graph=True``): then it takes a differentiable
path (plain torch ops from ``reference``), so double backward works.

Being custom ops, they are opaque to torch.compile, which traces models that
use them without a graph break.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import reference
from .kernels import cell_kernels as K

# ----------------------------------------------------------------------------
# Forward and backward ops
# ----------------------------------------------------------------------------


@torch.library.custom_op("fused_rnn::lstm_cell", mutates_args=())
def lstm_cell(
    ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, cx: Tensor
) -> tuple[Tensor, Tensor]:
    """ig, hg (N, 4H), biases (4H,) or None, cx (N, H) -> (h', c'), each (N, H)."""
    return K.lstm_cell_forward(ig, hg, b_ih, b_hh, cx)


@torch.library.custom_op("fused_rnn::lstm_cell_backward", mutates_args=())
def lstm_cell_backward(
    dhy: Tensor | None, dcy: Tensor | None, ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, cx: Tensor
) -> tuple[Tensor, Tensor]:
    """Gradients of h' and c' (either may be None) -> gate gradients (N, 4H), dcx (N, H)."""
    return K.lstm_cell_backward(dhy, dcy, ig, hg, b_ih, b_hh, cx)


@torch.library.custom_op("fused_rnn::gru_cell", mutates_args=())
def gru_cell(ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, hx: Tensor) -> Tensor:
    """ig, hg (N, 3H), biases (3H,) or None, hx (N, H) -> h' (N, H)."""
    return K.gru_cell_forward(ig, hg, b_ih, b_hh, hx)


@torch.library.custom_op("fused_rnn::gru_cell_backward", mutates_args=())
def gru_cell_backward(
    dhy: Tensor, ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, hx: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradient of h' -> d_ig (N, 3H), d_hg (N, 3H), the direct part of dhx (N, H)."""
    return K.gru_cell_backward(dhy, ig, hg, b_ih, b_hh, hx)


@torch.library.custom_op("fused_rnn::rnn_cell", mutates_args=())
def rnn_cell(ig: Tensor, hg: Tensor, b_ih: Tensor | None, b_hh: Tensor | None, relu: bool) -> Tensor:
    """ig, hg (N, H), biases (H,) or None -> h' (N, H) = tanh or relu of their sum."""
    return K.rnn_cell_forward(ig, hg, b_ih, b_hh, relu)


@torch.library.custom_op("fused_rnn::rnn_cell_backward", mutates_args=())
def rnn_cell_backward(dhy: Tensor, hy: Tensor, relu: bool) -> Tensor:
    """Gradient of h' and h' (N, H) -> pre-activation gradient (N, H)."""
    return K.rnn_cell_backward(dhy, hy, relu)


# ----------------------------------------------------------------------------
# Fake (meta) kernels: shapes only, for torch.compile and meta tensors
# ----------------------------------------------------------------------------


def _like(t: Tensor, *shape: int) -> Tensor:
    return t.new_empty(shape)


@lstm_cell.register_fake
def _(ig, hg, b_ih, b_hh, cx):
    return _like(ig, *cx.shape), _like(ig, *cx.shape)


@lstm_cell_backward.register_fake
def _(dhy, dcy, ig, hg, b_ih, b_hh, cx):
    return _like(ig, *ig.shape), _like(ig, *cx.shape)


@gru_cell.register_fake
def _(ig, hg, b_ih, b_hh, hx):
    return _like(ig, *hx.shape)


@gru_cell_backward.register_fake
def _(dhy, ig, hg, b_ih, b_hh, hx):
    return _like(ig, *ig.shape), _like(ig, *ig.shape), _like(ig, *hx.shape)


@rnn_cell.register_fake
def _(ig, hg, b_ih, b_hh, relu):
    return _like(ig, *ig.shape)


@rnn_cell_backward.register_fake
def _(dhy, hy, relu):
    return _like(hy, *hy.shape)


# ----------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------


def _differentiable_grads(
    fn: Callable, inputs: Sequence[Tensor | None], grads: Sequence[Tensor | None], needs: Sequence[bool]
) -> tuple[Tensor | None, ...]:
    """Gradients of ``fn(*inputs)`` by autograd through plain torch ops, keeping their graph.

    Used when backward itself is being differentiated (create_graph=True).
    Each input is first aliased by a view: the gradient is then taken with
    respect to this use of the input only, not through other paths by which
    it may feed another input (a GRU's hx also feeds hg = hx W_hh^T), while
    the result stays differentiable with respect to the input itself.
    """
    with torch.enable_grad():
        inputs = [x.view_as(x) if x is not None else None for x in inputs]
        outs = fn(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
    wanted = [i for i, (x, need) in enumerate(zip(inputs, needs)) if need and x is not None]
    if not pairs or not wanted:
        return tuple(None for _ in inputs)
    got = torch.autograd.grad(
        [o for o, _ in pairs], [inputs[i] for i in wanted], [g for _, g in pairs], create_graph=True, allow_unused=True
    )
    result: list[Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, got):
        result[i] = g
    return tuple(result)


def _bias_grad(d: Tensor, needed: bool) -> Tensor | None:
    """Bias gradient: column sums of a gate gradient (N, G)."""
    return d.sum(0) if needed else None


def _save_inputs(ctx, inputs, output) -> None:
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(*inputs[:5])


def _lstm_backward(ctx, dhy: Tensor | None, dcy: Tensor | None):
    ig, hg, b_ih, b_hh, cx = ctx.saved_tensors
    if dhy is None and dcy is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():
        return _differentiable_grads(
            reference.lstm_from_gates, (ig, hg, b_ih, b_hh, cx), (dhy, dcy), ctx.needs_input_grad
        )
    dg, dcx = lstm_cell_backward(dhy, dcy, ig, hg, b_ih, b_hh, cx)
    need = ctx.needs_input_grad
    return dg, dg, _bias_grad(dg, need[2]), _bias_grad(dg, need[3]), dcx


def _gru_backward(ctx, dhy: Tensor | None):
    ig, hg, b_ih, b_hh, hx = ctx.saved_tensors
    if dhy is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():
        return _differentiable_grads(reference.gru_from_gates, (ig, hg, b_ih, b_hh, hx), (dhy,), ctx.needs_input_grad)
    dig, dhg, dhx = gru_cell_backward(dhy, ig, hg, b_ih, b_hh, hx)
    need = ctx.needs_input_grad
    return dig, dhg, _bias_grad(dig, need[2]), _bias_grad(dhg, need[3]), dhx


def _rnn_setup(ctx, inputs, output) -> None:
    ctx.set_materialize_grads(False)
    ctx.relu = inputs[4]
    ctx.save_for_backward(output)


def _rnn_backward(ctx, dhy: Tensor | None):
    (hy,) = ctx.saved_tensors
    if dhy is None:
        return None, None, None, None, None
    if torch.is_grad_enabled():
        # Differentiable in hy, whose own backward is this op's: double backward recurses cleanly.
        dpre = dhy * (hy > 0) if ctx.relu else dhy * (1 - hy * hy)
    else:
        dpre = rnn_cell_backward(dhy, hy, ctx.relu)
    need = ctx.needs_input_grad
    return dpre, dpre, _bias_grad(dpre, need[2]), _bias_grad(dpre, need[3]), None


lstm_cell.register_autograd(_lstm_backward, setup_context=_save_inputs)
gru_cell.register_autograd(_gru_backward, setup_context=_save_inputs)
rnn_cell.register_autograd(_rnn_backward, setup_context=_rnn_setup)
