"""fused_rnn.convert: in-place swap of torch.nn recurrent modules for the fused ones."""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close, assert_kernels, kernels_of

import fused_rnn


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.GRU(4, 6, bidirectional=True)
        self.cell = torch.nn.LSTMCell(12, 5)


class Model(torch.nn.Module):
    """Nested and sibling recurrent layers and cells."""

    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.siblings = torch.nn.ModuleList([torch.nn.LSTM(5, 3, num_layers=2), torch.nn.RNN(5, 3, nonlinearity="relu")])
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.encoder.rnn(x)
        h, _ = self.encoder.cell(y[-1])
        a, _ = self.siblings[0](h.unsqueeze(0))
        b, _ = self.siblings[1](h.unsqueeze(0))
        return self.head(torch.cat([a, b], dim=-1))


def test_convert_keeps_results_parameters_and_optimizer(device):
    torch.manual_seed(0)
    model = Model().to(device, torch.float64)
    reference = Model().to(device, torch.float64)
    reference.load_state_dict(model.state_dict())
    model.encoder.rnn.my_attribute = "kept"
    model.eval()
    params_before = list(model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert fused_rnn.convert(model) is model
    assert type(model.encoder.rnn) is fused_rnn.GRU and type(model.encoder.cell) is fused_rnn.LSTMCell
    assert type(model.siblings[0]) is fused_rnn.LSTM and type(model.siblings[1]) is fused_rnn.RNN
    assert all(a is b for a, b in zip(params_before, model.parameters()))
    assert model.encoder.rnn.my_attribute == "kept" and not model.training
    x = torch.randn(4, 3, 4, dtype=torch.float64, device=device)
    with fused_path_only() as launches:
        out = model(x)
        out.square().sum().backward()
    assert_kernels(launches, kernels_of(model))
    expected = reference(x)
    expected.square().sum().backward()
    assert_close(out, expected, torch.float64, "output")
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p.grad, q.grad, torch.float64, name)
    before = model.head.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(model.head.weight, before), "the optimizer built before conversion updates the model"
    expected_w = reference.siblings[0].weight_hh_l1 - 0.1 * reference.siblings[0].weight_hh_l1.grad
    assert_close(model.siblings[0].weight_hh_l1.detach(), expected_w.detach(), torch.float64, "weight after a step")


def test_state_dicts_round_trip_with_torch_save(tmp_path):
    fused = fused_rnn.convert(Model())
    plain = Model()
    for src, dst in ((fused, plain), (plain, fused)):
        buffer = io.BytesIO()
        torch.save(src.state_dict(), buffer)
        buffer.seek(0)
        dst.load_state_dict(torch.load(buffer))
        for a, b in zip(src.state_dict().values(), dst.state_dict().values()):
            assert torch.equal(a, b)


def test_user_subclass_left_alone_with_warning():
    class MyLSTM(torch.nn.LSTM):
        def forward(self, input, hx=None):
            return super().forward(input, hx)

    model = torch.nn.Sequential(MyLSTM(3, 4))
    with pytest.warns(UserWarning, match="MyLSTM"):
        fused_rnn.convert(model)
    assert type(model[0]) is MyLSTM
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fused_rnn.convert(fused_rnn.convert(torch.nn.Sequential(torch.nn.GRU(3, 4))))
