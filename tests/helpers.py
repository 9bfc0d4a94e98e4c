"""Shared test helpers: tolerances, error measures, inputs."""

from __future__ import annotations

import torch

# One tolerance per dtype: relative-norm error ||out - ref|| / ||ref|| against a float64 reference.
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
DTYPES = list(TOL)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are empty or zero)."""
    out, ref = out.double(), ref.double()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    num = (out - ref).norm().item()
    den = ref.norm().item()
    return num / den if den > 0 else num


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    """Relative-norm error within the dtype's tolerance, and no NaN where the reference has none."""
    assert not torch.isnan(out).any() or torch.isnan(ref).any(), f"{what}: NaN in output"
    err = rel_err(out, ref)
    assert err <= TOL[dtype], f"{what}: relative error {err:.3e} > {TOL[dtype]:.1e} ({dtype})"
