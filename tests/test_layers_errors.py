"""Bad input to fused_rnn.LSTM/GRU/RNN: the error torch.nn raises, and nothing changed.

Each case runs on torch.nn's module and on the fused one side by side. The
fused module must raise the same exception type; its message must equal
torch's where torch's comes from shared code (``check_forward_args``, ATen's
checks), and otherwise name the problem (``match``, a regex). After the error
the module's parameters and the inputs are unchanged.

"Another device" is the meta device on a CPU-only machine (tensors there have
no data, so every device check is exercised without a GPU) and the CPU when
the kernels run on a GPU.
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_rejected_like_torch, raised
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

I, H, T, B = 5, 6, 4, 3
MODES = ("LSTM", "GRU", "RNN")
FUSED = {"LSTM": fused_rnn.LSTM, "GRU": fused_rnn.GRU, "RNN": fused_rnn.RNN}
TORCH = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}


@dataclass(frozen=True)
class Env:
    """What a case builds its inputs from: the module, the kernels' device and another device."""

    module: nn.RNNBase
    device: str
    other: str

    def x(self, *shape: int, dtype: torch.dtype = torch.float32, device: str | None = None) -> torch.Tensor:
        torch.manual_seed(1)
        return torch.randn(*(shape or (T, B, I)), dtype=dtype, device=device or self.device)

    def hx(self, *shape: int, c_shape: tuple[int, ...] | None = None, dtype=torch.float32, device: str | None = None):
        """A zero state of ``shape`` (LSTM: with a cell state of ``c_shape``, default the same shape)."""
        h = torch.zeros(*shape, dtype=dtype, device=device or self.device)
        if self.module.mode != "LSTM":
            return h
        return h, torch.zeros(*(c_shape or shape), dtype=dtype, device=device or self.device)


@dataclass(frozen=True)
class Case:
    """A bad call. match None: the fused message equals torch's; else a regex it must contain."""

    name: str
    call: Callable[[Env], object]
    match: str | None = None
    modes: tuple[str, ...] = MODES
    kwargs: dict = field(default_factory=dict)
    setup: Callable[[nn.RNNBase, Env], None] | None = None
    # True where the input is on a device the kernels do not run on: the fused module hands the call to
    # torch.nn's own forward, which raises. Elsewhere the fused forward must raise itself: torch's recurrent
    # functions are replaced by failures during its call.
    falls_back: bool = False


def _weight_hh_double(m: nn.RNNBase, env: Env) -> None:
    m.weight_hh_l0 = nn.Parameter(m.weight_hh_l0.detach().double())


def _weights_to_other_device(m: nn.RNNBase, env: Env) -> None:
    m.to(env.other)


CASES = [
    # Wrong number of dimensions (torch.nn's forward words these per class: the fused message names the problem).
    Case("input_1d", lambda e: e.module(e.x(I)), r"Expected input to be 2D or 3D, got 1D"),
    Case("input_4d", lambda e: e.module(e.x(1, T, B, I)), r"Expected input to be 2D or 3D, got 4D"),
    Case("hx_2d_for_batched_input", lambda e: e.module(e.x(), e.hx(B, H)),
         r"batched 3-D input, hx.* should also be 3-D"),
    Case("hx_3d_for_unbatched_input", lambda e: e.module(e.x(T, I), e.hx(1, 1, H)),
         r"unbatched 2-D input, hx.* should also be 2-D"),
    # Sizes (check_forward_args: the same message).
    Case("input_size", lambda e: e.module(e.x(T, B, I + 2))),
    Case("input_size_batch_first", lambda e: e.module(e.x(B, T, I - 1)), kwargs={"batch_first": True}),
    Case("hidden_batch", lambda e: e.module(e.x(), e.hx(1, B + 1, H, c_shape=(1, B, H)))),
    Case("hidden_layers", lambda e: e.module(e.x(), e.hx(2, B, H, c_shape=(1, B, H)))),
    Case("hidden_size", lambda e: e.module(e.x(), e.hx(1, B, H - 1, c_shape=(1, B, H)))),
    Case("hidden_bidirectional", lambda e: e.module(e.x(), e.hx(1, B, H)), kwargs={"bidirectional": True}),
    Case("hidden_unbatched", lambda e: e.module(e.x(T, I), e.hx(1, H + 1, c_shape=(1, H)))),
    Case("cell_state_size", lambda e: e.module(e.x(), e.hx(1, B, H, c_shape=(1, B, H + 1))), modes=("LSTM",)),
    Case("cell_state_batch", lambda e: e.module(e.x(), e.hx(1, B, H, c_shape=(1, B - 1, H))), modes=("LSTM",)),
    Case("proj_hidden_is_hidden_size", lambda e: e.module(e.x(), e.hx(1, B, H)), modes=("LSTM",),
         kwargs={"proj_size": 2}),
    # torch.nn.LSTM skips check_forward_args for packed input with a given state (ATen then fails on a
    # broadcast): the fused message is check_forward_args' own.
    Case("packed_hidden_batch", lambda e: e.module(pack_padded_sequence(e.x(), [T, 2, 1]), e.hx(1, 2, H)),
         r"Expected hidden(\[0\])? size \(1, 3, 6\), got \[1, 2, 6\]"),
    # dtypes: the input against the first weight (check_input: the same ValueError); the states and the
    # other weights reach torch's kernels, which raise a RuntimeError of their own.
    Case("input_dtype", lambda e: e.module(e.x(dtype=torch.float64))),
    Case("hidden_dtype", lambda e: e.module(e.x(), e.hx(1, B, H, dtype=torch.float64)), r"dtype"),
    Case("weight_hh_dtype", lambda e: e.module(e.x()), r"dtype", setup=_weight_hh_double),
    # Devices: ATen's check_attributes words these (the same message).
    Case("hidden_device", lambda e: e.module(e.x(), e.hx(1, B, H, device=e.other))),
    Case("weights_device", lambda e: e.module(e.x()), setup=_weights_to_other_device),
    Case("input_device", lambda e: e.module(e.x(device=e.other)), falls_back=True),
    # Sequence length 0, and unsorted lengths.
    Case("sequence_length_0", lambda e: e.module(e.x(0, B, I))),
    Case("sequence_length_0_batch_first", lambda e: e.module(e.x(B, 0, I)), kwargs={"batch_first": True}),
    Case("sequence_length_0_unbatched", lambda e: e.module(e.x(0, I))),
    Case("unsorted_lengths_enforce_sorted", lambda e: e.module(pack_padded_sequence(e.x(), [2, T, 1]))),
    Case("packed_batch_sizes_increasing",
         lambda e: e.module(PackedSequence(e.x(3, I), torch.tensor([1, 2]))), r"batch_sizes must be non-increasing"),
]


def _pair(mode: str, device: str, **kwargs) -> tuple[nn.RNNBase, nn.RNNBase]:
    """A fused layer and a torch.nn layer with the same weights."""
    torch.manual_seed(0)
    fused = FUSED[mode](I, H, **kwargs).to(device)
    ref = TORCH[mode](I, H, **kwargs).to(device)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


@pytest.mark.parametrize("case,mode", [pytest.param(c, m, id=f"{c.name}-{m}") for c in CASES for m in c.modes])
def test_bad_input_raises_like_torch(case: Case, mode: str, device: str):
    other = "cpu" if device == "cuda" else "meta"
    fused, ref = _pair(mode, device, **case.kwargs)
    if case.setup is not None:
        case.setup(fused, Env(fused, device, other))
        case.setup(ref, Env(ref, device, other))
    def fused_call():
        with contextlib.nullcontext() if case.falls_back else fused_path_only():
            return case.call(Env(fused, device, other))

    assert_rejected_like_torch(fused, lambda: case.call(Env(ref, device, other)), fused_call, case.match)


def test_bad_input_leaves_the_given_tensors_unchanged(device: str):
    """A rejected state (wrong dtype) and the input are not written to."""
    fused, _ = _pair("LSTM", device)
    x = torch.randn(T, B, I, device=device)
    hx = (torch.randn(1, B, H, device=device), torch.randn(1, B, H, device=device, dtype=torch.float64))
    copies = [t.clone() for t in (x, *hx)]
    with pytest.raises(RuntimeError, match="dtype"):
        fused(x, hx)
    assert all(torch.equal(a, b) for a, b in zip((x, *hx), copies))


# Constructor arguments: the fused classes inherit torch.nn's constructors, so every error is torch's own.
CONSTRUCTOR_CASES = [
    ("dropout_above_1", MODES, dict(dropout=1.5)),
    ("dropout_negative", MODES, dict(dropout=-0.1)),
    ("dropout_bool", MODES, dict(dropout=True)),
    ("dropout_string", MODES, dict(dropout="0.1")),
    ("hidden_size_float", MODES, dict(hidden_size=2.5)),
    ("hidden_size_0", MODES, dict(hidden_size=0)),
    ("input_size_0", MODES, dict(input_size=0)),
    ("input_size_float", MODES, dict(input_size=2.0)),
    ("num_layers_0", MODES, dict(num_layers=0)),
    ("bias_not_bool", MODES, dict(bias=1)),
    ("batch_first_not_bool", MODES, dict(batch_first="yes")),
    ("proj_size_negative", ("LSTM",), dict(proj_size=-1)),
    ("proj_size_not_below_hidden", ("LSTM",), dict(proj_size=H)),
    ("proj_size_on_gru_or_rnn", ("GRU", "RNN"), dict(proj_size=2)),
    ("unknown_nonlinearity", ("RNN",), dict(nonlinearity="gelu")),
]


@pytest.mark.parametrize("case", CONSTRUCTOR_CASES, ids=lambda c: c[0])
def test_bad_constructor_arguments_raise_like_torch(case):
    _, modes, kwargs = case
    for mode in modes:
        args = dict(input_size=I, hidden_size=H) | kwargs
        expected = raised(lambda: TORCH[mode](**args))
        got = raised(lambda: FUSED[mode](**args))
        assert type(got) is type(expected) and str(got) == str(expected), (mode, got, expected)


@pytest.mark.parametrize("mode", MODES)
def test_dropout_with_one_layer_warns_like_torch(mode: str):
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        FUSED[mode](I, H, dropout=0.5)
