"""Which implementation a fused module runs for a given input, and why.

``explain(module, input)`` answers without running anything. The same
decisions are logged at DEBUG level on the ``fused_rnn`` logger at every call
(``logging.getLogger("fused_rnn").setLevel(logging.DEBUG)``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .dispatch import device_shared, device_sms, explain_path
from .kernels.launch import interpreting

log = logging.getLogger("fused_rnn")


def _device_reason(x: Tensor) -> str | None:
    """Why the Triton kernels cannot run on x's device, or None when they can."""
    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None
    if x.device.type == "cpu":
        return "tensors on the CPU and Triton's interpreter is off (TRITON_INTERPRET=1 before import turns it on)"
    return f"the Triton kernels do not run on {x.device.type} tensors"


def _batch(module: nn.RNNBase, input: Tensor | PackedSequence) -> int:
    """The batch size of a layer's input."""
    if isinstance(input, PackedSequence):
        return int(input.batch_sizes[0])
    if input.dim() == 2:  # unbatched
        return 1
    return input.shape[0] if module.batch_first else input.shape[1]


def planned_mode(module: nn.RNNBase) -> str:
    """The dispatcher's mode of a layer: torch.nn's, or "LN_" + it where the recurrent product is normalised
    inside the time loop (haste's LayerNorm LSTM and GRU; the LayerNorm IndRNN normalises its input only)."""
    return ("LN_" if getattr(module, "recurrent_norm", False) else "") + module.mode


def explain(module: nn.Module, input: Tensor | PackedSequence) -> str:
    """One line per layer (or one for a cell): the implementation a call on ``input`` runs, and why."""
    x = input.data if isinstance(input, PackedSequence) else input
    name = type(module).__name__
    fallback = _device_reason(x)
    if fallback is not None:
        if getattr(module, "num_heads", 1) > 1 or getattr(module, "mode", "") == "SLSTM" \
                or getattr(module, "layer_norm", False):  # torch.nn cannot run it
            return f"{name}: a plain-torch loop over time (reference cells): {fallback}"
        return f"{name}: torch.nn's own implementation (torch fallback): {fallback}"
    if not isinstance(module, nn.RNNBase):
        return f"{name}: Triton cell kernel (one fused launch per step and direction of autograd)"
    path, why = explain_path(planned_mode(module), module.hidden_size, module.proj_size, x.dtype,
                             _batch(module, input), device_sms(x.device), concurrent=x.device.type == "cuda",
                             shared=device_shared(x.device), directions=2 if module.bidirectional else 1,
                             head_dim=module.hidden_size // module.num_heads if getattr(module, "num_heads", 1) > 1
                             else 0)
    what = {"sequence": "Triton sequence kernel",
            "stepwise": "stepwise (a torch matmul and a Triton cell kernel per time step)"}[path]
    return "\n".join(f"{name} layer {k}: {what}: {why}" for k in range(module.num_layers))


def log_call(module: nn.Module, input: Tensor | PackedSequence) -> None:
    """Log ``explain(module, input)`` at DEBUG level (free when the level is off)."""
    if not torch.compiler.is_compiling() and log.isEnabledFor(logging.DEBUG):
        log.debug("%s", explain(module, input))
