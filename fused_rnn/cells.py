"""Drop-in torch.nn.LSTMCell, GRUCell and RNNCell whose steps run as fused Triton kernels.

Same constructor, parameters, state_dict, initialisation, forward signature,
return types and errors as torch.nn's cells (they subclass them). The weight
products x W_ih^T and h W_hh^T are torch matmuls (cuBLAS on a GPU); bias,
activations and state update run in one kernel (``cell_ops``). Where the
Triton kernels cannot run (CPU tensors without the interpreter) the parent
class's forward runs instead.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from . import autocast, cell_checks, cell_ops
from .backend import triton_runs_on
from .path_report import log_call


def _batched(input: Tensor, state: Tensor | None, hidden_size: int, is_batched: bool) -> Tensor:
    """The state as (N, H): zeros when absent, unsqueezed for unbatched input."""
    if state is None:
        return input.new_zeros(input.size(0), hidden_size)
    return state if is_batched else state.unsqueeze(0)


def _unbatch(t: Tensor, is_batched: bool) -> Tensor:
    return t if is_batched else t.squeeze(0)


def _as_torch_returns(kind: str, out: Tensor, x: Tensor, state: Tensor | None) -> Tensor:
    """``out`` in the dtype torch.nn's ``kind`` cell returns (differs from the kernels' only under autocast)."""
    low = autocast.lower_dtype(x.device.type)
    if low is None:
        return out
    return out.to(autocast.output_dtype(kind, x.device.type, low, (x if state is None else state).dtype))


class LSTMCell(nn.LSTMCell):
    """torch.nn.LSTMCell on a fused Triton cell kernel. Input (N, I) or (I,); returns (h', c')."""

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        log_call(self, input)
        if not triton_runs_on(input):
            return super().forward(input, hx)
        cell_checks.check_dims("LSTMCell", input, hx)
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        h = _batched(x, None if hx is None else hx[0], self.hidden_size, is_batched)
        c = _batched(x, None if hx is None else hx[1], self.hidden_size, is_batched)
        cell_checks.check_input(x, self.input_size)
        cell_checks.check_hidden(x, h, self.hidden_size, "0")
        cell_checks.check_hidden(x, c, self.hidden_size, "1")
        cell_checks.check_dtypes(x, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        hy, cy = cell_ops.lstm_cell(F.linear(x, self.weight_ih), F.linear(h, self.weight_hh), self.bias_ih, self.bias_hh, c)
        state = None if hx is None else hx[0]
        hy, cy = (_as_torch_returns("LSTMCell", t, x, state) for t in (hy, cy))
        return _unbatch(hy, is_batched), _unbatch(cy, is_batched)


class GRUCell(nn.GRUCell):
    """torch.nn.GRUCell on a fused Triton cell kernel. Input (N, I) or (I,); returns h'."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        log_call(self, input)
        if not triton_runs_on(input):
            return super().forward(input, hx)
        cell_checks.check_dims("GRUCell", input, hx)
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        h = _batched(x, hx, self.hidden_size, is_batched)
        cell_checks.check_input(x, self.input_size)
        cell_checks.check_hidden(x, h, self.hidden_size)
        cell_checks.check_dtypes(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        hy = cell_ops.gru_cell(F.linear(x, self.weight_ih), F.linear(h, self.weight_hh), self.bias_ih, self.bias_hh, h)
        return _unbatch(_as_torch_returns("GRUCell", hy, x, hx), is_batched)


class RNNCell(nn.RNNCell):
    """torch.nn.RNNCell (tanh or relu) on a fused Triton cell kernel. Input (N, I) or (I,); returns h'."""

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        log_call(self, input)
        if not triton_runs_on(input):
            return super().forward(input, hx)
        cell_checks.check_dims("RNNCell", input, hx)
        if self.nonlinearity not in ("tanh", "relu"):
            raise RuntimeError(f"Unknown nonlinearity: {self.nonlinearity}")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        h = _batched(x, hx, self.hidden_size, is_batched)
        cell_checks.check_input(x, self.input_size)
        cell_checks.check_hidden(x, h, self.hidden_size)
        cell_checks.check_dtypes(x, h, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        hy = cell_ops.rnn_cell(
            F.linear(x, self.weight_ih), F.linear(h, self.weight_hh), self.bias_ih, self.bias_hh,
            self.nonlinearity == "relu",
        )
        return _unbatch(_as_torch_returns("RNNCell", hy, x, hx), is_batched)
