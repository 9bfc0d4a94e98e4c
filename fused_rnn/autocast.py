"""torch.autocast for the fused ops and modules.

Under autocast the fused custom ops behave like cuDNN's RNN op does: every
floating-point tensor argument that autocast may lower (any floating dtype but
float64) is cast to the autocast dtype of its device (fp16 or bf16), and the
op runs with autocast off. Inside, the kernels keep the recurrent state and
the gate math in fp32. The modules then return the dtypes torch.nn's modules
return under the same autocast (``output_dtype``).

``fused_rnn::sequence`` takes the layer input x, W_ih and both biases with the
rest (its input projection is inside it): all are lowered, so the projection
runs in the autocast dtype as an F.linear under autocast would, the biases
being summed after lowering, and the op keeps the lowered x for backward, as
that F.linear would.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Ops with an autocast rule (forward and backward ops alike, so mixed dtypes never reach a kernel).
OPS = [
    "lstm_cell", "lstm_cell_backward", "gru_cell", "gru_cell_backward", "rnn_cell", "rnn_cell_backward",
    "sequence", "sequence_backward",
]
DEVICE_TYPES = ["cuda", "cpu"]
_lib = torch.library.Library("fused_rnn", "IMPL")


def lower_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype for ``device_type`` when autocast is on there, else None."""
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def output_dtype(
    kind: str, device_type: str, low: torch.dtype, state_dtype: torch.dtype, packed: bool = False
) -> torch.dtype:
    """The dtype of the outputs of torch.nn's ``kind`` module under autocast to ``low`` on ``device_type``.

    kind is "LSTM", "GRU", "RNN_TANH", "RNN_RELU", "LSTMCell", "GRUCell" or "RNNCell";
    state_dtype is the given initial state's dtype, or the input's when none is
    given; packed is whether the input is a PackedSequence. cuDNN's autocast
    wrapper lowers everything, so CUDA layers return ``low``. On the CPU, torch's
    GRU, its LSTM on packed input, and its LSTM and GRU cells mix the unlowered
    state into the update and return the promoted dtype; its LSTM on padded
    input (oneDNN) and its RNNs return ``low``. The cells on CUDA run the same
    composite code as on the CPU.
    """
    if device_type == "cuda" and not kind.endswith("Cell"):
        return low
    if kind in ("GRU", "LSTMCell", "GRUCell") or (kind == "LSTM" and packed):
        return torch.promote_types(low, state_dtype)
    return low


def _lowered(args: tuple, dtype: torch.dtype) -> tuple:
    return tuple(
        a.to(dtype) if isinstance(a, Tensor) and a.is_floating_point() and a.dtype != torch.float64 else a
        for a in args
    )


def _register(op_name: str, device_type: str) -> None:
    op = getattr(torch.ops.fused_rnn, op_name).default

    def kernel(_keyset, *args):
        with torch.autocast(device_type, enabled=False):
            return op(*_lowered(args, torch.get_autocast_dtype(device_type)))

    _lib.impl(op_name, kernel, "Autocast" + torch._C._dispatch_key_for_device(device_type), with_keyset=True)


def register_all() -> None:
    """Install the autocast rule of every fused op (called once, when fused_rnn is imported)."""
    for name in OPS:
        for device_type in DEVICE_TYPES:
            _register(name, device_type)
