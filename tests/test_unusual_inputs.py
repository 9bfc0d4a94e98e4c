"""Unusual but valid inputs against torch.nn (float64): strided views, partial requires_grad, expanded states.

- Non-contiguous input, initial states and weights (every tensor a strided view).
- An input that does not require grad while the weights do, and the reverse.
- Expanded initial states (stride 0 over the batch, and over layers), whose
  gradient sums over the expanded dimensions.
- Nothing requiring grad: outputs without a graph.
Layers are bidirectional and run on the sequence kernel; the cases that feed
strided or expanded states straight to the kernels also run on the stepwise path.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close, assert_kernels, kernels_of
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

I, H, T, B, P = 3, 5, 4, 3, 2
DT = torch.float64


@dataclass(frozen=True)
class Case:
    """How the inputs are laid out and which of them require grad."""

    name: str
    strided: bool = False  # input, states and weights as non-contiguous views
    x_grad: bool = True
    weights_grad: bool = True
    expanded_states: bool = False  # h0 (c0) expanded from one row: stride 0 over directions and batch
    packed: bool = False  # packed with unsorted lengths (the states are permuted by sorted_indices)
    paths: tuple[str, ...] = ("sequence",)


CASES = [
    Case("strided_input_states_weights", strided=True, paths=("sequence", "stepwise")),
    Case("input_without_grad", x_grad=False),
    Case("frozen_weights", weights_grad=False),
    Case("expanded_states_packed", expanded_states=True, packed=True, paths=("sequence", "stepwise")),
    Case("nothing_requires_grad", x_grad=False, weights_grad=False),
]
LAYERS = [("LSTM", dict(proj_size=P)), ("GRU", {}), ("RNN", dict(nonlinearity="relu"))]


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous view (every other element of a wider buffer)."""
    buf = torch.zeros(*t.shape, 2, dtype=t.dtype, device=t.device)
    buf[..., 0] = t
    view = buf[..., 0]
    assert not view.is_contiguous() or view.numel() <= 1
    return view


def _prepare_weights(modules: tuple[nn.Module, ...], case: Case) -> None:
    """Non-contiguous weights when the case asks for them, and requires_grad as the case sets it."""
    for m in modules:
        if case.strided:
            for pname, p in list(m.named_parameters()):
                setattr(m, pname, nn.Parameter(strided(p.detach())))
        m.requires_grad_(case.weights_grad)


def _layers(name: str, kwargs: dict, case: Case, device: str) -> tuple[nn.RNNBase, nn.RNNBase]:
    kwargs = dict(kwargs, bidirectional=True, batch_first=case.strided or case.packed)
    torch.manual_seed(0)
    fused = getattr(fused_rnn, name)(I, H, **kwargs).to(device, DT)
    ref = getattr(nn, name)(I, H, **kwargs).to(device, DT)
    ref.load_state_dict(fused.state_dict())
    _prepare_weights((fused, ref), case)
    return fused, ref


def _states(name: str, proj: int, case: Case, device: str) -> list[torch.Tensor]:
    """Leaves of the initial states: full (2, B, size) tensors, or (1, 1, size) rows to expand."""
    torch.manual_seed(2)
    sizes = [proj or H] + ([H] if name == "LSTM" else [])
    lead = (1, 1) if case.expanded_states else (2, B)
    # the states require grad with the input
    return [torch.randn(*lead, s, dtype=DT, device=device, requires_grad=case.x_grad) for s in sizes]


def _run(module: nn.RNNBase, case: Case, x: torch.Tensor, leaves: list[torch.Tensor]):
    """Outputs, and gradients of (input, state leaves, parameters) that require grad."""
    states = [s.expand(2, B, s.shape[-1]) if case.expanded_states else s for s in leaves]
    if case.strided:
        states = [strided(s) for s in states]
    hx = tuple(states) if len(states) == 2 else states[0]
    inp = x
    if case.packed:
        inp = pack_padded_sequence(x, [2, T, 1], batch_first=True, enforce_sorted=False)
    out, hidden = module(inp, hx)
    outs = [out.data if isinstance(out, PackedSequence) else out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    wanted = [t for t in [x, *leaves, *module.parameters()] if t.requires_grad]
    if not any(o.requires_grad for o in outs):
        assert all(o.grad_fn is None for o in outs), "no graph when nothing requires grad"
        return outs, []
    g = torch.Generator(device=x.device).manual_seed(3)
    seeds = [torch.randn(o.shape, generator=g, dtype=DT, device=x.device) for o in outs]
    return [o.detach() for o in outs], list(torch.autograd.grad(outs, wanted, seeds))


PARAMS = [
    pytest.param(name, kwargs, case, path, id=f"{name}{'_proj' if kwargs.get('proj_size') else ''}-{case.name}-{path}")
    for name, kwargs in LAYERS for case in CASES for path in case.paths
]


@pytest.mark.parametrize("name,kwargs,case,path", PARAMS)
def test_layers_match_torch(name: str, kwargs: dict, case: Case, path: str, device: str):
    fused, ref = _layers(name, kwargs, case, device)
    torch.manual_seed(1)
    x = torch.randn(*((B, T) if fused.batch_first else (T, B)), I, dtype=DT, device=device)
    if case.strided:
        x = strided(x)
    x.requires_grad_(case.x_grad)
    leaves = _states(name, kwargs.get("proj_size", 0), case, device)
    want_outs, want_grads = _run(ref, case, x, leaves)
    with fused_rnn.force_path(path), fused_path_only() as launches:
        got_outs, got_grads = _run(fused, case, x, leaves)
    assert_kernels(launches, kernels_of(fused, path, backward=case.name != "nothing_requires_grad"))
    assert len(got_grads) == len(want_grads) == (0 if case.name == "nothing_requires_grad" else len(got_grads))
    for a, b in zip(got_outs + got_grads, want_outs + want_grads, strict=True):
        assert_close(a, b, DT)


CELL_KINDS = ["LSTMCell", "GRUCell", "RNNCell"]
CELL_CASES = [c for c in CASES if not c.packed]


@pytest.mark.parametrize("case", CELL_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("kind", CELL_KINDS)
def test_cells_match_torch(kind: str, case: Case, device: str):
    torch.manual_seed(0)
    fused = getattr(fused_rnn, kind)(I, H).to(device, DT)
    ref = getattr(nn, kind)(I, H).to(device, DT)
    ref.load_state_dict(fused.state_dict())
    _prepare_weights((fused, ref), case)
    torch.manual_seed(1)
    x = torch.randn(B, I, dtype=DT, device=device)
    x = (strided(x) if case.strided else x).requires_grad_(case.x_grad)
    n_states = 2 if kind == "LSTMCell" else 1
    lead = (1,) if case.expanded_states else (B,)
    leaves = [torch.randn(*lead, H, dtype=DT, device=device, requires_grad=case.x_grad) for _ in range(n_states)]

    def run(cell: nn.RNNCellBase):
        states = [s.expand(B, H) for s in leaves] if case.expanded_states else leaves
        if case.strided:
            states = [strided(s) for s in states]
        out = cell(x, tuple(states) if n_states == 2 else states[0])
        outs = list(out) if isinstance(out, tuple) else [out]
        wanted = [t for t in [x, *leaves, *cell.parameters()] if t.requires_grad]
        if not wanted:
            assert all(o.grad_fn is None for o in outs), "no graph when nothing requires grad"
            return outs
        grads = torch.autograd.grad(outs, wanted, [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    want = run(ref)
    with fused_path_only() as launches:
        got = run(fused)
    assert_kernels(launches, kernels_of(fused, backward=case.name != "nothing_requires_grad"))
    for a, b in zip(got, want, strict=True):
        assert_close(a, b, DT)
