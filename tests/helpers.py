"""Shared test helpers: tolerances, error measures, inputs."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

# The tolerance policy (docs/reliability.md), stated once. Two error measures against a float64 reference:
# the relative norm error ||out - ref|| / ||ref||, and the max-element error max|out - ref| / max|ref|, which a
# localised error cannot dilute. Both are bounded:
# - fp64: by TOL[torch.float64] (torch.nn's own fp64 result is the reference).
# - fp32, fp16, bf16, wherever torch.nn runs in the same dtype on the same inputs: by TORCH_FACTOR times the
#   error torch.nn itself makes there (each measure), or of one ulp (the dtype's eps) where torch.nn's error is
#   smaller: on a handful of elements torch.nn can land within a fraction of an ulp by luck, where a result
#   stored in the dtype and computed from rounded intermediates is in general about an ulp off.
# - Elsewhere (no torch.nn counterpart in the dtype, e.g. compiled against eager): by TOL[dtype].
TOL = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}
DTYPES = list(TOL)
# Chosen from a measurement over 363 random layer configurations of tests/test_layers_properties.py in fp32, fp16
# and bf16 (the largest fused/torch.nn error ratio over each example's results): median 1.0, 4 examples above 4,
# the largest 6.3, all on results of a few elements or short cancelling sums, where torch.nn's own error is a few
# ulp and partly luck. (A first choice of 4 failed on one such CI example: a d W_ih of 4 elements summing 12 terms.)
TORCH_FACTOR = 8


@dataclass(frozen=True)
class Err:
    """The two error measures of a result against its float64 reference."""

    norm: float  # ||out - ref|| / ||ref||
    max: float  # max|out - ref| / max|ref|

    def __str__(self) -> str:
        return f"norm {self.norm:.2e}, max {self.max:.2e}"


def errors(out: torch.Tensor, ref: torch.Tensor) -> Err:
    """Both error measures in float64 (absolute where the reference is all zero; 0 for empty tensors)."""
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if out.numel() == 0:
        return Err(0.0, 0.0)
    d = (out.double() - ref.double()).nan_to_num(0.0)  # NaN placement is checked apart (assert_close)
    ref = ref.double().nan_to_num(0.0)
    num, den = d.norm().item(), ref.norm().item()
    top, scale = d.abs().max().item(), ref.abs().max().item()
    return Err(num / den if den > 0 else num, top / scale if scale > 0 else top)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (for reports; tests bound both measures with ``assert_close``)."""
    return errors(out, ref).norm


def bound(dtype: torch.dtype, torch_err: Err | None = None) -> Err:
    """The largest error allowed in ``dtype``: TOL, or TORCH_FACTOR times torch.nn's own error (module comment)."""
    if torch_err is None or dtype == torch.float64:
        return Err(TOL[dtype], TOL[dtype])
    ulp = torch.finfo(dtype).eps
    return Err(TORCH_FACTOR * max(torch_err.norm, ulp), TORCH_FACTOR * max(torch_err.max, ulp))


def assert_close(
    out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "", torch_out: torch.Tensor | None = None
) -> Err:
    """``out`` within the bound of ``dtype`` of the float64 ``ref`` in both measures, NaN exactly where ``ref``
    has NaN. ``torch_out``: torch.nn's result in ``dtype`` on the same inputs, whose error sets the bound."""
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.equal(out.isnan(), ref.isnan()), f"{what}: NaN where the reference has none (or the reverse)"
    err = errors(out, ref)
    torch_err = errors(torch_out, ref) if torch_out is not None else None
    limit = bound(dtype, torch_err)
    assert err.norm <= limit.norm and err.max <= limit.max, (
        f"{what}: error {err} above {limit} ({dtype}" + (f"; torch.nn's own: {torch_err})" if torch_err else ")")
    )
    return err


def assert_all_close(
    names: list[str], got: list[torch.Tensor], ref: list[torch.Tensor], dtype: torch.dtype,
    torch_out: list[torch.Tensor] | None = None,
) -> None:
    """``assert_close`` on each named result (every result is named: a missing one fails)."""
    assert len(names) == len(got) == len(ref), (len(names), len(got), len(ref))
    assert torch_out is None or len(torch_out) == len(got)
    for i, (name, a, b) in enumerate(zip(names, got, ref)):
        assert_close(a, b, dtype, name, None if torch_out is None else torch_out[i])


def kernels_of(module: torch.nn.Module, path: str = "sequence", backward: bool = True) -> set[str]:
    """Names of the Triton kernels that a forward (and backward) of ``module`` launches: those of every fused
    recurrent layer (on ``path``: "sequence" or "stepwise") and cell inside it."""
    stems = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn", "RNN_RELU": "rnn", "LSTMCell": "lstm",
             "GRUCell": "gru", "RNNCell": "rnn"}
    names = set()
    for m in module.modules():
        if isinstance(m, torch.nn.RNNBase):
            names.add("sequence" if path == "sequence" else f"{stems[m.mode]}_cell")
        elif isinstance(m, torch.nn.RNNCellBase):
            torch_class = next(c for c in type(m).__mro__ if c.__module__ == "torch.nn.modules.rnn")
            names.add(f"{stems[torch_class.__name__]}_cell")
    return {f"{n}_{d}_kernel" for n in names for d in (("fwd", "bwd") if backward else ("fwd",))}


def assert_kernels(launches, expected: set[str]) -> None:
    """The launches counted by ``count_launches`` were of exactly the ``expected`` kernels (by name)."""
    assert set(launches.by_kernel or {}) == expected, f"kernels run: {launches.by_kernel}, expected {expected}"


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


def assert_equals_haste(cell: str, ours: list[torch.Tensor], got: list[torch.Tensor], wrt: list[torch.Tensor],
                        leaves: dict[str, torch.Tensor], theirs: tuple[torch.Tensor, ...],
                        mapped: torch.nn.Module) -> None:
    """A fused layer against haste's result (fp64): ``ours`` its outputs (y, h_n (, c_n)), ``got`` the gradients of
    sum(o cos o) over them with respect to ``wrt`` (x, h0 (, c0)) then the layer's parameters; ``theirs`` haste's
    (every output (T, B, H), then its final states) from its parameters ``leaves``. The parameters' gradients are
    compared by loading haste's into ``mapped``, a fresh layer of the same kind (ours are haste's transposed and
    reordered); haste has one bias where the LSTM and the IndRNN have two (summed): both get that gradient."""
    theirs = [theirs[0], *(t[None] for t in theirs[1:])]
    for o, t, name in zip(ours, theirs, ["y", "h_n", "c_n"], strict=False):
        assert_close(o, t, torch.float64, f"{cell} {name}")
    loss = sum((t * torch.cos(t)).sum() for t in theirs)
    want = torch.autograd.grad(loss, wrt + list(leaves.values()))
    for k, name in enumerate(["dx", "dh0", "dc0"][: len(wrt)]):
        assert_close(got[k], want[k], torch.float64, f"{cell} {name}")
    mapped.load_haste_state_dict(dict(zip(leaves, want[len(wrt):], strict=True)))
    for (name, expected), grad in zip(mapped.named_parameters(), got[len(wrt):], strict=True):
        if name == "bias_hh_l0" and cell != "gru":
            expected = mapped.bias_ih_l0
        assert_close(grad, expected, torch.float64, f"{cell} d{name}")
