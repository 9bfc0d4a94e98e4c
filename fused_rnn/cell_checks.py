"""Input checks of the cell modules, with torch's exception types and messages.

torch.nn's cells leave these checks to the ATen kernels that the fused path
does not call, so they are restated here.
"""

from __future__ import annotations

from collections.abc import Sequence

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


def check_hidden(input: Tensor, hx: Tensor, hidden_size: int, label: str = "") -> None:
    """(N, H) state matching the input's batch and hidden_size: RuntimeError otherwise."""
    if hx.dim() != 2 or input.size(0) != hx.size(0):
        batch = hx.size(0) if hx.dim() > 0 else 1
        raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{label} batch size {batch}")
    if hx.size(1) != hidden_size:
        raise RuntimeError(f"hidden{label} has inconsistent hidden_size: got {hx.size(1)}, expected {hidden_size}")


def check_dtypes(input: Tensor, *others: Tensor | None) -> None:
    """Every tensor in the dtype of the input: RuntimeError otherwise (as the matmul raises)."""
    for t in others:
        if t is not None and t.dtype != input.dtype:
            raise RuntimeError(f"expected all tensors to have the same dtype, but got {input.dtype} and {t.dtype}")
        if t is not None and t.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{input.device} and {t.device}!"
            )
