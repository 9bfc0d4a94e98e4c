"""Recurrent layers with heads (a block-diagonal W_hh), and the sLSTM: the layers FlashRNN runs, as modules.

``MultiHeadLSTM``, ``MultiHeadGRU`` and ``MultiHeadRNN`` are fused_rnn's LSTM,
GRU and RNN whose recurrent matrix is block-diagonal: the hidden units split
into ``num_heads`` heads of D = hidden_size / num_heads units, and each unit's
gates sum over the previous h of its own head only. ``weight_hh_l{k}`` is
stored compact, (gates x hidden_size, D): rows as torch.nn's, and row
g*H + k*D + d holds head k's block (FlashRNN's R[g, k, d, :], so
``R.reshape(-1, D)`` loads a FlashRNN matrix). Everything else is torch.nn's
contract: constructor arguments, input projection inside, batch_first,
layers, bidirectional, PackedSequence, h0 (and c0), state_dict, autocast,
torch.compile. With ``num_heads=1`` a layer is exactly fused_rnn's (and so
torch.nn's) layer: same parameters, same initialisation, same results.

``sLSTM`` is xLSTM's scalar-memory LSTM as FlashRNN computes it (gates i, f,
z, o; exponential input and forget gates with the stabiliser m; docs/cells.md),
with heads likewise. Its state is four tensors (h, c, n, m), each (L*D, B, H):
``hx`` and the returned state are 4-tuples where an LSTM's are pairs. Zero
initial states (the default) start as FlashRNN's do: with n = 0 everywhere the
first step takes m from the input gate.

Where no Triton kernel runs (CPU tensors without the interpreter), these
layers run a plain-torch loop over the reference cells (torch.nn cannot run
them), with the same results and gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import GRU, LSTM, RNN, fused_forward
from .path_report import log_call


class _Heads:
    """Mixin of the multi-head layers: ``num_heads`` heads of the recurrent matrix, W_hh stored compact."""

    num_heads: int = 1

    def _use_heads(self, num_heads: int) -> None:
        """Replace every W_hh by its compact (G, hidden_size / num_heads) form, initialised as torch.nn does."""
        if num_heads < 1 or self.hidden_size % num_heads:
            raise ValueError(f"num_heads must divide hidden_size {self.hidden_size}, got {num_heads}")
        if num_heads > 1 and self.proj_size > 0:
            raise ValueError("heads with proj_size are not supported")
        self.num_heads = num_heads
        if num_heads == 1:
            return
        head = self.hidden_size // num_heads
        for name in self._flat_weights_names:
            if name.startswith("weight_hh"):
                old = getattr(self, name)
                setattr(self, name, nn.Parameter(old.new_empty(old.shape[0], head)))
        self._init_flat_weights()
        self.reset_parameters()

    @property
    def head_size(self) -> int:
        """Units per head."""
        return self.hidden_size // self.num_heads

    def _torch_runs_it(self) -> bool:
        """Whether torch.nn's own implementation computes this layer (one head, a torch.nn cell)."""
        return self.num_heads == 1 and self.mode != "SLSTM"

    def flatten_parameters(self) -> None:
        """cuDNN's flat weight buffer, for the layers cuDNN can run; a block-diagonal W_hh or an sLSTM stays as
        it is."""
        if self._torch_runs_it():
            super().flatten_parameters()

    def forward(self, input, hx=None):
        if self._torch_runs_it():
            return super().forward(input, hx)
        log_call(self, input)
        return fused_forward(self, input, hx)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", num_heads={self.num_heads}" if self.num_heads > 1 else "")


class MultiHeadLSTM(_Heads, LSTM):
    """fused_rnn.LSTM with ``num_heads`` heads (a block-diagonal W_hh); no projection with heads."""

    def __init__(self, *args, num_heads: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_heads(num_heads)


class MultiHeadGRU(_Heads, GRU):
    """fused_rnn.GRU with ``num_heads`` heads (a block-diagonal W_hh)."""

    def __init__(self, *args, num_heads: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_heads(num_heads)


class MultiHeadRNN(_Heads, RNN):
    """fused_rnn.RNN (tanh or relu) with ``num_heads`` heads (a block-diagonal W_hh)."""

    def __init__(self, *args, num_heads: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self._use_heads(num_heads)


class sLSTM(_Heads, LSTM):
    """xLSTM's sLSTM layer (module docstring): torch.nn.LSTM's constructor and contract with ``num_heads`` and
    a state of four tensors (h, c, n, m); no projection."""

    def __init__(self, *args, num_heads: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if self.proj_size:
            raise ValueError("the sLSTM has no projection (proj_size)")
        if self.zoneout:
            raise ValueError("the sLSTM has no zoneout")
        self.mode = "SLSTM"
        self._use_heads(num_heads)

    def check_forward_args(self, input: Tensor, hidden: tuple[Tensor, ...], batch_sizes: Tensor | None) -> None:
        """torch.nn.LSTM's checks, for the four states."""
        self.check_input(input, batch_sizes)
        if not isinstance(hidden, tuple) or len(hidden) != 4:
            raise RuntimeError("sLSTM expects hx = (h, c, n, m)")
        expected = self.get_expected_hidden_size(input, batch_sizes)
        for i, state in enumerate(hidden):
            self.check_hidden_size(state, expected, f"Expected hidden[{i}] size {{}}, got {{}}")

    def permute_hidden(self, hx: tuple[Tensor, ...], permutation: Tensor | None) -> tuple[Tensor, ...]:
        if permutation is None:
            return hx
        return tuple(state.index_select(1, permutation) for state in hx)


class IndRNN(MultiHeadRNN):
    """The independently recurrent network (Li et al. 2018; haste's ``IndRNN``): h_t = act(W_ih x_t + b +
    u * h_{t-1}) with u a vector, every unit independent of the others.

    It is a ``MultiHeadRNN`` with one-unit heads: ``weight_hh_l{k}`` is u, (hidden_size, 1). torch.nn.RNN's
    contract (layers, bidirectional, PackedSequence, nonlinearity "tanh" (haste's, the default) or "relu").
    Its programs never meet: each owns whole heads, so the sequence kernel runs without a barrier. Initialised
    as haste does: W_ih Xavier-uniform, u uniform in [-0.5, 0.5], biases zero. ``load_haste_state_dict``
    takes a haste ``IndRNN``'s parameters.
    """

    def __init__(self, *args, **kwargs):
        if "num_heads" in kwargs:
            raise TypeError("IndRNN's heads are its units: no num_heads")
        super().__init__(*args, **kwargs)
        self._use_heads(self.hidden_size)

    def reset_parameters(self) -> None:
        for name, param in self.named_parameters():
            if name.startswith("weight_ih"):
                nn.init.xavier_uniform_(param)
            elif name.startswith("weight_hh"):
                nn.init.uniform_(param, -0.5, 0.5)
            else:
                nn.init.zeros_(param)

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``IndRNN``'s parameters (single layer, one direction, as haste has): ``kernel`` (I, H),
        ``recurrent_scale`` (H,), ``bias`` (H,); this layer's second bias is set to zero."""
        if self.num_layers != 1 or self.bidirectional or not self.bias:
            raise ValueError("a haste IndRNN is one layer, one direction, with a bias")
        with torch.no_grad():
            self.weight_ih_l0.copy_(state["kernel"].t())
            self.weight_hh_l0.copy_(state["recurrent_scale"][:, None])
            self.bias_ih_l0.copy_(state["bias"])
            self.bias_hh_l0.zero_()


__all__ = ["IndRNN", "MultiHeadGRU", "MultiHeadLSTM", "MultiHeadRNN", "sLSTM"]
