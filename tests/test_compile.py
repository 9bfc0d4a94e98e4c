"""torch.compile(fullgraph=True) of whole models of fused layers and cells, and no recompilation on new sizes.

Dynamo refuses every torch.nn.RNN/LSTM/GRU subclass before looking at its
forward unless ``torch._dynamo.config.allow_rnn`` is set; the fused layers'
forward traces fully once it is (docs/user-guide.md). PackedSequence input
too: its batch size, data, is taken from sorted_indices or the given state,
else is an unbacked SymInt (fused_rnn/packing.py), so new batch sizes and
lengths do not recompile.
"""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from helpers import TOL, rel_err
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
    with torch._dynamo.config.patch(allow_rnn=True):
        for label, args in calls:
            expected = run(model, *args)
            with fused_path_only() as launches:
                got = run(compiled, *args)
            assert launches.total > 0
            for a, b in zip(got, expected):
                assert rel_err(a, b) <= TOL[torch.float32], f"{label}: {rel_err(a, b):.2e}"
            frames.append(counter.frame_count)
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
    with torch._dynamo.config.patch(allow_rnn=True), pytest.raises(RuntimeError, match=message):
        compiled(x, torch.randn(1, 4, 3, device=device))
