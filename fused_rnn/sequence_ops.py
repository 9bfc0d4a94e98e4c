"""One recurrent layer over a whole sequence, in one or both directions, as a torch.library custom op.

``fused_rnn::sequence`` takes the layer input x (T, B, I) and the layer's
weights, stacked over its D directions (D = 2 for a bidirectional layer,
whose direction 1 runs in reverse). It computes the input projection of the
whole sequence for every direction, xp = x W_ih^T + the foldable biases
(``project``: one torch GEMM; GRU keeps b_hn, the hidden-side bias of n,
apart), then runs the time loop in one Triton launch for both directions (or
one per direction, as the plan says). Its autograd runs the reverse-time Triton kernel for the gate
gradients and the carried state gradient, then takes the weight gradients
from one GEMM each over the whole sequence: dW_hh from the states each step
read, and, for the projection, dX = dG_x W_ih, dW_ih = dG_x^T X and the bias
gradients as column sums, as autograd through a torch F.linear would.

What the op keeps for backward is what the kernels' backward and those GEMMs
read: x (which an F.linear outside the op would keep too), the weights, the
states, y and the saved gates (and cell states) when training. The projection
xp itself is a temporary of the forward: it is not kept.

Double backward: when the backward itself is being recorded
(``create_graph=True``), the op's input gradients come instead from autograd
through a plain-torch recomputation of the layer-direction over time from the
saved x and weights (``project``, then ``reference.sequence`` with the
reference cells), keeping its graph, so gradients of gradients work to any
order. Without create_graph the Triton kernel runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch, reference
from .cell_ops import _differentiable_grads
from .kernels import sequence_kernels as K
from .kernels.launch import SequencePlan, interpreting

LSTM, GRU, SLSTM = K.LSTM, K.GRU, K.SLSTM
MODES = {cell: mode for mode, cell in K.CELLS.items()}  # torch.nn's mode name of each cell id


def plan_for(cell: int, batch: int, w_hh: Tensor, w_hr: Tensor | None, dtype: torch.dtype,
             device: torch.device, layer_norm: bool = False) -> SequencePlan:
    """The dispatcher's plan for the sequence kernels of one layer (w_hh (D, G, R), or (D, G, HD) with heads:
    D directions; ``layer_norm``: haste's LayerNorm cell, "LN_" + its mode) on ``device``: the interpreter runs
    it one step and phase per launch (its programs run one after another)."""
    directions, _, hidden, state, head_dim = K.layer_sizes(w_hh, w_hr, cell)
    proj = state if w_hr is not None else 0
    sms, shared = dispatch.device_sms(device), dispatch.device_shared(device)
    mode = ("LN_" if layer_norm else "") + MODES[cell]
    return dispatch.sequence_plan(mode, batch, hidden, proj, dtype, sms, not interpreting(), shared, directions,
                                  head_dim if head_dim < hidden else 0)


def project(x: Tensor, w_ih: Tensor | None, b_ih: Tensor | None, b_hh: Tensor | None,
            cell: int) -> tuple[Tensor, Tensor | None]:
    """Input projection of the whole sequence for D directions in one GEMM, (T, B, I) -> (T, B, D*G), the
    directions side by side, with the biases folded in. w_ih (D, G, I), or None when x is the projection
    already (T, B, D*G) (FlashRNN's Wx); b_ih (D, G) or None; b_hh (D, G) or None (with b_ih only).

    GRU keeps b_hn (D, H) apart (it sits inside r * (W_hn h + b_hn)); it is returned separately. The op's
    forward, its double-backward recomputation and the layers' stepwise path all project with this.
    """
    linear = (lambda bias: x if bias is None else x + bias) if w_ih is None else (
        lambda bias: F.linear(x, w_ih.reshape(-1, w_ih.shape[2]), bias))
    if b_ih is None:
        return linear(None), None
    if b_hh is None:
        return linear(b_ih.reshape(-1)), None
    if cell == GRU:
        hidden = b_hh.shape[1] // 3
        b_hn = b_hh[:, 2 * hidden :]
        bias = b_ih + torch.cat([b_hh[:, : 2 * hidden], torch.zeros_like(b_hn)], dim=1)
        return linear(bias.reshape(-1)), b_hn
    return linear((b_ih + b_hh).reshape(-1)), None


@torch.library.custom_op("fused_rnn::sequence", mutates_args=())
def sequence(
    x: Tensor, w_ih: Tensor | None, b_ih: Tensor | None, b_hh: Tensor | None, w_hh: Tensor, w_hr: Tensor | None,
    h0: Tensor, c0: Tensor | None, lengths: Tensor, cell: int, reverse: bool, save: bool, state_grads: bool = False,
    keep: Tensor | None = None, ln: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """D directions (1, or 2: a bidirectional layer, direction 1 in reverse; ``reverse`` reverses a single
    direction): x (T, B, I), w_ih (D, G, I) (or None: x is the projection, (T, B, D*G)), b_ih and b_hh (D, G)
    or None (``project``), w_hh (D, G, R) (with heads
    (D, G, HD), each head's blocks of a block-diagonal W_hh), w_hr (D, R, H) LSTM projection or None (then
    R = H), h0 (D, B, R), c0 (D, B, S*H) or None (LSTM: c; sLSTM: c, n, m side by side), lengths (B,) int64.

    Returns y (T, B, D*R) (the directions side by side, as torch.nn's output), h_n (D, B, R), c_n (D, B, S*H)
    (empty unless LSTM or sLSTM), and what backward needs: the saved gates and owned states of every step
    (empty unless ``save``, which a caller that will not differentiate clears) and the pre-projection outputs.
    With ``state_grads`` the owned states of every step are a differentiable output (FlashRNN's API returns
    them); else gradients reach only y and the final states. ``keep``: zoneout's keep-the-new-h factors,
    (T, B, D*H) (training masks, the directions side by side) or (1,) (eval: 1 - p), or None. ``ln``: haste's
    layer normalisation of the recurrent products (LSTM and GRU; ``sequence_forward``), (D, G + 2H) (GRU (D, G)),
    or None; then the seventh output is what its backward reads (empty unless ``save``). The input projection
    (``project``) is computed here and not kept.
    """
    xp, b_hn = project(x, w_ih, b_ih, b_hh, cell)
    plan = plan_for(cell, x.shape[1], w_hh, w_hr, xp.dtype, xp.device, ln is not None)
    return K.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, reverse, save, plan, keep, ln)


@torch.library.custom_op("fused_rnn::sequence_backward", mutates_args=())
def sequence_backward(
    dy: Tensor, dh_n: Tensor, dc_n: Tensor | None, w_hh: Tensor, w_hr: Tensor | None, h0: Tensor,
    c0: Tensor | None, lengths: Tensor, y: Tensor, ws: Tensor, cs: Tensor, cell: int, reverse: bool,
    dcs: Tensor | None = None, keep: Tensor | None = None, ln: Tensor | None = None, ns: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gate gradients (D, T, B, GS); dh0 (D, B, R) and dc0 (D, B, C*H) in the compute dtype (the carried states:
    LSTM c, sLSTM c and n; empty for GRU and RNN); the gradient of every step's h (D, T, B, R) with a
    projection (else empty); with layer normalisation the gradients of the raw recurrent products and (LSTM)
    of LN(c) (D, T, B, 4H (+ H)) (else empty). dcs (D, T, B, C*H): gradients of the carried states at every
    step, or None; keep: the forward's zoneout factors; ln, ns: the forward's normalisation and its saved
    products and statistics."""
    plan = plan_for(cell, y.shape[1], w_hh, w_hr, y.dtype, y.device, ln is not None)
    return K.sequence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, reverse, plan, dcs, keep,
                               ln, ns)


def _acc(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@sequence.register_fake
def _(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, cell, reverse, save, state_grads=False, keep=None, ln=None):
    T, B, _ = x.shape
    D, _, H, R, _ = K.layer_sizes(w_hh, w_hr, cell)
    dtype = x.dtype if w_ih is None else torch.promote_types(x.dtype, w_ih.dtype)  # xp's, F.linear's result
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    owned = K.OWNED[cell] if cell != GRU else 0
    saved = (K.SAVED[cell] or (1 if keep is not None else 0)) * H if save else 0
    return (
        x.new_empty(T, B, D * R, dtype=dtype), x.new_empty(D, B, R, dtype=dtype),
        x.new_empty((D, B, owned * H) if owned else (0,), dtype=dtype),
        x.new_empty((D, T, B, saved) if saved else (0,), dtype=acc),
        x.new_empty((D, T, B, owned * H) if owned and save else (0,), dtype=acc),
        x.new_empty((D, T, B, H) if w_hr is not None else (0,), dtype=dtype),
        x.new_empty((D, T, B, 4 * H + 4) if ln is not None and save else (0,), dtype=acc),
    )


@sequence_backward.register_fake
def _(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, reverse, dcs=None, keep=None, ln=None, ns=None):
    T, B, _ = y.shape
    D, G, H, R, _ = K.layer_sizes(w_hh, w_hr, cell)
    gs = (4 if G > H else 1) * H
    acc = _acc(y)
    carried = K.CARRIED[cell]
    return (
        y.new_empty(D, T, B, gs), y.new_empty(D, B, R, dtype=acc),
        y.new_empty((D, B, carried * H) if carried else (0,), dtype=acc),
        y.new_empty((D, T, B, R) if w_hr is not None else (0,)),
        y.new_empty((D, T, B, (5 if cell == LSTM else 4) * H) if ln is not None else (0,)),
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


# The op's differentiable tensor inputs, in order: what backward returns gradients for (then 6 Nones, then ln's).
INPUTS = ("x", "w_ih", "b_ih", "b_hh", "w_hh", "w_hr", "h0", "c0")


def _setup(ctx, inputs, output) -> None:
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, cell, reverse, _save, *extra = inputs
    state_grads, keep, ln = (extra + [False, None, None][len(extra):])
    y, _h_n, _c_n, ws, cs, ms, ns = output
    ctx.cell, ctx.reverse, ctx.state_grads = cell, reverse, bool(state_grads)
    ctx.mark_non_differentiable(ws, ms, ns, *(() if ctx.state_grads else (cs,)))
    # x and w_ih for dW_ih and dX (as F.linear's autograd would keep them), the biases (parameters) for the
    # double-backward recomputation; not xp, which the forward computed and dropped.
    ctx.save_for_backward(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, y, ws, cs, ms, keep, ln, ns)


def _recomputed_grads(ctx, dy: Tensor, dh_n: Tensor, dc_n: Tensor, dcs: Tensor | None) -> tuple[Tensor | None, ...]:
    """The op's input gradients by autograd through ``project`` and ``reference.sequence``, keeping the graph
    (double backward).

    Half types recompute in fp32, as the kernels compute; the gradients come back in the inputs' dtypes.
    """
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths = ctx.saved_tensors[:9]
    keep, ln = ctx.saved_tensors[13:15]
    cell, reverse, dtype = ctx.cell, ctx.reverse, ctx.saved_tensors[9].dtype  # y's: the outputs' dtype
    acc = _acc(x)
    owned = K.OWNED[cell] if cell != GRU else 0

    def recurrence(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, ln) -> tuple[Tensor, ...]:
        with torch.autocast(x.device.type, enabled=False):
            x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, ln = (
                t.to(acc) if t is not None else None for t in (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, ln)
            )
            xp, b_hn = project(x, w_ih, b_ih, b_hh, cell)
            gates = w_hh.shape[1]  # G rows of each direction: its columns of xp
            per_direction = [
                reference.sequence(MODES[cell], xp[..., d * gates : (d + 1) * gates], w_hh[d],
                                   None if b_hn is None else b_hn[d], None if w_hr is None else w_hr[d], h0[d],
                                   None if c0 is None else c0[d], lengths, reverse or d == 1, with_states=True,
                                   keep=_keep_of(keep, d, w_hh.shape[1] // K.GATES[cell]),
                                   ln=None if ln is None else ln[d])
                for d in range(w_hh.shape[0])
            ]
            y = torch.cat([o[0] for o in per_direction], dim=-1)
            h_n = torch.stack([o[1] for o in per_direction])
            c_n = torch.stack([o[2] for o in per_direction]) if owned else None
            cs = torch.stack([o[3] for o in per_direction]) if owned else None
        outs = (y, h_n) if c_n is None else (y, h_n, c_n, cs)
        return tuple(o.to(dtype) for o in outs)

    grads = (dy, dh_n, dc_n, dcs) if owned else (dy, dh_n)
    inputs = (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, ln)
    return _differentiable_grads(recurrence, inputs, grads, (*ctx.needs_input_grad[: len(INPUTS)],
                                                             ctx.needs_input_grad[-1]))


def _keep_of(keep: Tensor | None, d: int, hidden: int) -> Tensor | None:
    """Direction d's zoneout factors (T, B, H) of the op's (T, B, D*H), or the one eval factor."""
    if keep is None or keep.numel() == 1:
        return keep
    return keep[..., d * hidden : (d + 1) * hidden]


def recurrent_weight_grad(d_hidden: Tensor, prev: Tensor, head_dim: int) -> Tensor:
    """dW_hh of one direction from the gate gradients that reach it, (T*B, G), and the states each step read,
    (T*B, R): one GEMM, d_hidden^T prev (G, R); with heads (W_hh stored (G, HD)) only each head's diagonal
    blocks, one batched GEMM over the heads (G rows = gates x heads x HD)."""
    rows, hidden = d_hidden.shape[1], prev.shape[1]
    if head_dim == hidden:
        return d_hidden.t().mm(prev)
    heads = hidden // head_dim
    dg = d_hidden.reshape(-1, rows // hidden, heads, head_dim).permute(2, 1, 3, 0)  # (heads, gates, HD, T*B)
    p = prev.reshape(-1, heads, head_dim).permute(1, 0, 2)  # (heads, T*B, HD)
    return torch.matmul(dg, p[:, None]).permute(1, 0, 2, 3).reshape(rows, head_dim)


def layer_norm_grads(dg: Tensor, dnorm: Tensor, ns: Tensor, cs: Tensor, lengths: Tensor, cell: int) -> Tensor:
    """The gradient of the layer normalisation's parameters ``ln`` (D, G + 2H) (GRU (D, G)) from the backward
    kernel's gate gradients dg (D, T, B, 4H), its ``dnorm`` (e, the gradient of LN(c), in columns 4H:5H), the
    forward's saved raw products and statistics ``ns`` (D, T, B, 4H + 4) and c's ``cs``: the gains' as the sums
    over every step and row of the normalised products' gradients times the normalised products (GRU: the
    hidden side's r, z and n), c's bias's as the sum of e. Positions past a row's length count nothing."""
    H = cs.shape[-1] if cell == LSTM else dg.shape[-1] // 4
    G = (4 if cell == LSTM else 3) * H
    valid = (torch.arange(dg.shape[1], device=dg.device)[:, None] < lengths[None, :])[None, :, :, None]
    d_hidden = dg if cell == LSTM else torch.cat([dg[..., : 2 * H], dg[..., 3 * H :]], dim=-1)
    q_hat = (ns[..., :G] - ns[..., 4 * H : 4 * H + 1]) * ns[..., 4 * H + 1 : 4 * H + 2]
    d_gain = torch.where(valid, d_hidden.to(q_hat.dtype) * q_hat, 0.0).sum((1, 2))
    if cell != LSTM:
        return d_gain
    e = dnorm[..., 4 * H :].to(q_hat.dtype)
    c_hat = torch.where(valid, (cs - ns[..., 4 * H + 2 : 4 * H + 3]) * ns[..., 4 * H + 3 :], 0.0)
    return torch.cat([d_gain, (e * c_hat).sum((1, 2)), e.sum((1, 2))], dim=-1)


def _backward(ctx, dy, dh_n, dc_n, _dws, dcs, _dms, _dns):
    cell = ctx.cell
    carried = K.CARRIED[cell]
    dcs = dcs if ctx.state_grads and carried else None
    if torch.is_grad_enabled():  # create_graph=True: a differentiable backward
        *grads, d_ln = _recomputed_grads(ctx, dy, dh_n, dc_n, dcs)
        return (*grads, None, None, None, None, None, None, d_ln)
    x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, y, ws, cs, ms, keep, ln, ns = ctx.saved_tensors
    need = dict(zip(INPUTS, ctx.needs_input_grad))
    T, B, _ = y.shape
    D, _, H, R, HD = K.layer_sizes(w_hh, w_hr, cell)
    # the carried states' gradients (LSTM c; sLSTM c and n: m, the stabiliser, has none, as in FlashRNN)
    dc_carried = dc_n[..., : carried * H] if carried else None
    dg, dh0, dc0, dhs, dnorm = sequence_backward(
        dy, dh_n, dc_carried, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell, ctx.reverse,
        None if dcs is None else dcs[..., : carried * H], keep, ln, ns,
    )
    if cell == GRU:
        d_xp = dg[..., : 3 * H]  # the gradient of xp (r, z, n input sides)
        d_hidden = torch.cat([dg[..., : 2 * H], dg[..., 3 * H :]], dim=-1)
    else:
        d_xp, d_hidden = dg, dg
    if ln is not None:  # W_hh multiplies the normalised products' inputs: their gradients reach it
        d_hidden = dnorm[..., : d_hidden.shape[-1]]
    G, I = d_xp.shape[-1], x.shape[-1]
    # (T*B, D*G): the directions side by side, as project's xp has them
    d_xp2 = d_xp.permute(1, 2, 0, 3).reshape(T * B, D * G)
    # The input projection's gradients, as F.linear's autograd gave them (project: xp = x W_ih^T + bias).
    d_x = d_wi = d_bi = d_bh = None
    if need["x"] and w_ih is None:  # x was the projection
        d_x = d_xp2.view(T, B, D * G).to(x.dtype)
    elif need["x"]:
        d_x = d_xp2.mm(w_ih.reshape(D * G, I).to(d_xp2.dtype)).view(T, B, I).to(x.dtype)
    if need["w_ih"]:
        d_wi = d_xp2.t().mm(x.reshape(T * B, I).to(d_xp2.dtype)).view(D, G, I).to(w_ih.dtype)
    if b_ih is not None and (need["b_ih"] or need["b_hh"]):
        d_bias = d_xp2.sum(0).view(D, G)  # the folded bias's: b_ih's, and b_hh's where it is folded
        d_bi = d_bias.to(b_ih.dtype) if need["b_ih"] else None
        if need["b_hh"] and b_hh is not None:
            if cell == GRU:  # b_hh[:2H] folded into xp, b_hh[2H:] = b_hn from the hidden-side n gradients
                d_bh = torch.cat([d_bias[:, : 2 * H], dg[..., 3 * H :].sum((1, 2))], dim=1).to(b_hh.dtype)
            else:
                d_bh = d_bias.to(b_hh.dtype)
    d_w = d_wr = None
    # One GEMM per direction (not a bmm: under torch.compile with packed input B is data-dependent, and
    # Inductor's bmm lowering guards on it).
    if need["w_hh"]:
        d_w = torch.stack([
            recurrent_weight_grad(
                d_hidden[d].reshape(T * B, d_hidden.shape[-1]),
                previous_states(y[..., d * R : (d + 1) * R], h0[d], lengths, ctx.reverse or d == 1)
                .reshape(T * B, R).to(d_hidden.dtype), HD)
            for d in range(D)
        ]).to(w_hh.dtype)
    if w_hr is not None and need["w_hr"]:
        d_wr = torch.stack([dhs[d].reshape(T * B, R).t().mm(ms[d].reshape(T * B, H)) for d in range(D)])
    d_c0 = None
    if carried and c0 is not None:  # sLSTM: no gradient reaches the initial stabiliser m
        d_c0 = torch.cat([dc0, dc0.new_zeros(D, B, c0.shape[-1] - carried * H)], dim=-1).to(c0.dtype)
    d_ln = None
    if ln is not None and ctx.needs_input_grad[-1]:
        d_ln = layer_norm_grads(dg, dnorm, ns, cs, lengths, cell).to(ln.dtype)
    return d_x, d_wi, d_bi, d_bh, d_w, d_wr, dh0.to(h0.dtype), d_c0, None, None, None, None, None, None, d_ln


sequence.register_autograd(_backward, setup_context=_setup)
