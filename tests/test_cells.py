"""fused_rnn.LSTMCell/GRUCell/RNNCell against torch.nn's cells and the float64 reference."""

from __future__ import annotations

import pytest
import torch
import triton
from conftest import fused_path_only
from helpers import DTYPES, assert_all_close, assert_close, assert_kernels, kernels_of

import fused_rnn
from fused_rnn import reference
from fused_rnn.kernels.launch import cell_blocks

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def make_cells(kind: str, input_size: int, hidden: int, bias: bool, dtype, device):
    """A fused cell and a torch.nn cell with the same weights."""
    torch.manual_seed(0)
    if kind == "lstm":
        fused, ref = fused_rnn.LSTMCell(input_size, hidden, bias), torch.nn.LSTMCell(input_size, hidden, bias)
    elif kind == "gru":
        fused, ref = fused_rnn.GRUCell(input_size, hidden, bias), torch.nn.GRUCell(input_size, hidden, bias)
    else:
        act = kind.split("_")[1]
        fused = fused_rnn.RNNCell(input_size, hidden, bias, nonlinearity=act)
        ref = torch.nn.RNNCell(input_size, hidden, bias, nonlinearity=act)
    ref.load_state_dict(fused.state_dict())
    return fused.to(device, dtype), ref.to(device, dtype)


def reference_step(kind: str, cell: torch.nn.Module, x, state):
    """The float64 reference step with the cell's parameters (float64 copies)."""
    p = {n: t.double() for n, t in cell.named_parameters()}
    b_ih, b_hh = p.get("bias_ih"), p.get("bias_hh")
    if kind == "lstm":
        return reference.lstm_cell(x, state[0], state[1], p["weight_ih"], p["weight_hh"], b_ih, b_hh)
    if kind == "gru":
        return reference.gru_cell(x, state, p["weight_ih"], p["weight_hh"], b_ih, b_hh)
    return reference.rnn_cell(x, state, p["weight_ih"], p["weight_hh"], b_ih, b_hh, kind.split("_")[1])


def run(kind, cell, x, state, grads):
    """Forward and backward of one step: returns outputs and gradients of inputs and parameters."""
    leaves = [x] + (list(state) if isinstance(state, tuple) else [state])
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    params = list(cell.parameters())
    st = tuple(leaves[1:]) if kind == "lstm" else leaves[1]
    out = cell(leaves[0], st) if not isinstance(cell, dict) else None
    outs = out if isinstance(out, tuple) else (out,)
    got = torch.autograd.grad(outs, leaves + params, [g.to(o.dtype) for o, g in zip(outs, grads)])
    return [o.detach() for o in outs], list(got)


def make_inputs(kind, batch, input_size, hidden, dtype, device, unbatched=False):
    shape = () if unbatched else (batch,)
    x = torch.randn(*shape, input_size, dtype=dtype, device=device)
    h = torch.randn(*shape, hidden, dtype=dtype, device=device)
    state = (h, torch.randn(*shape, hidden, dtype=dtype, device=device)) if kind == "lstm" else h
    n_out = 2 if kind == "lstm" else 1
    grads = [torch.randn(*shape, hidden, dtype=torch.float64, device=device) for _ in range(n_out)]
    return x, state, grads


def reference_grads(kind, cell, x, state, grads):
    """Outputs and gradients of the float64 reference, for the same inputs and weights."""
    leaves = [x] + (list(state) if isinstance(state, tuple) else [state])
    leaves = [t.detach().double().requires_grad_() for t in leaves]
    params = {n: t.detach().double().requires_grad_() for n, t in cell.named_parameters()}
    b_ih, b_hh = params.get("bias_ih"), params.get("bias_hh")
    unbatched = x.dim() == 1
    xs = [t.unsqueeze(0) if unbatched else t for t in leaves]
    w = (params["weight_ih"], params["weight_hh"])
    if kind == "lstm":
        outs = reference.lstm_cell(xs[0], xs[1], xs[2], *w, b_ih, b_hh)
    elif kind == "gru":
        outs = (reference.gru_cell(xs[0], xs[1], *w, b_ih, b_hh),)
    else:
        outs = (reference.rnn_cell(xs[0], xs[1], *w, b_ih, b_hh, kind.split("_")[1]),)
    outs = tuple(o.squeeze(0) if unbatched else o for o in outs)
    got = torch.autograd.grad(outs, leaves + list(params.values()), grads)
    return [o.detach() for o in outs], list(got)


def tile_crossing_shape(dtype) -> tuple[int, int]:
    """(batch, hidden) giving the step kernels two programs on each grid axis, the last of each partly masked,
    from ``cell_blocks``."""
    widest = cell_blocks(4096, 4096, dtype)
    batch, hidden = widest.block_n + 1, widest.block_h + 44
    tile = cell_blocks(batch, hidden, dtype)
    assert triton.cdiv(batch, tile.block_n) >= 2 and triton.cdiv(hidden, tile.block_h) >= 2
    return batch, hidden


SHAPES = [(4, 8, 16, True, False), (1, 3, 1, True, False), (5, 17, 3, False, False), (3, 100, 17, True, False),
          (2, 6, 100, True, False), (1, 5, 7, True, True), (1, 5, 7, False, True), "tile-crossing"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference_and_torch(kind, dtype, shape, device):
    """Outputs and every gradient against the float64 reference; fp32 and half types within a small factor of
    the error torch.nn's own cell makes in the same dtype on the same inputs (tests/helpers.py)."""
    if shape == "tile-crossing":
        batch, hidden = tile_crossing_shape(dtype)
        shape = (batch, 7, hidden, True, False)
    batch, input_size, hidden, bias, unbatched = shape
    fused, ref = make_cells(kind, input_size, hidden, bias, dtype, device)
    x, state, grads = make_inputs(kind, batch, input_size, hidden, dtype, device, unbatched)
    with fused_path_only() as launches:
        outs, got = run(kind, fused, x, state, grads)
    assert launches.by_kernel == dict.fromkeys(kernels_of(fused), 1)
    expected_outs, expected = reference_grads(kind, fused, x, state, grads)
    torch_outs, torch_got = run(kind, ref, x, state, grads)
    assert all(o.dtype == dtype for o in outs)
    names = ["out", "c"][: len(outs)] + ["grad x", "grad h", "grad c"][: 1 + len(outs)]
    names += [f"grad {n}" for n, _ in fused.named_parameters()]
    assert_all_close(names, outs + got, expected_outs + expected, dtype, torch_outs + torch_got)


@pytest.mark.parametrize("kind", CELLS)
def test_hx_defaults_to_zeros(kind, device):
    fused, _ = make_cells(kind, 4, 6, True, torch.float64, device)
    x = torch.randn(3, 4, dtype=torch.float64, device=device)
    zeros = torch.zeros(3, 6, dtype=torch.float64, device=device)
    with fused_path_only():
        a = fused(x)
        b = fused(x, (zeros, zeros) if kind == "lstm" else zeros)
    for u, v in zip(a if kind == "lstm" else (a,), b if kind == "lstm" else (b,)):
        assert torch.equal(u, v)


@pytest.mark.parametrize("kind", CELLS)
def test_same_contract_as_torch(kind):
    fused, ref = make_cells(kind, 4, 6, True, torch.float32, "cpu")
    assert isinstance(fused, type(ref))
    assert list(fused.state_dict()) == list(ref.state_dict())
    assert [p.shape for p in fused.parameters()] == [p.shape for p in ref.parameters()]
    ref.load_state_dict(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    no_bias, _ = make_cells(kind, 4, 6, False, torch.float32, "cpu")
    assert no_bias.bias_ih is None and no_bias.bias_hh is None
    torch.manual_seed(3)
    a = type(fused)(4, 6)
    torch.manual_seed(3)
    b = type(ref)(4, 6)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q), "same initialisation as torch.nn"


def _error(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type


@pytest.mark.parametrize("kind", CELLS)
@pytest.mark.parametrize(
    "case",
    ["3d_input", "input_size", "batch", "hidden_size", "state_dims", "dtype"],
)
def test_errors_match_torch(kind, case, device):
    fused, ref = make_cells(kind, 4, 6, True, torch.float32, device)
    x = torch.randn(3, 4, device=device)
    h = torch.randn(3, 6, device=device)
    if case == "3d_input":
        x = x.unsqueeze(0)
    elif case == "input_size":
        x = torch.randn(3, 5, device=device)
    elif case == "batch":
        h = torch.randn(2, 6, device=device)
    elif case == "hidden_size":
        h = torch.randn(3, 5, device=device)
    elif case == "state_dims":
        h = torch.randn(1, 3, 6, device=device)
    elif case == "dtype":
        x = x.double()
    state = (h, h) if kind == "lstm" else h
    before = {k: v.clone() for k, v in fused.state_dict().items()}
    expected = _error(lambda: ref(x, state))
    with fused_path_only():
        got = _error(lambda: fused(x, state))
    assert got is expected
    assert all(torch.equal(before[k], v) for k, v in fused.state_dict().items())


def test_unknown_nonlinearity_raises_at_forward(device):
    cell = fused_rnn.RNNCell(3, 4).to(device)
    cell.nonlinearity = "gelu"
    with pytest.raises(RuntimeError, match="Unknown nonlinearity"):
        cell(torch.randn(2, 3, device=device))


@pytest.mark.parametrize("kind", CELLS)
def test_empty_batch_and_zero_hidden(kind, device):
    fused, ref = make_cells(kind, 4, 6, True, torch.float32, device)
    x = torch.randn(0, 4, device=device)
    with fused_path_only():
        out = fused(x)
    expected = ref(x)
    for o, e in zip(out if kind == "lstm" else (out,), expected if kind == "lstm" else (expected,)):
        assert o.shape == e.shape
    zero, _ = make_cells(kind, 4, 0, True, torch.float32, device)
    with fused_path_only():
        out = zero(torch.randn(2, 4, device=device))
    assert (out[0] if kind == "lstm" else out).shape == (2, 0)


@pytest.mark.parametrize("kind", CELLS)
def test_torch_fallback_without_triton(kind, monkeypatch):
    """CPU tensors without the interpreter run torch.nn's own forward (and no Triton launch)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    fused, ref = make_cells(kind, 4, 6, True, torch.float32, "cpu")
    x = torch.randn(3, 4)
    with fused_rnn.count_launches() as launches:
        out = fused(x)
    expected = ref(x)
    assert launches.total == 0
    for o, e in zip(out if kind == "lstm" else (out,), expected if kind == "lstm" else (expected,)):
        assert torch.equal(o, e)


@pytest.mark.parametrize("kind", CELLS)
def test_noncontiguous_inputs_and_weights(kind, device):
    """Strided inputs, states and weights go to the kernels as they are, with the same result."""
    fused, _ = make_cells(kind, 4, 6, True, torch.float64, device)
    x = torch.randn(4, 3, dtype=torch.float64, device=device).t()
    h = torch.randn(6, 3, dtype=torch.float64, device=device).t()
    state = (h, torch.randn(3, 12, dtype=torch.float64, device=device)[:, ::2]) if kind == "lstm" else h
    expected = reference_step(kind, fused, x, state)
    with torch.no_grad():
        fused.weight_hh = torch.nn.Parameter(fused.weight_hh.t().contiguous().t())
    with fused_path_only():
        out = fused(x, state)
    for o, e in zip(out if kind == "lstm" else (out,), expected if kind == "lstm" else (expected,)):
        assert_close(o, e, torch.float64)


@pytest.mark.parametrize("kind", CELLS)
def test_double_backward_of_chained_steps_matches_torch(kind, device):
    """Two steps with the state fed back (hx feeds both hg = hx W_hh^T and the cell): second-order
    gradients of the input, the initial state and every parameter equal torch.nn's."""
    fused, ref = make_cells(kind, 3, 4, True, torch.float64, device)
    x, state, _ = make_inputs(kind, 2, 3, 4, torch.float64, device)
    x.requires_grad_()
    states = list(state) if isinstance(state, tuple) else [state]
    for s in states:
        s.requires_grad_()

    def second_order(cell):
        st = tuple(states) if kind == "lstm" else states[0]
        for _ in range(2):
            st = cell(x, st)
        h = st[0] if kind == "lstm" else st
        (gx,) = torch.autograd.grad(h.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, *states, *cell.parameters()])

    expected = second_order(ref)
    with fused_path_only() as launches:
        got = second_order(fused)
    assert_kernels(launches, kernels_of(fused))
    names = ["x"] + [f"state {i}" for i in range(len(states))] + [n for n, _ in fused.named_parameters()]
    assert_all_close(names, list(got), list(expected), torch.float64)
