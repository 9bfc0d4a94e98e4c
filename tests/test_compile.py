"""torch.compile(fullgraph=True) of whole models of fused layers and cells, and no recompilation on new sizes.

No Dynamo setting anywhere: Dynamo refuses every torch.nn.RNN/LSTM/GRU subclass unless
``torch._dynamo.config.allow_rnn`` is set, and fused_rnn lifts that refusal for its own layers only
(``fused_rnn.layers.let_dynamo_trace_fused_layers``), leaving the flag and torch.nn's own layers as they were:
the last tests compile torch.nn's layers in this process with and without fused_rnn's hook and compare
(docs/user-guide.md, "Compiling models"). PackedSequence input too: its batch size, data, is taken from
sorted_indices or the given state, else is an unbacked SymInt (fused_rnn/packing.py), so new batch sizes and
lengths do not recompile.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close, assert_kernels, kernels_of
from torch._dynamo.testing import CompileCounterWithBackend
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn


class Model(torch.nn.Module):
    """Every fused module kind in one model: a 2-layer bidirectional LSTM, a GRU, an RNN and the three cells."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(4, 5, num_layers=2, bidirectional=True)
        self.gru = fused_rnn.GRU(10, 3, batch_first=True)
        self.rnn = fused_rnn.RNN(3, 4, nonlinearity="relu")
        self.lstm_cell = fused_rnn.LSTMCell(4, 3)
        self.gru_cell = fused_rnn.GRUCell(3, 3)
        self.rnn_cell = fused_rnn.RNNCell(3, 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y, (h, c) = self.lstm(x)
        z, hg = self.gru(y.transpose(0, 1))
        r, hr = self.rnn(z.transpose(0, 1))
        hc, cc = self.lstm_cell(x[-1])
        g = self.gru_cell(hc)
        return [r, hr, h, c, hg, cc, self.rnn_cell(g)]


def weighted_sum(outs: list[torch.Tensor]) -> torch.Tensor:
    """A loss that weighs every output element differently."""
    return sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)


def outputs_and_grads(model, x):
    x = x.detach().requires_grad_()
    outs = model(x)
    return outs + list(torch.autograd.grad(weighted_sum(outs), [x, *model.parameters()]))


def assert_compiles_once_and_matches_eager(model, run, calls) -> None:
    """``run(model, *args)`` of the compiled model equals eager's for every (label, args) of ``calls``, on the
    fused path, as one graph compiled once (fullgraph, dynamic) although the sizes change between calls."""
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    for label, args in calls:
        expected = run(model, *args)
        with fused_path_only() as launches:
            got = run(compiled, *args)
        assert_kernels(launches, kernels_of(model))
        for i, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, torch.float32, f"{label}: result {i}")
        frames.append(counter.frame_count)
    assert torch._dynamo.config.allow_rnn is False, "fused_rnn must not set Dynamo's global switch"
    assert frames[0] == frames[1] == frames[2], f"new batch sizes and lengths must not recompile: {frames}"
    assert sum(len(g.graph.nodes) > 2 for g in counter.graphs) == 1, "the whole model is one graph"


def test_whole_model_compiles_without_graph_break_and_without_recompiling(device):
    torch.manual_seed(0)
    calls = [(f"T={T} B={B}", (torch.randn(T, B, 4, device=device),)) for T, B in [(5, 3), (7, 2), (4, 5)]]
    assert_compiles_once_and_matches_eager(Model().to(device), outputs_and_grads, calls)


class PackedModel(torch.nn.Module):
    """Fused layers chained on packed input: a 2-layer bidirectional LSTM, a GRU from a given state, an RNN."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(4, 5, num_layers=2, bidirectional=True)
        self.gru = fused_rnn.GRU(10, 3)
        self.rnn = fused_rnn.RNN(3, 4, nonlinearity="relu")

    def forward(self, x: PackedSequence, h0: torch.Tensor) -> list[torch.Tensor]:
        y, (h, c) = self.lstm(x)
        z, hg = self.gru(y, h0)
        r, hr = self.rnn(z)
        return [r.data, hr, h, c, hg]


def packed_outputs_and_grads(model, x: PackedSequence, h0: torch.Tensor) -> list[torch.Tensor]:
    """The outputs, then the gradients of the packed data, of h0 and of every parameter."""
    data, h0 = x.data.detach().requires_grad_(), h0.detach().requires_grad_()
    outs = model(x._replace(data=data), h0)
    return outs + list(torch.autograd.grad(weighted_sum(outs), [data, h0, *model.parameters()]))


# (T, lengths): new batch sizes, lengths and total lengths. The first call's sizes are all distinct and above 1
# (Dynamo specializes sizes 0 and 1, and shares one symbol between input sizes of equal value).
PACKED_CALLS = [(5, [5, 2]), (7, [3, 7, 6, 1, 7, 2]), (4, [2, 4, 3])]


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_model_compiles_without_graph_break_and_without_recompiling(enforce_sorted: bool, device):
    torch.manual_seed(0)
    calls = []
    for T, lengths in PACKED_CALLS:
        lengths = sorted(lengths, reverse=True) if enforce_sorted else lengths
        padded = torch.randn(T, len(lengths), 4, device=device)
        x = pack_padded_sequence(padded, torch.tensor(lengths), enforce_sorted=enforce_sorted)
        calls.append((f"lengths={lengths}", (x, torch.randn(1, len(lengths), 3, device=device))))
    assert_compiles_once_and_matches_eager(PackedModel().to(device), packed_outputs_and_grads, calls)


def test_compiled_packed_layer_rejects_a_state_of_another_batch_size(device):
    """Under compile the state's batch size stands for the PackedSequence's; the graph checks them when it runs."""
    gru = fused_rnn.GRU(4, 3).to(device)
    x = pack_padded_sequence(torch.randn(5, 3, 4, device=device), torch.tensor([5, 4, 2]))
    compiled = torch.compile(gru, fullgraph=True, dynamic=True)
    message = r"Expected hidden batch size 3 \(the PackedSequence's\), got 4"
    with pytest.raises(RuntimeError, match=message):
        compiled(x, torch.randn(1, 4, 3, device=device))


def _fresh_hook(monkeypatch) -> type:
    """Dynamo's VariableBuilder as if no fused layer had been created in this process (undone after the test)."""
    from torch._dynamo.variables.builder import VariableBuilder

    original = getattr(VariableBuilder.wrap_module, "_fused_rnn_original", VariableBuilder.wrap_module)
    monkeypatch.setattr(VariableBuilder, "wrap_module", original)
    monkeypatch.setattr(fused_rnn.layers, "_dynamo_hook_installed", False)
    return VariableBuilder


class TorchModel(torch.nn.Module):
    """torch.nn's layers and a cell, as a user's model has them before ``fused_rnn.convert``."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 5, bidirectional=True)
        self.gru = torch.nn.GRU(10, 3)
        self.cell = torch.nn.GRUCell(4, 3)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y, (h, c) = self.lstm(x)
        z, hg = self.gru(y)
        return [z, hg, h, c, self.cell(x[0])]


def test_a_converted_model_compiles_once_with_no_dynamo_setting(monkeypatch, device):
    """convert switches classes without running __init__; it installs the hook itself."""
    builder = _fresh_hook(monkeypatch)
    original = builder.wrap_module
    torch.manual_seed(0)
    model = fused_rnn.convert(TorchModel().to(device))
    assert builder.wrap_module is not original
    calls = [(f"T={T} B={B}", (torch.randn(T, B, 4, device=device),)) for T, B in [(5, 3), (7, 2), (4, 6)]]
    assert_compiles_once_and_matches_eager(model, outputs_and_grads, calls)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copied_or_unpickled_layer_installs_the_hook(how: str, monkeypatch):
    """Unpickling and deepcopy run __setstate__, not __init__."""
    import copy
    import pickle

    layer = fused_rnn.GRU(3, 4)
    builder = _fresh_hook(monkeypatch)
    original = builder.wrap_module
    copied = copy.deepcopy(layer) if how == "deepcopy" else pickle.loads(pickle.dumps(layer))
    assert type(copied) is fused_rnn.GRU
    assert builder.wrap_module is not original and builder.wrap_module._fused_rnn_original is original


class PlainModel(torch.nn.Module):
    """A torch.nn recurrent layer between pointwise ops: where Dynamo breaks the graph shows in the graphs."""

    def __init__(self, cls: type):
        super().__init__()
        self.linear = torch.nn.Linear(3, 3)
        self.rnn = cls(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.linear(x))  # a graph before the layer, then a graph break at it unless allow_rnn
        y, _ = self.rnn(h)
        return y * 2


def _how_torch_nn_compiles(cls: type, allow_rnn: bool) -> tuple:
    """Everything observable of compiling a torch.nn layer: outputs and gradients, compiled frames, the op
    targets of every graph, and fullgraph's error (type and first line) or None."""
    torch.manual_seed(0)
    model, x = PlainModel(cls), torch.randn(5, 2, 3, requires_grad=True)
    with torch._dynamo.config.patch(allow_rnn=allow_rnn):
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("eager")
        y = torch.compile(model, backend=counter)(x)
        results = [y, *torch.autograd.grad(y.pow(2).sum(), [x, *model.parameters()])]
        graphs = [[str(n.target) for n in g.graph.nodes] for g in counter.graphs]
        torch._dynamo.reset()
        try:
            torch.compile(model, backend="eager", fullgraph=True)(x)
            error = None
        except Exception as e:  # noqa: BLE001
            error = (type(e).__name__, str(e).splitlines()[0])
    torch._dynamo.reset()
    return results, counter.frame_count, graphs, error


@pytest.mark.parametrize("allow_rnn", [False, True], ids=["default", "allow_rnn"])
@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN], ids=lambda c: c.__name__)
def test_torch_nn_layers_compile_as_without_fused_rnn(cls: type, allow_rnn: bool, monkeypatch):
    """torch.nn's own layers, compiled in a process where fused layers exist, compile exactly as with Dynamo's
    unwrapped code: the same results (equal to eager), the same frames and graphs, the same fullgraph error
    ("Attempted to wrap RNN, GRU, or LSTM" by default; none when the user sets allow_rnn); the flag untouched."""
    fused_rnn.LSTM(3, 4)  # the hook is installed
    with_hook = _how_torch_nn_compiles(cls, allow_rnn)
    _fresh_hook(monkeypatch)
    without = _how_torch_nn_compiles(cls, allow_rnn)
    assert torch._dynamo.config.allow_rnn is False
    (got, *rest), (expected, *rest_expected) = with_hook, without
    assert rest == rest_expected
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    torch.manual_seed(0)
    model, x = PlainModel(cls), torch.randn(5, 2, 3, requires_grad=True)
    y = model(x)
    eager = [y, *torch.autograd.grad(y.pow(2).sum(), [x, *model.parameters()])]
    assert all(torch.equal(a, b) for a, b in zip(got, eager))
    frames, _, error = rest
    if allow_rnn:
        assert error is None and frames == 1
    else:
        assert error == ("Unsupported", "Attempted to wrap RNN, GRU, or LSTM")


def test_a_torch_nn_layer_beside_fused_ones_is_still_refused(device):
    """The hook is per instance: a torch.nn GRU in a model of fused layers is refused as before."""

    class Mixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fused_rnn.LSTM(3, 4)
            self.gru = torch.nn.GRU(4, 2)

        def forward(self, x):
            y = self.lstm(x)[0]  # traced first
            return self.gru(y)[0]

    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match=r"Attempted to wrap RNN, GRU, or LSTM[\s\S]*GRU\(4, 2\)"):
        torch.compile(Mixed().to(device), backend="eager", fullgraph=True)(torch.randn(5, 2, 3, device=device))


def test_a_fused_layer_on_the_torch_fallback_is_refused_as_torch_nn_is(monkeypatch):
    """Where the Triton kernels do not run (CPU without the interpreter) a fused layer's forward is torch.nn's,
    and Dynamo refuses it as it refuses torch.nn's layers (no allow_rnn behaviour slipped in)."""
    monkeypatch.setattr(fused_rnn.layers, "triton_runs_on", lambda tensor: False)
    lstm = fused_rnn.LSTM(3, 4)
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.Unsupported, match="Attempted to wrap RNN, GRU, or LSTM"):
        torch.compile(lstm, backend="eager", fullgraph=True)(torch.randn(5, 2, 3))
