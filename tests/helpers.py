"""Shared test helpers: tolerances, error measures, inputs."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
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


def raised(fn: Callable[[], object]) -> BaseException:
    """The exception ``fn`` raises (the test fails if it raises none)."""
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the module's state (meta tensors left out)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items() if v.device.type != "meta"}


def assert_rejected_like_torch(
    fused: torch.nn.Module, torch_call: Callable[[], object], fused_call: Callable[[], object], match: str | None
) -> None:
    """Both calls raise the same exception type; the fused message equals torch's (``match`` None) or matches
    ``match``; the fused module's parameters are unchanged."""
    before = snapshot(fused)
    expected, got = raised(torch_call), raised(fused_call)
    assert type(got) is type(expected), f"{type(got).__name__}: {got} (torch: {type(expected).__name__}: {expected})"
    if match is None:
        assert str(got) == str(expected)
    else:
        assert re.search(match, str(got)), str(got)
    after = snapshot(fused)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
