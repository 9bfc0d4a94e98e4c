"""haste's LayerNorm LSTM, GRU and IndRNN as torch.nn-style modules on the fused sequence kernels.

``LayerNormLSTM`` and ``LayerNormGRU`` are fused_rnn's LSTM and GRU (torch.nn's
contract: constructor arguments, input projection inside, batch_first, layers,
bidirectional, PackedSequence, h0 (and c0), state_dict, autocast,
torch.compile; ``zoneout``, ``dropconnect`` and, for the LSTM, ``forget_bias``)
whose products are layer-normalised as haste's layers do
(docs/cells.md): per layer and direction, beside torch.nn's weights and
biases,

- ``ln_weight_ih_l{k}`` (G,): the gain of the normalised input product
  LN(x W_ih^T) (haste's ``gamma[0]``), computed with the projection, outside
  the time loop;
- ``ln_weight_hh_l{k}`` (G,): the gain of the normalised recurrent product
  LN(h W_hh^T) (``gamma[1]``), normalised inside the time loop (row statistics
  over every hidden slice of a step: ``kernels/sequence_kernels.py``);
- LSTM: ``ln_weight_c_l{k}``, ``ln_bias_c_l{k}`` (H,): the gain and bias of
  LN(c) in h = o tanh(LN(c)) (``gamma_h``, ``beta_h``).

G = 4H (LSTM, gates i, f, g, o) or 3H (GRU, r, z, n), each normalised over its
whole G values (biased variance, eps 1e-5, no bias of their own): LSTM pre =
LN(x W_ih^T) g_ih + LN(h W_hh^T) g_hh + b_ih + b_hh; GRU: the input side
LN(x W_ih^T) g_ih + b_ih, the hidden side LN(h W_hh^T) g_hh + b_hh (b_hn inside
r * (...), as torch.nn's GRU). ``LayerNormIndRNN`` is fused_rnn's IndRNN with the
input product normalised (haste's: only ``gamma[0]`` is used; its ``gamma[1]``
reaches no computation in haste either), so its kernel is the IndRNN's, with no
barrier. ``load_haste_state_dict`` loads a haste layer's parameters. Initialisation: torch.nn's for the weights and biases, gains 1,
c's bias 0. torch.nn has no such layers: where no Triton kernel runs they run
a plain-torch loop (``reference.sequence``) with the same results.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import GRU, LSTM, _load_haste, fused_forward
from .multihead import IndRNN
from .path_report import log_call


class _LayerNorm:
    """Mixin: the layer normalisation's parameters of every layer and direction, and the forward that never hands
    over to torch.nn (which has no such layer)."""

    layer_norm = True
    recurrent_norm = True  # the recurrent product (and the LSTM's c) normalised too, inside the time loop

    def _add_layer_norm(self) -> None:
        if self.proj_size > 0:
            raise ValueError("layer normalisation with proj_size is not supported")
        gates, hidden = self.weight_ih_l0.shape[0], self.hidden_size
        like = self.weight_ih_l0
        for layer in range(self.num_layers):
            for suffix in ("", "_reverse")[: 2 if self.bidirectional else 1]:
                self.register_parameter(f"ln_weight_ih_l{layer}{suffix}", nn.Parameter(like.new_ones(gates)))
                if not self.recurrent_norm:
                    continue
                self.register_parameter(f"ln_weight_hh_l{layer}{suffix}", nn.Parameter(like.new_ones(gates)))
                if self.mode == "LSTM":
                    self.register_parameter(f"ln_weight_c_l{layer}{suffix}", nn.Parameter(like.new_ones(hidden)))
                    self.register_parameter(f"ln_bias_c_l{layer}{suffix}", nn.Parameter(like.new_zeros(hidden)))

    def reset_parameters(self) -> None:
        super().reset_parameters()  # torch.nn's, which sets every parameter it finds: the gains are reset after
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.startswith("ln_weight"):
                    param.fill_(1.0)
                elif name.startswith("ln_bias"):
                    param.zero_()

    def layer_norm_weights(self, index: int) -> tuple[Tensor, Tensor | None]:
        """Layer-direction ``index``'s (layer * directions + direction) gain of the input product (G,) and the
        kernels' ``ln`` vector: the recurrent product's gain (G,), then for the LSTM c's gain and bias (H each);
        None when only the input product is normalised (the IndRNN)."""
        dirs = 2 if self.bidirectional else 1
        suffix = f"l{index // dirs}" + ("_reverse" if index % dirs else "")
        if not self.recurrent_norm:
            return getattr(self, f"ln_weight_ih_{suffix}"), None
        own = [getattr(self, f"ln_weight_hh_{suffix}")]
        if self.mode == "LSTM":
            own += [getattr(self, f"ln_weight_c_{suffix}"), getattr(self, f"ln_bias_c_{suffix}")]
        return getattr(self, f"ln_weight_ih_{suffix}"), torch.cat(own) if len(own) > 1 else own[0]

    def flatten_parameters(self) -> None:
        """Nothing: cuDNN cannot run these layers, so there is no flat weight buffer to keep."""

    def forward(self, input, hx=None):
        log_call(self, input)
        return fused_forward(self, input, hx)


class LayerNormLSTM(_LayerNorm, LSTM):
    """haste's ``LayerNormLSTM`` (module docstring) with torch.nn.LSTM's contract."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_layer_norm()

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``LayerNormLSTM``'s parameters (one layer, one direction): ``kernel`` (I, 4H),
        ``recurrent_kernel`` (H, 4H), ``bias`` (4H,) and ``gamma`` (2, 4H), gates i, g, f, o (torch's are i, f,
        g, o); ``gamma_h`` and ``beta_h`` (H,). b_hh is set to 0."""
        gains = {**state, "gamma_ih": state["gamma"][0], "gamma_hh": state["gamma"][1]}
        _load_haste(self, gains, (0, 2, 1, 3), {"weight_ih_l0": "kernel", "weight_hh_l0": "recurrent_kernel",
                                                "bias_ih_l0": "bias", "ln_weight_ih_l0": "gamma_ih",
                                                "ln_weight_hh_l0": "gamma_hh"})
        with torch.no_grad():
            self.ln_weight_c_l0.copy_(state["gamma_h"])
            self.ln_bias_c_l0.copy_(state["beta_h"])


class LayerNormGRU(_LayerNorm, GRU):
    """haste's ``LayerNormGRU`` (module docstring) with torch.nn.GRU's contract."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_layer_norm()

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``LayerNormGRU``'s parameters (one layer, one direction): ``kernel`` (I, 3H),
        ``recurrent_kernel`` (H, 3H), ``bias`` and ``recurrent_bias`` (3H,) and ``gamma`` (2, 3H), gates z, r, g
        (torch's: r, z, n)."""
        gains = {**state, "gamma_ih": state["gamma"][0], "gamma_hh": state["gamma"][1]}
        _load_haste(self, gains, (1, 0, 2), {"weight_ih_l0": "kernel", "weight_hh_l0": "recurrent_kernel",
                                             "bias_ih_l0": "bias", "bias_hh_l0": "recurrent_bias",
                                             "ln_weight_ih_l0": "gamma_ih", "ln_weight_hh_l0": "gamma_hh"})


class LayerNormIndRNN(_LayerNorm, IndRNN):
    """haste's ``LayerNormIndRNN``: fused_rnn's ``IndRNN`` (torch.nn.RNN's contract, one-unit heads, no barrier)
    on LN(x W_ih^T; g_ih) + b_ih + b_hh; the gain is ``ln_weight_ih_l{k}`` (H,)."""

    recurrent_norm = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._add_layer_norm()

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``LayerNormIndRNN``'s parameters: the IndRNN's (``IndRNN.load_haste_state_dict``) and the
        input gain ``gamma[0]`` (haste's ``gamma[1]`` is unused by haste itself)."""
        super().load_haste_state_dict(state)
        with torch.no_grad():
            self.ln_weight_ih_l0.copy_(state["gamma"][0])


__all__ = ["LayerNormGRU", "LayerNormIndRNN", "LayerNormLSTM"]
