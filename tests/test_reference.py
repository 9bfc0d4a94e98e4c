"""The plain-PyTorch reference cells against torch.nn's cells, in float64."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import reference


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
def test_reference_equals_torch_nn(kind, bias):
    torch.manual_seed(0)
    x, h, c = torch.randn(3, 4).double(), torch.randn(3, 5).double(), torch.randn(3, 5).double()
    if kind == "lstm":
        cell = torch.nn.LSTMCell(4, 5, bias).double()
    elif kind == "gru":
        cell = torch.nn.GRUCell(4, 5, bias).double()
    else:
        cell = torch.nn.RNNCell(4, 5, bias, nonlinearity=kind[4:]).double()
    w = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    with torch.no_grad():
        if kind == "lstm":
            got, expected = reference.lstm_cell(x, h, c, *w), cell(x, (h, c))
        elif kind == "gru":
            got, expected = (reference.gru_cell(x, h, *w),), (cell(x, h),)
        else:
            got, expected = (reference.rnn_cell(x, h, *w, kind[4:]),), (cell(x, h),)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
