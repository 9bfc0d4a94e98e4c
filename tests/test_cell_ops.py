"""The cell custom ops: gradcheck, gradgradcheck, partial gradients, eval mode, torch.compile.

Double backward against torch.nn's own cells: tests/test_cells.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close

import fused_rnn
from fused_rnn import cell_ops, reference

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
N, H = 3, 5


def op_inputs(kind: str, bias: bool, device: str, requires_grad: bool = True):
    """fp64 inputs of one op: ig, hg, b_ih, b_hh and the state (LSTM c, GRU h)."""
    torch.manual_seed(1)
    g = {"lstm": 4, "gru": 3}.get(kind, 1) * H

    def t(*shape):
        return torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=requires_grad)

    ig, hg = t(N, g), t(N, g)
    b_ih, b_hh = (t(g), t(g)) if bias else (None, None)
    return ig, hg, b_ih, b_hh, t(N, H)


def op_and_reference(kind: str):
    """(fused op, reference function) over (ig, hg, b_ih, b_hh, state)."""
    if kind == "lstm":
        return cell_ops.lstm_cell, reference.lstm_from_gates
    if kind == "gru":
        return cell_ops.gru_cell, reference.gru_from_gates
    relu = kind == "rnn_relu"

    # The RNN op takes no state; its fifth argument is the activation.
    def op(ig, hg, b_ih, b_hh, state):
        return cell_ops.rnn_cell(ig, hg, b_ih, b_hh, relu) + 0 * state

    def ref(ig, hg, b_ih, b_hh, state):
        return reference.rnn_from_gates(ig, hg, b_ih, b_hh, relu) + 0 * state

    return op, ref


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", CELLS)
def test_gradcheck(kind, bias, device):
    op, _ = op_and_reference(kind)
    inputs = op_inputs(kind, bias, device)
    if kind == "rnn_relu":  # keep pre-activations away from relu's kink, where finite differences fail
        inputs = tuple(None if t is None else (t.detach() + 0.3).requires_grad_() for t in inputs)
    with fused_path_only() as launches:
        assert torch.autograd.gradcheck(op, inputs)
    assert launches.total > 0


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", CELLS)
def test_gradgradcheck(kind, bias, device):
    """Second derivatives of every input against finite differences of the first (create_graph=True)."""
    op, _ = op_and_reference(kind)
    inputs = op_inputs(kind, bias, device)
    if kind == "rnn_relu":  # away from relu's kink, where finite differences fail
        inputs = tuple(None if t is None else (t.detach() + 0.3).requires_grad_() for t in inputs)
    with fused_path_only() as launches:
        assert torch.autograd.gradgradcheck(op, inputs)
    assert launches.total > 0


@pytest.mark.parametrize("which", ["h", "c"])
def test_lstm_backward_with_one_output_used(which, device):
    """Only h' or only c' reaches the loss: the kernel treats the other gradient as zero."""
    inputs = op_inputs("lstm", True, device)
    hy, cy = cell_ops.lstm_cell(*inputs)
    with fused_path_only() as launches:
        got = torch.autograd.grad((hy if which == "h" else cy).sum(), inputs)
    assert launches.by_kernel == {"lstm_cell_bwd_kernel": 1}
    rh, rc = reference.lstm_from_gates(*inputs)
    expected = torch.autograd.grad((rh if which == "h" else rc).sum(), inputs)
    for a, b in zip(got, expected):
        assert_close(a, b, torch.float64)


@pytest.mark.parametrize("kind", CELLS)
def test_backward_in_eval_mode_and_twice(kind, device):
    """Backward works in eval mode (cuDNN refuses) and twice with retain_graph."""
    cell = {"lstm": fused_rnn.LSTMCell, "gru": fused_rnn.GRUCell}.get(kind, fused_rnn.RNNCell)(4, H)
    cell = cell.to(device, torch.float64).eval()
    x = torch.randn(N, 4, dtype=torch.float64, device=device, requires_grad=True)
    with fused_path_only():
        out = cell(x)
        loss = (out[0] if kind == "lstm" else out).sum()
        (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
        (g2,) = torch.autograd.grad(loss, x)
    assert torch.equal(g1, g2)


class CellLoop(torch.nn.Module):
    """A small model that runs a fused cell over a few steps."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        if kind == "lstm":
            self.cell = fused_rnn.LSTMCell(4, H)
        elif kind == "gru":
            self.cell = fused_rnn.GRUCell(4, H)
        else:
            self.cell = fused_rnn.RNNCell(4, H, nonlinearity=kind.split("_")[1])

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        state = None
        outs = []
        for x in xs.unbind(0):
            state = self.cell(x, state)
            outs.append(state[0] if self.kind == "lstm" else state)
        return torch.stack(outs)


@pytest.mark.parametrize("kind", CELLS)
def test_torch_compile_fullgraph_matches_eager(kind, device):
    torch.manual_seed(0)
    torch._dynamo.reset()
    model = CellLoop(kind).to(device)
    xs = torch.randn(3, 2, 4, device=device, requires_grad=True)
    eager = model(xs)
    (g_eager,) = torch.autograd.grad(eager.sum(), xs)
    compiled = torch.compile(model, fullgraph=True)
    with fused_path_only() as launches:
        out = compiled(xs)
        (g,) = torch.autograd.grad(out.sum(), xs)
    assert launches.total > 0
    assert_close(out, eager, torch.float32)
    assert_close(g, g_eager, torch.float32)
