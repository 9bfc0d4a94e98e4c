"""Input checks of the cell modules, with torch's exception types and messages.

torch.nn's cells leave these checks to the ATen kernels that the fused path
does not call, so they are restated here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_dims(name: str, input: Tensor, hx: Sequence[Tensor] | Tensor | None) -> None:
    """Input and states must be 1-D (unbatched) or 2-D: ValueError otherwise, as torch.nn."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if isinstance(hx, Tensor):
        if hx.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    elif hx is not None:
        for idx, value in enumerate(hx):
            if value.dim() not in (1, 2):
                raise ValueError(f"{name}: Expected hx[{idx}] to be 1D or 2D, got {value.dim()}D instead")


def check_input(input: Tensor, input_size: int) -> None:
    """(N, I) input with I == input_size: RuntimeError otherwise."""
    if input.size(1) != input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} expected {input_size}")


def check_hidden(input: Tensor, hx: Tensor, hidden_size: int, label: str = "0") -> None:
    """(N, H) state matching the input's batch and hidden_size, after batching (a 1-D state for an
    unbatched input arrives as (1, H)).

    The checks and messages of ATen's check_rnn_cell_forward_hidden (GRU and RNN cells label their
    state 0, LSTMCell h 0 and c 1), in its order, then the state's dimensions: a 1-D state with a
    batched input fails where torch's ``hx.size(1)`` raises IndexError, and a 2-D state with an
    unbatched input, which torch passes to its kernels (and crashes on), raises RuntimeError.
    """
    if input.size(0) != hx.size(0):
        raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {hx.size(0)}")
    if hx.dim() < 2:
        raise IndexError(f"hidden{label} is 1-D but the input is batched (2-D): expected a 2-D state")
    if hx.size(1) != hidden_size:
        raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}")
    if hx.dim() > 2:
        raise RuntimeError(f"hidden{label} is 2-D but the input is unbatched (1-D): expected a 1-D state")


def check_dtypes(input: Tensor, *others: Tensor | None) -> None:
    """Every tensor in the dtype of the input (unless autocast is on for its device, which casts them):
    RuntimeError otherwise (as the matmul raises); and on the input's device."""
    autocasting = torch.is_autocast_enabled(input.device.type)
    for t in others:
        if t is not None and t.dtype != input.dtype and not autocasting:
            raise RuntimeError(f"expected all tensors to have the same dtype, but got {input.dtype} and {t.dtype}")
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{input.device} and {t.device}!"
            )
