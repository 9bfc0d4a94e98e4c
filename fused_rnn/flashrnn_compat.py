"""FlashRNN's functional API on fused-rnn's sequence kernels: ``fused_rnn.flashrnn`` for ``flashrnn.flashrnn``.

FlashRNN (NX-AI, package ``flashrnn``) takes the input projection and the
recurrent weights of every head as they are and returns every state at every
step. The tensors, in FlashRNN's default layouts (B batch, T time, NH heads,
D head width, H = NH x D):

- Wx (B, T, GW, NH, D): the input projection of each gate;
- R (GR, NH, D, D): the recurrent weights, block-diagonal: gate g of unit d of
  head k sums R[g, k, d, p] h[k, p] over the units p of its own head;
- b (GT, NH, D): the biases;
- states (S, B, 1, NH, D) or None (zeros): the initial states.

It returns (all states (S, B, T, NH, D), last states (S, B, 1, NH, D)).
Functions: "lstm" (gates i, f, z, o; states h, c), "slstm" (i, f, z, o;
h, c, n, m), "gru" (Wx gates r, z, n; R gates: the hidden-side n, r, z; b:
the hidden-side n, r, z, the input-side n; state h) and "elman" (tanh; h).

The recurrence runs in ``fused_rnn::sequence`` with x = Wx (no input GEMM),
W_hh the compact (G x H, D) view of R and one head per D units, so each
program sums over its own head and programs that own whole heads never meet.
Gradients are FlashRNN's: those of its autograd reference for LSTM, GRU and
Elman, and for the sLSTM those of its hand-written backward, which its
kernels follow (the stabiliser m has no gradient; the clamp n >= 1 passes
gradients as if absent). Gradients reach Wx, R, b and the initial states from
the h, c and n of every step and from the last states (none from m).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import sequence_ops
from .kernels import sequence_kernels as K

# FlashRNN's function name -> (cell, states)
FUNCTIONS = {"lstm": (K.LSTM, 2), "slstm": (K.SLSTM, 4), "gru": (K.GRU, 1), "elman": (K.RNN_TANH, 1)}


def _torch_gate_order(function: str, R: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """R (GR, NH, D, D) and b (GT, NH, D) in the kernels' gate order: (W_hh compact (G*H, D), b_ih (G*H,),
    b_hh or None). FlashRNN's GRU orders R (n, r, z) and b (hidden-side n, r, z, input-side n); torch's is
    (r, z, n) with b_hn inside r * (W_hn h + b_hn)."""
    gates, heads, head, _ = R.shape
    if function == "gru":
        w_hh = torch.cat([R[1:3], R[:1]]).reshape(gates * heads * head, head)
        b_ih = b[1:4].reshape(-1)
        b_hh = torch.cat([torch.zeros_like(b[1:3]), b[:1]]).reshape(-1)
        return w_hh, b_ih, b_hh
    return R.reshape(gates * heads * head, head), b.reshape(-1), None


def flashrnn(Wx: Tensor, R: Tensor, b: Tensor, states: Tensor | None = None, function: str = "lstm",
             config: object | None = None, backend: str = "fused-rnn", dtype: str | None = None,
             ) -> tuple[Tensor, Tensor]:
    """``flashrnn.flashrnn`` with the same arguments and results (module docstring), on fused-rnn's kernels.

    Runs in the dtype of Wx (fp32 state for half types; R, b and states are cast to it). ``config`` (its
    ``function`` is read when given), ``backend`` and ``dtype`` are accepted for FlashRNN's signature; the
    kernel is chosen by fused-rnn's dispatcher.
    """
    if config is not None:
        function = getattr(config, "function", function)
    if function not in FUNCTIONS:
        raise ValueError(f"unknown function {function!r}: fused-rnn runs {sorted(FUNCTIONS)}")
    cell, num_states = FUNCTIONS[function]
    B, T, _, heads, head = Wx.shape
    H = heads * head
    if R.shape[1:] != (heads, head, head):
        raise ValueError(f"R {tuple(R.shape)} does not match Wx's heads {heads} x {head}")
    dtype_ = Wx.dtype
    w_hh, b_ih, b_hh = _torch_gate_order(function, R.to(dtype_), b.to(dtype_))
    if states is None:
        states = Wx.new_zeros(num_states, B, 1, heads, head)
    if states.shape != (num_states, B, 1, heads, head):
        raise ValueError(f"states {tuple(states.shape)}: expected {(num_states, B, 1, heads, head)} for {function}")
    states = states.to(dtype_)
    h0 = states[0, :, 0].reshape(1, B, H)
    owned = states[1:, :, 0].permute(1, 0, 2, 3).reshape(1, B, (num_states - 1) * H) if num_states > 1 else None
    x = Wx.transpose(0, 1).reshape(T, B, -1)  # (T, B, G*H), gate g of unit k*D + d at column g*H + k*D + d
    lengths = torch.full((B,), T, dtype=torch.int64, device=Wx.device)
    y, h_n, c_n, _, cs, *_ = sequence_ops.sequence(
        x, None, b_ih[None], None if b_hh is None else b_hh[None], w_hh[None], None, h0, owned, lengths, cell,
        False, True, owned is not None,
    )
    every = [y]  # (T, B, H) per state
    last = [h_n[0]]  # (B, H) per state
    if owned is not None:
        every += list(cs[0].to(dtype_).chunk(num_states - 1, dim=-1))
        last += list(c_n[0].chunk(num_states - 1, dim=-1))
    every_t = torch.stack(every).reshape(num_states, T, B, heads, head).transpose(1, 2)
    last_t = torch.stack(last).reshape(num_states, B, 1, heads, head)
    return every_t, last_t
