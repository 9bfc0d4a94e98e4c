"""The reference cell loop that torch.compile compiles matches torch.nn (eager, float64)."""

from __future__ import annotations

import pytest
import torch

from fused_rnn.bench.cases import Case
from fused_rnn.bench.loop import recurrent_loop
from fused_rnn.bench.problem import make_problem, module_forward


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("layers, bidirectional, packed", [(1, False, False), (2, True, True)])
def test_loop_matches_torch_nn(cell, layers, bidirectional, packed):
    case = Case(cell=cell, mode="forward", seq_len=7, batch=5, input_size=3, hidden_size=4,
                num_layers=layers, bidirectional=bidirectional, packed=packed)
    p = make_problem(case, torch.device("cpu"))
    module = p.module.double()
    x, h0, c0 = (None if t is None else t.double() for t in (p.inputs.x, p.inputs.h0, p.inputs.c0))
    lengths = p.inputs.lengths if packed else torch.full((5,), 7)
    got = recurrent_loop(cell, x, lengths, h0, c0, list(module.parameters()), bidirectional)
    p.inputs.x, p.inputs.h0, p.inputs.c0 = x, h0, c0
    want = module_forward(module, p.inputs)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
