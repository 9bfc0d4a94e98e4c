"""Fused models through torch.save/load, pickling, deepcopy, .to(), functional_call and parametrizations."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close, assert_kernels, errors, kernels_of
from torch.nn.utils import parametrizations, parametrize

import fused_rnn


class Model(torch.nn.Module):
    """A fused 2-layer bidirectional LSTM, a GRU cell and a head."""

    def __init__(self):
        super().__init__()
        self.lstm = fused_rnn.LSTM(4, 5, num_layers=2, bidirectional=True)
        self.cell = fused_rnn.GRUCell(10, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.head(self.cell(y[-1]))


def model(device) -> Model:
    torch.manual_seed(0)
    return Model().to(device, torch.float64)


def outputs_and_grads(m: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with fused_path_only() as launches:
        out = m(x)
        grads = torch.autograd.grad(out.square().sum(), list(m.parameters()))
    assert_kernels(launches, kernels_of(m))
    return [out.detach(), *grads]


def assert_same(got: list[torch.Tensor], expected: list[torch.Tensor]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert_close(a, b, torch.float64)


def test_torch_save_and_load_of_a_whole_model(device):
    m = model(device)
    x = torch.randn(6, 2, 4, dtype=torch.float64, device=device)
    buffer = io.BytesIO()
    torch.save(m, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert type(loaded.lstm) is fused_rnn.LSTM and type(loaded.cell) is fused_rnn.GRUCell
    assert_same(outputs_and_grads(loaded, x), outputs_and_grads(m, x))


def test_state_dict_files_move_both_ways_with_torch_nn(device):
    m = model(device)
    plain = torch.nn.LSTM(4, 5, num_layers=2, bidirectional=True).to(device, torch.float64)
    for source, target in [(m.lstm, plain), (plain, m.lstm)]:
        buffer = io.BytesIO()
        torch.save(source.state_dict(), buffer)
        buffer.seek(0)
        target.load_state_dict(torch.load(buffer))
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_pickle_and_deepcopy(device):
    m = model(device)
    x = torch.randn(6, 2, 4, dtype=torch.float64, device=device)
    expected = outputs_and_grads(m, x)
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert all(a is not b for a, b in zip(clone.parameters(), m.parameters()))
        assert_same(outputs_and_grads(clone, x), expected)


def test_to_dtype_and_device(device):
    m = model("cpu").float().to(device)
    assert all(p.dtype == torch.float32 and p.device.type == device for p in m.parameters())
    m = m.double()
    x = torch.randn(6, 2, 4, dtype=torch.float64, device=device)
    assert_same(outputs_and_grads(m, x), outputs_and_grads(model(device), x))


def test_functional_call_with_other_parameters(device):
    m, other = model(device), model(device)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    x = torch.randn(6, 2, 4, dtype=torch.float64, device=device)
    params = dict(other.named_parameters())
    with fused_path_only() as launches:
        got = torch.func.functional_call(m, params, (x,))
    assert_kernels(launches, kernels_of(m, backward=False))
    assert_close(got, other(x), torch.float64, "output")
    assert errors(got, m(x)).norm > 0.01, "the given parameters were used"


class Halve(torch.nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * w


@pytest.mark.parametrize("kind", ["parametrize", "weight_norm"])
def test_parametrized_recurrent_weights(kind, device):
    """A parametrization on weight_hh_l0 of the fused LSTM equals the same on torch.nn.LSTM."""
    fused = fused_rnn.LSTM(4, 5).to(device, torch.float64)
    plain = torch.nn.LSTM(4, 5).to(device, torch.float64)
    plain.load_state_dict(fused.state_dict())
    for module in (fused, plain):
        if kind == "parametrize":
            parametrize.register_parametrization(module, "weight_hh_l0", Halve())
        else:
            parametrizations.weight_norm(module, "weight_hh_l0")
    x = torch.randn(6, 2, 4, dtype=torch.float64, device=device)
    expected = [plain(x)[0]] + list(torch.autograd.grad(plain(x)[0].sum(), list(plain.parameters())))
    with fused_path_only() as launches:
        y = fused(x)[0]
        got = [y] + list(torch.autograd.grad(y.sum(), list(fused.parameters())))
    assert_kernels(launches, kernels_of(fused))
    assert_same(got, expected)
