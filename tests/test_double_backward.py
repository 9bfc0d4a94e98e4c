"""Double backward (create_graph=True) through the fused_rnn::sequence op and every fused layer kind.

Under create_graph the op's backward is autograd through a plain-torch recomputation of the layer-direction
from its saved input x and weights (``sequence_ops.project``, then fused_rnn/reference.py ``sequence``), keeping
its graph; without it the Triton backward kernel runs. Checked: gradgradcheck in float64 on small shapes (the
interpreter is slow) at the op level (every cell, both directions, lengths, projection; the inputs x, W_ih and
both biases, the input projection being inside the op, W_hh, W_hr, h0, c0) and per layer kind; second-order gradients of the input, h0/c0 and every
parameter equal torch.nn's own (its CPU RNNs are twice differentiable) to the fp64 tolerance; and which
kernels run, by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from conftest import fused_path_only
from fused_rnn.kernels.sequence_kernels import CELLS, GATES, LSTM, NN_CELLS
from helpers import assert_close
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import sequence_ops

T, B, H, I = 3, 3, 3, 2
LENGTHS = [T, 2, 1]
F64 = torch.float64


def gradgradcheck(fn: Callable, tensors: list[torch.Tensor], flat_from: int | None = None) -> bool:
    """gradgradcheck (fast mode) of ``fn(*tensors)`` with its outputs concatenated into one vector.

    Fast mode perturbs each input and each output gradient apart, and every evaluation runs the kernels in the
    interpreter: one output gradient, and with ``flat_from`` the tensors from that index on as one flat vector
    (the parameters), keep the evaluations few. The inputs before it stay apart: a random direction within one
    tensor catches a term missing for that tensor, which one direction over many may not."""
    flat_from = len(tensors) if flat_from is None else flat_from
    shapes = [t.shape for t in tensors[flat_from:]]
    args = [t.detach().requires_grad_() for t in tensors[:flat_from]]
    if shapes:
        args.append(torch.cat([t.detach().reshape(-1) for t in tensors[flat_from:]]).requires_grad_())

    def on_args(*given: torch.Tensor) -> torch.Tensor:
        parts = list(given)
        if shapes:
            flat = parts.pop()
            parts += [p.view(shape) for p, shape in zip(flat.split([s.numel() for s in shapes]), shapes)]
        return torch.cat([o.reshape(-1) for o in fn(*parts)])

    return torch.autograd.gradgradcheck(on_args, args, fast_mode=True)


# ------------------------------------------------------------------------------------------------------------
# The op
# ------------------------------------------------------------------------------------------------------------


def op_inputs(cell: int, device: str, proj: int = 0, directions: int = 1) -> tuple:
    """(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0) in float64, requiring grad, the layer's ``directions`` stacked;
    w_hr with ``proj``, c0 LSTM."""
    torch.manual_seed(3)

    def t(*shape):
        return torch.randn(*shape, dtype=F64, device=device, requires_grad=True)

    r, g, d = proj or H, GATES[cell] * H, directions
    x, w_ih, b_ih, b_hh, w_hh = t(T, B, I), t(d, g, I), t(d, g), t(d, g), t(d, g, r)
    if cell == CELLS["RNN_RELU"]:  # pre-activations away from relu's kink, where finite differences fail
        w_ih, w_hh = (0.2 * w_ih.detach()).requires_grad_(), (0.2 * w_hh.detach()).requires_grad_()
        b_ih = (b_ih.detach().abs() + 2.0).requires_grad_()
        b_hh = (b_hh.detach().abs()).requires_grad_()
    return (x, w_ih, b_ih, b_hh, w_hh, t(d, r, H) if proj else None, t(d, B, r), t(d, B, H) if cell == LSTM else None)


def op_function(cell: int, reverse: bool, lengths: torch.Tensor) -> Callable:
    """The op's differentiable outputs (y, h_n[, c_n]) as a function of its tensor inputs."""

    def fn(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0):
        y, h_n, c_n, *_ = sequence_ops.sequence(x, w_ih, b_ih, b_hh, w_hh, w_hr, h0, c0, lengths, cell, reverse, True)
        return (y, h_n, c_n) if cell == LSTM else (y, h_n)

    return fn


# (cell, reverse, projection, directions): every cell each way, the projection, and both directions in one op.
OP_CASES = [(cell, reverse, 0, 1) for cell in NN_CELLS for reverse in (False, True)] + [
    ("LSTM", reverse, 2, 1) for reverse in (False, True)
] + [("LSTM", False, 2, 2), ("GRU", False, 0, 2)]


def _op_case_id(case: tuple) -> str:
    cell, reverse, proj, directions = case
    way = "bidirectional" if directions == 2 else "reverse" if reverse else "forward"
    return f"{cell}-{way}{'-proj' if proj else ''}"


@pytest.mark.parametrize("cell,reverse,proj,directions", OP_CASES, ids=[_op_case_id(c) for c in OP_CASES])
def test_op_gradgradcheck(cell: str, reverse: bool, proj: int, directions: int, device):
    """Every cell, both directions, rows of lengths 3, 2, 1; LSTM with a projection (R = 2 < H = 3); both
    directions in one op. The op's inputs include x, W_ih and both biases: the input projection is inside the
    op."""
    cid = CELLS[cell]
    inputs = op_inputs(cid, device, proj, directions)
    lengths = torch.tensor(LENGTHS, device=device)
    fn = op_function(cid, reverse, lengths)
    present = [i for i, t in enumerate(inputs) if t is not None]

    def on_present(*tensors):
        full = list(inputs)
        for i, t in zip(present, tensors):
            full[i] = t
        return fn(*full)

    with fused_path_only() as launches:
        assert gradgradcheck(on_present, [inputs[i] for i in present])
    assert launches.by_kernel.keys() >= {"sequence_fwd_kernel"}


@pytest.mark.parametrize("cell", NN_CELLS)
def test_op_first_backward_under_create_graph_equals_the_kernels(cell: str, device):
    """The recomputed first-order gradients equal the Triton backward kernel's, which runs only without
    create_graph."""
    cid = CELLS[cell]
    inputs = op_inputs(cid, device, 2 if cell == "LSTM" else 0)
    given = [t for t in inputs if t is not None]
    outs = op_function(cid, True, torch.tensor(LENGTHS, device=device))(*inputs)
    torch.manual_seed(5)
    seeds = [torch.randn_like(o) for o in outs]
    with fused_path_only() as launches:
        kernel = torch.autograd.grad(outs, given, seeds, retain_graph=True)
    assert launches.by_kernel == {"sequence_bwd_kernel": 1}
    with fused_path_only() as launches:
        recomputed = torch.autograd.grad(outs, given, seeds, create_graph=True)
    assert launches.total == 0, f"create_graph: plain torch ops, no kernel: {launches.by_kernel}"
    assert all(g.requires_grad for g in recomputed)
    for i, (a, b) in enumerate(zip(recomputed, kernel)):
        assert_close(a, b, F64, f"input {i}")


# ------------------------------------------------------------------------------------------------------------
# The layers
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One layer kind: the fused and torch.nn classes, constructor arguments, and packed input's lengths."""

    fused: type
    ref: type
    kwargs: dict = field(default_factory=dict)
    lengths: list[int] | None = None  # packed (unsorted) input with these lengths
    positive: bool = False  # relu: biases that keep every pre-activation away from the kink

    @property
    def lstm(self) -> bool:
        return self.fused is fused_rnn.LSTM


LAYER_CASES = {
    "LSTM": Case(fused_rnn.LSTM, torch.nn.LSTM),
    "LSTM_proj": Case(fused_rnn.LSTM, torch.nn.LSTM, {"proj_size": 2}),
    "GRU": Case(fused_rnn.GRU, torch.nn.GRU),
    "RNN_tanh": Case(fused_rnn.RNN, torch.nn.RNN),
    "RNN_relu": Case(fused_rnn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}, positive=True),
    "packed_LSTM": Case(fused_rnn.LSTM, torch.nn.LSTM, lengths=[2, 3, 1]),
    "bidirectional_LSTM": Case(fused_rnn.LSTM, torch.nn.LSTM, {"bidirectional": True}),
    "bidirectional_GRU_packed": Case(fused_rnn.GRU, torch.nn.GRU, {"bidirectional": True}, lengths=[1, 3, 2]),
    "two_layer_GRU": Case(fused_rnn.GRU, torch.nn.GRU, {"num_layers": 2}),
    "two_layer_RNN_relu": Case(fused_rnn.RNN, torch.nn.RNN, {"num_layers": 2, "nonlinearity": "relu"},
                               positive=True),
}


def layer_pair(case: Case, device: str, hidden: int = 3) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The fused layer and torch.nn's in float64 with the same weights."""
    torch.manual_seed(0)
    fused = case.fused(I, hidden, **case.kwargs).to(device, F64)
    if case.positive:
        with torch.no_grad():
            for name, p in fused.named_parameters():
                p.copy_(p.abs() + 1.0 if name.startswith("bias") else 0.3 * p)
    ref = case.ref(I, hidden, **case.kwargs).to(device, F64)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def layer_inputs(case: Case, module: torch.nn.Module, device: str) -> list[torch.Tensor]:
    """x (T, B, I), h0 and, for LSTM, c0, in float64, requiring grad."""
    torch.manual_seed(1)
    rows = module.num_layers * (2 if module.bidirectional else 1)
    x = torch.randn(T, B, I, dtype=F64, device=device)
    if case.positive:
        x = x.abs()
    states = [torch.randn(rows, B, module.proj_size or module.hidden_size, dtype=F64, device=device)]
    if case.lstm:
        states.append(torch.randn(rows, B, module.hidden_size, dtype=F64, device=device))
    if case.positive:
        states = [s.abs() for s in states]
    return [t.requires_grad_() for t in (x, *states)]


def layer_function(case: Case, module: torch.nn.Module) -> Callable:
    """The layer's outputs as a function of (x, h0[, c0], *parameters); packed input packs x by case.lengths."""
    names = [n for n, _ in module.named_parameters()]

    def fn(x, *rest):
        n_states = 2 if case.lstm else 1
        states, params = rest[:n_states], rest[n_states:]
        hx = tuple(states) if case.lstm else states[0]
        inp = x
        if case.lengths is not None:
            inp = pack_padded_sequence(x, torch.tensor(case.lengths), enforce_sorted=False)
        y, hidden = functional_call(module, dict(zip(names, params)), (inp, hx))
        y = y.data if isinstance(y, PackedSequence) else y
        return (y, *hidden) if case.lstm else (y, hidden)

    return fn


@pytest.mark.parametrize("name", LAYER_CASES)
def test_layer_gradgradcheck(name: str, device):
    case = LAYER_CASES[name]
    fused, _ = layer_pair(case, device)
    inputs = layer_inputs(case, fused, device)
    with fused_rnn.force_path("sequence"), fused_path_only() as launches:
        assert gradgradcheck(layer_function(case, fused), [*inputs, *fused.parameters()], flat_from=len(inputs))
    assert "sequence_fwd_kernel" in launches.by_kernel


def weights(o: torch.Tensor) -> torch.Tensor:
    """A different weight for each element of ``o``, exact in every dtype (-0.75, -0.25, 0.25, 0.75, 1.25)."""
    return ((torch.arange(o.numel(), device=o.device) % 5 - 1.5) * 0.5).to(o.dtype).view_as(o)


def second_order(case: Case, module: torch.nn.Module, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """First-order gradients of a loss over every output, with create_graph, then the gradients of a loss over
    those: with respect to the input, h0 (and c0) and every parameter. Returns both, first-order first."""
    leaves = [*inputs, *module.parameters()]
    outs = layer_function(case, module)(*leaves)
    loss = sum((o * weights(o)).pow(2).sum() for o in outs)
    first = torch.autograd.grad(loss, leaves, create_graph=True)
    return [g.detach() for g in first] + list(torch.autograd.grad(sum(g.pow(2).sum() for g in first), leaves))


@pytest.mark.parametrize("name", LAYER_CASES)
def test_layer_second_order_gradients_equal_torch_nn(name: str, device):
    """Every second-order gradient (input, h0/c0, each parameter) equals torch.nn's in float64; the fused
    forward and the second backward run the Triton sequence kernels."""
    case = LAYER_CASES[name]
    fused, ref = layer_pair(case, device)
    inputs = layer_inputs(case, fused, device)
    expected = second_order(case, ref, inputs)
    with fused_rnn.force_path("sequence"), fused_path_only() as launches:
        got = second_order(case, fused, inputs)
    launched = fused.num_layers  # one launch per layer: both directions of a bidirectional one together
    # the forward, and the second backward through the outputs (the first backward is recomputed in torch)
    assert launches.by_kernel == {"sequence_fwd_kernel": launched, "sequence_bwd_kernel": launched}
    leaves = ["x", "h0"] + (["c0"] if case.lstm else []) + [n for n, _ in fused.named_parameters()]
    names = [f"d {n}" for n in leaves] + [f"d2 {n}" for n in leaves]
    assert len(got) == len(expected) == len(names)
    for n, a, b in zip(names, got, expected):
        assert_close(a, b, F64, f"{name}: {n}")


@pytest.mark.parametrize("name", ["LSTM_proj", "bidirectional_GRU_packed"])
def test_first_backward_without_create_graph_runs_the_backward_kernel(name: str, device):
    """Without create_graph the first backward is the Triton kernel (one per layer and direction); with it,
    no backward kernel runs."""
    case = LAYER_CASES[name]
    fused, _ = layer_pair(case, device)
    leaves = [*layer_inputs(case, fused, device), *fused.parameters()]
    launched = fused.num_layers  # both directions of a bidirectional layer in one launch
    for create_graph in (False, True):
        with fused_rnn.force_path("sequence"), fused_path_only() as launches:
            outs = layer_function(case, fused)(*leaves)
            grads = torch.autograd.grad(sum(o.sum() for o in outs), leaves, create_graph=create_graph)
        assert all(g.requires_grad == create_graph for g in grads)
        expected = {"sequence_fwd_kernel": launched}
        if not create_graph:
            expected["sequence_bwd_kernel"] = launched
        assert launches.by_kernel == expected, (create_graph, launches.by_kernel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["LSTM_proj", "GRU"])
def test_layer_second_order_gradients_in_lower_precision(name: str, dtype: torch.dtype, device):
    """fp32 and bf16 layers: the recomputation runs in fp32 (as the kernels compute), the gradients come back in
    the parameters' dtype, within the dtype's tolerance of torch.nn's float64 result."""
    case = LAYER_CASES[name]
    fused, ref = layer_pair(case, device)
    fused = fused.to(dtype)
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})  # the same rounded weights
    low = [t.detach().to(dtype).requires_grad_() for t in layer_inputs(case, fused, device)]
    expected = second_order(case, ref, [t.detach().double().requires_grad_() for t in low])
    with fused_rnn.force_path("sequence"), fused_path_only() as launches:
        got = second_order(case, fused, low)
    assert launches.total > 0
    assert all(g.dtype == dtype for g in got)
    for i, (a, b) in enumerate(zip(got, expected)):
        assert_close(a, b, dtype, f"{name} {dtype}: result {i}")
