"""Bad input to fused_rnn.LSTMCell/GRUCell/RNNCell: the error torch.nn raises, and nothing changed.

Each case runs on torch.nn's cell and on the fused one side by side: the same
exception type; the same message where torch's comes from ATen's shared cell
checks (input_size, batch, hidden_size), else a message naming the problem
(``match``). The parameters and the inputs are unchanged after the error.
Another device is the meta device on a CPU-only machine, the CPU on a GPU.
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_rejected_like_torch, raised, snapshot
from torch import nn

import fused_rnn

I, H, N = 5, 6, 3
KINDS = ("LSTMCell", "GRUCell", "RNNCell")


@dataclass(frozen=True)
class Env:
    """What a case builds its inputs from: the cell, the kernels' device and another device."""

    cell: nn.RNNCellBase
    device: str
    other: str

    def x(self, *shape: int, dtype: torch.dtype = torch.float32, device: str | None = None) -> torch.Tensor:
        torch.manual_seed(1)
        return torch.randn(*(shape or (N, I)), dtype=dtype, device=device or self.device)

    def hx(self, *shape: int, c_shape: tuple[int, ...] | None = None, dtype=torch.float32, device: str | None = None):
        """A random state of ``shape`` (LSTMCell: with a cell state of ``c_shape``, default the same shape)."""
        h = torch.randn(*shape, dtype=dtype, device=device or self.device)
        if not isinstance(self.cell, nn.LSTMCell):
            return h
        return h, torch.randn(*(c_shape or shape), device=device or self.device)


@dataclass(frozen=True)
class Case:
    """A bad call. match None: the fused message equals torch's; else a regex it must contain."""

    name: str
    call: Callable[[Env], object]
    match: str | None = None
    kinds: tuple[str, ...] = KINDS
    setup: Callable[[nn.RNNCellBase, Env], None] | None = None
    # True where the input is on a device the kernels do not run on: the fused cell hands the call to
    # torch.nn's own forward, which raises. Elsewhere the fused forward must raise itself: torch's recurrent
    # functions are replaced by failures during its call.
    falls_back: bool = False


def _weights_to_other_device(cell: nn.RNNCellBase, env: Env) -> None:
    cell.to(env.other)


def _unknown_nonlinearity(cell: nn.RNNCellBase, env: Env) -> None:
    cell.nonlinearity = "gelu"


CASES = [
    # Dimensions (torch.nn's forward: the fused message names the problem the same way).
    Case("input_3d", lambda e: e.cell(e.x(1, N, I)), r"Expected input to be 1D or 2D, got 3D"),
    Case("input_0d", lambda e: e.cell(e.x(I)[0]), r"Expected input to be 1D or 2D, got 0D"),
    Case("state_3d", lambda e: e.cell(e.x(), e.hx(1, N, H)), r"Expected (hidden|hx\[0\]) to be 1D or 2D, got 3D"),
    # Sizes (ATen's check_rnn_cell_forward_input/_hidden: the same message).
    Case("input_size", lambda e: e.cell(e.x(N, I + 2))),
    Case("hidden_batch", lambda e: e.cell(e.x(), e.hx(N - 1, H, c_shape=(N, H)))),
    Case("hidden_size", lambda e: e.cell(e.x(), e.hx(N, H + 1, c_shape=(N, H)))),
    Case("cell_state_batch", lambda e: e.cell(e.x(), e.hx(N, H, c_shape=(N + 1, H))), kinds=("LSTMCell",)),
    Case("cell_state_size", lambda e: e.cell(e.x(), e.hx(N, H, c_shape=(N, H - 1))), kinds=("LSTMCell",)),
    Case("unbatched_input_2d_state", lambda e: e.cell(e.x(I), e.hx(N, H))),
    Case("batched_input_1d_state_of_other_size", lambda e: e.cell(e.x(), e.hx(H))),
    # torch's hx.size(1) fails with "Dimension out of range" (IndexError): the same type, naming the problem.
    Case("batched_input_1d_state", lambda e: e.cell(e.x(H, I), e.hx(H)), r"hidden0 is 1-D but the input is batched"),
    # dtypes and devices: torch's matmuls raise these (RuntimeError); the fused message names the problem.
    Case("input_dtype", lambda e: e.cell(e.x(dtype=torch.float64)), r"dtype"),
    Case("hidden_dtype", lambda e: e.cell(e.x(), e.hx(N, H, dtype=torch.float64)), r"dtype"),
    Case("hidden_device", lambda e: e.cell(e.x(), e.hx(N, H, device=e.other)), r"device"),
    Case("weights_device", lambda e: e.cell(e.x()), r"device", setup=_weights_to_other_device),
    Case("input_device", lambda e: e.cell(e.x(device=e.other)), falls_back=True),
    Case("unknown_nonlinearity", lambda e: e.cell(e.x()), r"Unknown nonlinearity", kinds=("RNNCell",),
         setup=_unknown_nonlinearity),
]


def _pair(kind: str, device: str) -> tuple[nn.RNNCellBase, nn.RNNCellBase]:
    """A fused cell and a torch.nn cell with the same weights."""
    torch.manual_seed(0)
    fused = getattr(fused_rnn, kind)(I, H).to(device)
    ref = getattr(nn, kind)(I, H).to(device)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.mark.parametrize("case,kind", [pytest.param(c, k, id=f"{c.name}-{k}") for c in CASES for k in c.kinds])
def test_bad_input_raises_like_torch(case: Case, kind: str, device: str):
    other = "cpu" if device == "cuda" else "meta"
    fused, ref = _pair(kind, device)
    if case.setup is not None:
        case.setup(fused, Env(fused, device, other))
        case.setup(ref, Env(ref, device, other))
    def fused_call():
        with contextlib.nullcontext() if case.falls_back else fused_path_only():
            return case.call(Env(fused, device, other))

    assert_rejected_like_torch(fused, lambda: case.call(Env(ref, device, other)), fused_call, case.match)


@pytest.mark.parametrize("kind", KINDS)
def test_unbatched_input_with_a_2d_state_of_matching_sizes(kind: str, device: str):
    """An unbatched input with an (H, H) state: torch.nn (2.13, CPU) passes it to its kernel and crashes the
    process, so torch cannot run beside it; the fused cell raises a RuntimeError naming the problem."""
    fused, _ = _pair(kind, device)
    env = Env(fused, device, "meta")
    before = snapshot(fused)
    with pytest.raises(RuntimeError, match=r"hidden0 is 2-D but the input is unbatched"):
        fused(env.x(I), env.hx(H, H))
    assert all(torch.equal(before[k], v) for k, v in snapshot(fused).items())


@pytest.mark.parametrize("kind", KINDS)
def test_bad_input_leaves_the_given_tensors_unchanged(kind: str, device: str):
    fused, _ = _pair(kind, device)
    env = Env(fused, device, "meta")
    x, hx = env.x(), env.hx(N, H + 1, c_shape=(N, H))
    tensors = [x, *(hx if isinstance(hx, tuple) else (hx,))]
    copies = [t.clone() for t in tensors]
    with pytest.raises(RuntimeError, match="inconsistent hidden_size"):
        fused(x, hx)
    assert all(torch.equal(a, b) for a, b in zip(tensors, copies))


CONSTRUCTOR_CASES = [
    ("hidden_size_negative", dict(hidden_size=-1)),
    ("hidden_size_float", dict(hidden_size=2.5)),
    ("input_size_float", dict(input_size=2.5)),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=lambda c: c[0])
def test_bad_constructor_arguments_raise_like_torch(case, kind: str):
    """The fused cells inherit torch.nn's constructors: the same errors."""
    args = dict(input_size=I, hidden_size=H) | case[1]
    expected = raised(lambda: getattr(nn, kind)(**args))
    got = raised(lambda: getattr(fused_rnn, kind)(**args))
    assert type(got) is type(expected) and str(got) == str(expected)
