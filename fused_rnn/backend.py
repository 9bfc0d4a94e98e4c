"""Where a call runs: the Triton kernels (GPU or interpreter) or torch's own implementation."""

from __future__ import annotations

import torch

from .kernels.launch import interpreting


def triton_runs_on(tensor: torch.Tensor) -> bool:
    """True when the Triton kernels can run on ``tensor``'s device.

    GPU tensors (CUDA or ROCm) always; CPU tensors when Triton's interpreter is
    on (TRITON_INTERPRET=1 set before fused_rnn is imported). Elsewhere the
    modules call torch's own implementation.
    """
    if tensor.device.type == "cuda":
        return True
    return tensor.device.type == "cpu" and interpreting()
