"""torch.compile(fullgraph=True) of whole models of fused layers and cells, and no recompilation on new sizes.

Dynamo refuses every torch.nn.RNN/LSTM/GRU subclass before looking at its
forward unless ``torch._dynamo.config.allow_rnn`` is set; the fused layers'
forward traces fully once it is (docs/user-guide.md).
"""

from __future__ import annotations

import torch
from conftest import fused_path_only
from helpers import TOL, rel_err
from torch._dynamo.testing import CompileCounterWithBackend

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


def outputs_and_grads(model, x):
    x = x.detach().requires_grad_()
    outs = model(x)
    loss = sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs)
    return outs + list(torch.autograd.grad(loss, [x, *model.parameters()]))


def test_whole_model_compiles_without_graph_break_and_without_recompiling(device):
    torch.manual_seed(0)
    model = Model().to(device)
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=True)
    frames = []
    with torch._dynamo.config.patch(allow_rnn=True):
        for T, B in [(5, 3), (7, 2), (4, 5)]:
            x = torch.randn(T, B, 4, device=device)
            expected = outputs_and_grads(model, x)
            with fused_path_only() as launches:
                got = outputs_and_grads(compiled, x)
            assert launches.total > 0
            for a, b in zip(got, expected):
                assert rel_err(a, b) <= TOL[torch.float32], f"T={T} B={B}: {rel_err(a, b):.2e}"
            frames.append(counter.frame_count)
    assert frames[0] == frames[1] == frames[2], f"new batch sizes and lengths must not recompile: {frames}"
    assert sum(len(g.graph.nodes) > 2 for g in counter.graphs) == 1, "the whole model is one graph"
