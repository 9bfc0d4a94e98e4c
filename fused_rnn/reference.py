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


def slstm_from_gates(pre: Tensor, c: Tensor, n: Tensor, m: Tensor, first_zero: bool) -> tuple[Tensor, ...]:
    """sLSTM step from the pre-activations (N, 4H) (gates i, f, z, o, biases included), as FlashRNN computes it
    (``flashrnn/vanilla/slstm.py``): the stabiliser m = max(pre_i, log sigmoid(pre_f) + m_prev), or pre_i when
    ``first_zero``; i = exp(pre_i - m), f = exp(log sigmoid(pre_f) + m_prev - m); c = f c + i tanh(pre_z);
    n = max(f n + i, 1); h = sigmoid(pre_o) c / n. Returns (h, c, n, m).

    Its gradients are those of FlashRNN's hand-written backward (``vanilla_fwbw``), which its kernels follow:
    m is a constant (detached) and the clamp of n passes gradients as if absent (straight through).
    """
    i, f, z, o = pre.chunk(4, dim=-1)
    log_f_m = F.logsigmoid(f) + m
    m_new = (i if first_zero else torch.maximum(i, log_f_m)).detach()
    i_gate, f_gate = torch.exp(i - m_new), torch.exp(log_f_m - m_new)
    c_new = f_gate * c + i_gate * torch.tanh(z)
    u = f_gate * n + i_gate
    n_new = u + (torch.clamp(u, min=1.0) - u).detach()
    return torch.sigmoid(o) * c_new / n_new, c_new, n_new, m_new


# Layer normalisation's epsilon, haste's (lib/layer_norm_forward_gpu.cu.cc) and F.layer_norm's default.
LN_EPS = 1e-5


def layer_norm_lstm_from_gates(pre: Tensor, c: Tensor, gain_c: Tensor, bias_c: Tensor) -> tuple[Tensor, Tensor]:
    """haste's LayerNorm LSTM step from the pre-activations (N, 4H) (gates i, f, g, o, both normalised products
    and the bias added): c = f c + i g, h = o tanh(LN(c) gain_c + bias_c). Returns (h, c)."""
    i, f, g, o = pre.chunk(4, dim=-1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    c_norm = F.layer_norm(c_new, (c_new.shape[-1],), gain_c, bias_c, eps=LN_EPS)
    return torch.sigmoid(o) * torch.tanh(c_norm), c_new


def block_diagonal(w_hh: Tensor, hidden: int) -> Tensor:
    """The dense (G, H) W_hh of a block-diagonal one stored compact as (G, HD): row g * H + k * HD + d holds
    head k's block (FlashRNN's R[g, k, d, :]) at the columns of head k, zeros elsewhere."""
    rows, head = w_hh.shape
    if head == hidden:
        return w_hh
    heads, gates = hidden // head, rows // hidden
    eye = torch.eye(heads, dtype=w_hh.dtype, device=w_hh.device)
    return torch.einsum("gkdp,kj->gkdjp", w_hh.reshape(gates, heads, head, head), eye).reshape(rows, hidden)


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """(T, B) time index that reverses each row within its length (an involution)."""
    t = torch.arange(T, device=lengths.device)[:, None]
    return torch.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)


# The step functions of ``sequence``: (lstm, gru, rnn), each with the signature of the *_from_gates functions.
CELLS = (lstm_from_gates, gru_from_gates, rnn_from_gates)


def sequence(
    mode: str, xp: Tensor, w_hh: Tensor, b_hn: Tensor | None, w_hr: Tensor | None, h0: Tensor, c0: Tensor | None,
    lengths: Tensor, reverse: bool, cells: tuple[Callable, Callable, Callable] = CELLS, with_states: bool = False,
    keep: Tensor | None = None, ln: Tensor | None = None,
) -> tuple[Tensor, ...]:
    """One layer and direction over time, as ``fused_rnn::sequence`` computes it after its input projection
    (``sequence_ops.project``); mode is torch.nn's ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") or "SLSTM".

    xp (T, B, G) the input projection with the foldable biases added, w_hh (G, R) (or (G, HD), the heads of a
    block-diagonal one: ``block_diagonal``), b_hn (H,) GRU's hidden-side bias of n or None, w_hr (R, H) LSTM's
    projection or None (then R = H), h0 (B, R), c0 (B, H) (sLSTM: (B, 3H), c, n, m) or None (zeros; LSTM and
    sLSTM only), lengths (B,) int64. Row b runs its first lengths[b] steps (in reverse order when ``reverse``);
    its outputs past them are zero and its final state is the last valid one. Returns y (T, B, R), h_n (B, R)
    and c_n (B, H) or (B, 3H) (None unless LSTM or sLSTM), and with ``with_states`` the owned states of every
    step (T, B, H or 3H), zero past each length. ``cells``: the step functions (lstm, gru, rnn). ``keep``:
    zoneout's keep-the-new-h factors (T, B, H) at each time position, or one factor (1,); h = h_prev + keep
    (h_cell - h_prev) (haste's zoneout; LSTM without a projection, GRU, RNN). ``ln``: haste's layer
    normalisation (LSTM and GRU without a projection): (G + 2H,) for the LSTM, the gain of the normalised
    recurrent products (G), then c's gain and bias (``layer_norm_lstm_from_gates``); (G,) for the GRU, whose
    b_hn is added after the normalisation.
    """
    lstm_step, gru_step, rnn_step = cells
    T = xp.shape[0]
    if w_hr is None:
        w_hh = block_diagonal(w_hh, w_hh.shape[0] // {"LSTM": 4, "SLSTM": 4, "GRU": 3}.get(mode, 1))
    if reverse:
        idx = reverse_index(lengths, T)
        xp = xp.gather(0, idx[..., None].expand_as(xp))
        if keep is not None and keep.numel() > 1:
            keep = keep.gather(0, idx[..., None].expand_as(keep))
    valid = (torch.arange(T, device=xp.device)[:, None] < lengths[None, :])[..., None]
    if mode == "GRU" and b_hn is not None:
        b_h = torch.cat([torch.zeros_like(b_hn), torch.zeros_like(b_hn), b_hn])
        b_i = torch.zeros_like(b_h)
    else:
        b_i = b_h = None
    owned = {"LSTM": 1, "SLSTM": 3}.get(mode, 0)
    if owned and c0 is None:
        c0 = h0.new_zeros(h0.shape[0], owned * w_hh.shape[0] // 4)
    h, c, ys, cs = h0, (c0 if owned else None), [], []
    first_zero = mode == "SLSTM" and bool((c0.chunk(3, dim=-1)[1] == 0).all())
    for t in range(T):
        hg = F.linear(h, w_hh)
        if ln is not None:
            gates = hg.shape[-1]
            hg = F.layer_norm(hg, (gates,), ln[:gates], eps=LN_EPS)
        if mode == "SLSTM":
            h_new, *c_new = slstm_from_gates(xp[t] + hg, *c.chunk(3, dim=-1), first_zero and t == 0)
            c = torch.where(valid[t], torch.cat(c_new, dim=-1), c)
        elif mode == "LSTM" and ln is not None:
            hidden = c.shape[-1]
            h_new, c_new = layer_norm_lstm_from_gates(xp[t] + hg, c, *ln[4 * hidden :].chunk(2))
            c = torch.where(valid[t], c_new, c)
        elif mode == "LSTM":
            h_new, c_new = lstm_step(xp[t], hg, None, None, c)
            if w_hr is not None:
                h_new = F.linear(h_new, w_hr)
            c = torch.where(valid[t], c_new, c)
        elif mode == "GRU":
            h_new = gru_step(xp[t], hg, b_i, b_h, h)
        else:
            h_new = rnn_step(xp[t], hg, None, None, mode == "RNN_RELU")
        if keep is not None:
            h_new = h + (keep if keep.numel() == 1 else keep[t]) * (h_new - h)
        h = torch.where(valid[t], h_new, h)
        ys.append(torch.where(valid[t], h_new, torch.zeros_like(h_new)))
        if with_states and owned:
            cs.append(torch.where(valid[t], c, torch.zeros_like(c)))
    y = torch.stack(ys)
    if reverse:
        y = y.gather(0, idx[..., None].expand_as(y))
    if not with_states:
        return y, h, c
    states = torch.stack(cs) if owned else None
    if reverse and owned:
        states = states.gather(0, idx[..., None].expand_as(states))
    return y, h, c, states


def haste_indrnn(x: Tensor, h0: Tensor, kernel: Tensor, recurrent_scale: Tensor, bias: Tensor,
                 zoneout: float = 0.0, zoneout_mask: Tensor | None = None, training: bool = False) -> Tensor:
    """haste's IndRNN over time, as its PyTorch fallback computes it (``frameworks/pytorch/indrnn.py``,
    ``IndRNNScript``), in haste's layout: x (T, B, I), h0 (B, H), kernel (I, H), recurrent_scale (H,), bias (H,).

    h_t = tanh(x_t kernel + bias + recurrent_scale * h_{t-1}); with zoneout, in training
    h_t = (h_t - h_{t-1}) * mask_t + h_{t-1} (mask_t in {0, 1}, keep-new probability 1 - zoneout), in eval
    h_t = zoneout h_{t-1} + (1 - zoneout) h_t. Returns every state (T + 1, B, H), h0 first, as haste does.
    """
    h = [h0]
    wx = x @ kernel + bias
    for t in range(x.shape[0]):
        h.append(_haste_zoneout(torch.tanh(wx[t] + h[t] * recurrent_scale), h[t], zoneout,
                                None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h)


def _haste_zoneout(h_new: Tensor, h_prev: Tensor, zoneout: float, mask: Tensor | None, training: bool) -> Tensor:
    """haste's zoneout of h (frameworks/pytorch/*.py): in training (h_new - h_prev) * mask + h_prev, in eval
    zoneout h_prev + (1 - zoneout) h_new."""
    if not zoneout:
        return h_new
    if training:
        return (h_new - h_prev) * mask + h_prev
    return zoneout * h_prev + (1 - zoneout) * h_new


def haste_lstm(x: Tensor, h0: Tensor, c0: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor,
               zoneout: float = 0.0, zoneout_mask: Tensor | None = None, training: bool = False) -> tuple[Tensor, Tensor]:
    """haste's LSTM over time, as its PyTorch fallback computes it (``frameworks/pytorch/lstm.py``,
    ``LSTMScript``), in haste's layout and gate order i, g, f, o: kernel (I, 4H), recurrent_kernel (H, 4H),
    bias (4H,). Zoneout applies to h only (c is never zoned). Returns every h and c (T + 1, B, H), the initial
    ones first."""
    h, c = [h0], [c0]
    wx = x @ kernel
    for t in range(x.shape[0]):
        i, g, f, o = (h[t] @ recurrent_kernel + wx[t] + bias).chunk(4, 1)
        c.append(torch.sigmoid(f) * c[t] + torch.sigmoid(i) * torch.tanh(g))
        h.append(_haste_zoneout(torch.sigmoid(o) * torch.tanh(c[-1]), h[t], zoneout,
                                None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h), torch.stack(c)


def haste_gru(x: Tensor, h0: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor, recurrent_bias: Tensor,
              zoneout: float = 0.0, zoneout_mask: Tensor | None = None, training: bool = False) -> Tensor:
    """haste's GRU over time, as its PyTorch fallback computes it (``frameworks/pytorch/gru.py``, ``GRUScript``),
    in haste's layout and gate order z, r, g: kernel (I, 3H), recurrent_kernel (H, 3H), bias and recurrent_bias
    (3H,); h = z h_prev + (1 - z) tanh(x_g + r (h W_g + b_g)). Returns every h (T + 1, B, H), h0 first."""
    h = [h0]
    wx = x @ kernel + bias
    for t in range(x.shape[0]):
        xz, xr, xg = wx[t].chunk(3, 1)
        hz, hr, hg = (h[t] @ recurrent_kernel + recurrent_bias).chunk(3, 1)
        z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
        new = z * h[t] + (1 - z) * torch.tanh(xg + r * hg)
        h.append(_haste_zoneout(new, h[t], zoneout, None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h)


def haste_layer_norm_lstm(x: Tensor, h0: Tensor, c0: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor,
                          gamma: Tensor, gamma_h: Tensor, beta_h: Tensor, zoneout: float = 0.0,
                          zoneout_mask: Tensor | None = None, training: bool = False) -> tuple[Tensor, Tensor]:
    """haste's LayerNorm LSTM over time, as its PyTorch fallback computes it (``frameworks/pytorch/
    layer_norm_lstm.py``, ``LayerNormLSTMScript``), in haste's layout and gate order i, g, f, o: kernel (I, 4H),
    recurrent_kernel (H, 4H), bias (4H,), gamma (2, 4H) (the input and recurrent products' gains), gamma_h and
    beta_h (H,) (c's gain and bias). Each product is normalised over its 4H values (a gain, no bias; eps 1e-5):
    v = LN(h W_r) gamma[1] + LN(x W) gamma[0] + bias; c = f c + i g; h = o tanh(LN(c) gamma_h + beta_h); zoneout
    on h only. Returns every h and c (T + 1, B, H), the initial ones first."""
    h, c = [h0], [c0]
    gates = 4 * recurrent_kernel.shape[0]
    wx = F.layer_norm(x @ kernel, (gates,), weight=gamma[0], eps=LN_EPS)
    for t in range(x.shape[0]):
        v = F.layer_norm(h[t] @ recurrent_kernel, (gates,), weight=gamma[1], eps=LN_EPS) + wx[t] + bias
        i, g, f, o = v.chunk(4, 1)
        c.append(torch.sigmoid(f) * c[t] + torch.sigmoid(i) * torch.tanh(g))
        c_norm = F.layer_norm(c[-1], (gates // 4,), weight=gamma_h, bias=beta_h, eps=LN_EPS)
        h.append(_haste_zoneout(torch.sigmoid(o) * torch.tanh(c_norm), h[t], zoneout,
                                None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h), torch.stack(c)


def haste_layer_norm_gru(x: Tensor, h0: Tensor, kernel: Tensor, recurrent_kernel: Tensor, bias: Tensor,
                         recurrent_bias: Tensor, gamma: Tensor, zoneout: float = 0.0,
                         zoneout_mask: Tensor | None = None, training: bool = False) -> Tensor:
    """haste's LayerNorm GRU over time, as its PyTorch fallback computes it (``frameworks/pytorch/
    layer_norm_gru.py``, ``LayerNormGRUScript``), in haste's layout and gate order z, r, g: kernel (I, 3H),
    recurrent_kernel (H, 3H), bias and recurrent_bias (3H,), gamma (2, 3H). Each product normalised over its 3H
    values (a gain, no bias; eps 1e-5), the biases added after: Wx = LN(x W) gamma[0] + bias, Rh = LN(h W_r)
    gamma[1] + recurrent_bias; h = z h_prev + (1 - z) tanh(Wx_g + r Rh_g). Returns every h (T + 1, B, H), h0
    first."""
    h = [h0]
    gates = 3 * recurrent_kernel.shape[0]
    wx = F.layer_norm(x @ kernel, (gates,), weight=gamma[0], eps=LN_EPS) + bias
    for t in range(x.shape[0]):
        xz, xr, xg = wx[t].chunk(3, 1)
        hz, hr, hg = (F.layer_norm(h[t] @ recurrent_kernel, (gates,), weight=gamma[1], eps=LN_EPS)
                      + recurrent_bias).chunk(3, 1)
        z, r = torch.sigmoid(xz + hz), torch.sigmoid(xr + hr)
        new = z * h[t] + (1 - z) * torch.tanh(xg + r * hg)
        h.append(_haste_zoneout(new, h[t], zoneout, None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h)


def haste_layer_norm_indrnn(x: Tensor, h0: Tensor, kernel: Tensor, recurrent_scale: Tensor, bias: Tensor,
                            gamma: Tensor, zoneout: float = 0.0, zoneout_mask: Tensor | None = None,
                            training: bool = False) -> Tensor:
    """haste's LayerNorm IndRNN over time, as its PyTorch fallback computes it (``frameworks/pytorch/
    layer_norm_indrnn.py``, ``LayerNormIndRNNScript``): the IndRNN (``haste_indrnn``) on the normalised input
    product, Wx = LN(x kernel) gamma[0] + bias over its H values (gamma (2, H); gamma[1] is unused, in haste's CUDA
    code too). Returns every h (T + 1, B, H), h0 first."""
    h = [h0]
    wx = F.layer_norm(x @ kernel, (kernel.shape[1],), weight=gamma[0], eps=LN_EPS) + bias
    for t in range(x.shape[0]):
        h.append(_haste_zoneout(torch.tanh(wx[t] + h[t] * recurrent_scale), h[t], zoneout,
                                None if zoneout_mask is None else zoneout_mask[t], training))
    return torch.stack(h)
