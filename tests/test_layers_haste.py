"""haste's semantics on the fused layers: zoneout, DropConnect, forget_bias and haste's weights (LSTM, GRU, IndRNN).

The oracle is haste's own PyTorch code, written out in ``fused_rnn/reference.py`` (``haste_lstm``, ``haste_gru``,
``haste_indrnn``, from haste's ``frameworks/pytorch/*.py``), itself checked here on hand-computed steps.
Shapes cross the tiles: 17 rows (two batch tiles of 16), 40 units (three blocks of 16, the last partial).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import fused_path_only
from helpers import assert_close, assert_equals_haste
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import backend, reference
from fused_rnn.layers import zoneout_keep

T, B, I, H = 5, 17, 6, 40
LENGTHS = torch.tensor([5, 1, 3, 2] * 4 + [4])


def test_haste_references_on_hand_computed_steps():
    """One step of haste's LSTM (gates i, g, f, o) and GRU (z, r, g; reset inside the recurrent g term)."""
    x, h0, c0 = torch.tensor([[[1.0]]]), torch.tensor([[0.5]]), torch.tensor([[2.0]])
    kernel, rk = torch.tensor([[0.1, 0.2, 0.3, 0.4]]), torch.tensor([[1.0, -1.0, 0.5, 0.0]])
    bias = torch.tensor([0.0, 0.1, 0.2, 0.3])
    i, g, f, o = 0.1 + 0.5, 0.2 - 0.5 + 0.1, 0.3 + 0.25 + 0.2, 0.4 + 0.3
    sig = torch.sigmoid
    c = sig(torch.tensor(f)) * 2.0 + sig(torch.tensor(i)) * torch.tanh(torch.tensor(g))
    h, cs = reference.haste_lstm(x, h0, c0, kernel, rk, bias)
    torch.testing.assert_close(cs[1, 0, 0], c)
    torch.testing.assert_close(h[1, 0, 0], sig(torch.tensor(o)) * torch.tanh(c))
    kernel, rk = torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[1.0, -1.0, 0.5]])
    bias, rbias = torch.tensor([0.0, 0.1, 0.2]), torch.tensor([0.3, 0.0, -0.1])
    z, r = sig(torch.tensor(0.1 + 0.5 + 0.3)), sig(torch.tensor(0.2 + 0.1 - 0.5))
    new = z * 0.5 + (1 - z) * torch.tanh(0.3 + 0.2 + r * (0.25 - 0.1))
    torch.testing.assert_close(reference.haste_gru(x, h0, kernel, rk, bias, rbias)[1, 0, 0], new)


def _haste(cell: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A haste layer's parameters, haste's names and layout."""
    gates = {"lstm": 4, "gru": 3, "indrnn": 1}[cell]

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * 0.4

    if cell == "indrnn":
        return {"kernel": randn(I, H), "recurrent_scale": randn(H), "bias": randn(H)}
    state = {"kernel": randn(I, gates * H), "recurrent_kernel": randn(H, gates * H), "bias": randn(gates * H)}
    if cell == "gru":
        state["recurrent_bias"] = randn(gates * H)
    return state


MODULES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "indrnn": fused_rnn.IndRNN}


def _haste_run(cell: str, state: dict, x, h0, c0, zoneout: float, mask, training: bool):
    """haste's result: every output (T, B, H) and the final h (and c)."""
    if cell == "lstm":
        h, c = reference.haste_lstm(x, h0, c0, state["kernel"], state["recurrent_kernel"], state["bias"], zoneout,
                                    mask, training)
        return h[1:], h[-1], c[-1]
    if cell == "gru":
        h = reference.haste_gru(x, h0, state["kernel"], state["recurrent_kernel"], state["bias"],
                                state["recurrent_bias"], zoneout, mask, training)
    else:
        h = reference.haste_indrnn(x, h0, state["kernel"], state["recurrent_scale"], state["bias"], zoneout, mask,
                                   training)
    return h[1:], h[-1]


@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("cell", list(MODULES))
def test_haste_weights_and_zoneout_equal_haste(cell, training, device):
    """A fused layer with a haste layer's parameters and zoneout 0.3: outputs, final states and the gradients of
    the input, initial states and every haste parameter equal haste's (fp64), with the masks the layer drew from
    torch's RNG (the same seed draws them again) in training and haste's deterministic blend in eval; on the
    sequence kernels."""
    g = torch.Generator().manual_seed(1)
    state = {k: v.to(device) for k, v in _haste(cell, g).items()}
    module = MODULES[cell](I, H, zoneout=0.3, dtype=torch.float64, device=device).train(training)
    module.load_haste_state_dict(state)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(device).requires_grad_()
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c0 = torch.randn(1, B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    hx = (h0, c0) if cell == "lstm" else h0
    torch.manual_seed(7)
    with fused_path_only() as launches:
        y, h = module(x, hx)
        ours = [y, *(h if isinstance(h, tuple) else (h,))]
        loss = sum((o * torch.cos(o)).sum() for o in ours)
        wrt = [x, h0, *([c0] if cell == "lstm" else [])]
        got = list(torch.autograd.grad(loss, wrt + list(module.parameters())))
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}
    torch.manual_seed(7)
    mask = zoneout_keep(module, T, B, x)
    assert mask.shape == ((T, B, H) if training else (1,))
    if training:
        assert 0.5 < mask.mean().item() < 0.9 and set(mask.unique().tolist()) == {0.0, 1.0}
    leaves = {k: v.clone().requires_grad_() for k, v in state.items()}
    theirs = _haste_run(cell, leaves, x, h0[0], c0[0], 0.3, mask if training else None, training)
    assert_equals_haste(cell, ours, got, wrt, leaves, theirs, MODULES[cell](I, H, dtype=torch.float64, device=device))


def test_same_seed_same_masks_and_a_forgotten_mask_shows(device):
    """Training with zoneout: the same seed gives bitwise the same results, another seed others; the result is
    neither the zoneout-free layer's nor haste's eval blend (a layer that forgot its mask would be one of them)."""
    torch.manual_seed(2)
    module = fused_rnn.GRU(I, H, zoneout=0.4, dtype=torch.float64, device=device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(module(x)[0])
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    module.zoneout = 0.0
    plain = module(x)[0]
    module.zoneout = 0.4
    blend = module.eval()(x)[0]
    assert (runs[0] - plain).abs().max() > 1e-3 and (runs[0] - blend).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [fused_rnn.LSTM, fused_rnn.GRU, fused_rnn.IndRNN])
def test_zoneout_with_layers_directions_and_packed_input(cls, device):
    """Two bidirectional layers, packed input, zoneout in training: the kernels against the plain-torch loop that
    runs where no kernel does, with the same masks (same seed), every output and gradient."""
    if device != "cpu":
        pytest.skip("the plain-torch loop runs where no kernel does: the CPU")
    torch.manual_seed(3)
    module = cls(I, H, num_layers=2, bidirectional=True, zoneout=0.25, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    results = []
    for kernels in (True, False):
        with pytest.MonkeyPatch.context() as m:
            if not kernels:
                m.setattr(backend, "interpreting", lambda: False)
            torch.manual_seed(4)
            out, h = module(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
            flat = [out.data, *(h if isinstance(h, tuple) else (h,))]
            results.append(flat + list(torch.autograd.grad(sum((o * o).sum() for o in flat),
                                                           [x, *module.parameters()])))
    for k, (got, want) in enumerate(zip(*results, strict=True)):
        assert_close(got, want, torch.float64, f"{cls.__name__} result {k}")


def test_dropconnect_drops_w_hh_per_call(device):
    """DropConnect 0.5 in training: the layer computes torch.nn's LSTM with W_hh through dropout drawn at the
    call (same seed), and W_hh's gradient is the dropped one's times the dropout mask / 0.5; in eval W_hh as is."""
    torch.manual_seed(5)
    module = fused_rnn.LSTM(I, H, dropconnect=0.5, dtype=torch.float64, device=device)
    plain = torch.nn.LSTM(I, H, dtype=torch.float64, device=device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    torch.manual_seed(8)
    y, _ = module(x)
    (dw,) = torch.autograd.grad(y.sum(), [module.weight_hh_l0])
    torch.manual_seed(8)
    dropped = F.dropout(module.weight_hh_l0.detach(), 0.5, training=True).requires_grad_()
    plain.load_state_dict({**module.state_dict(), "weight_hh_l0": dropped.detach()})
    with torch.no_grad():
        plain.weight_hh_l0 = torch.nn.Parameter(dropped)
    want, _ = plain(x)
    assert_close(y, want, torch.float64, "DropConnect y")
    (dw_want,) = torch.autograd.grad(want.sum(), [plain.weight_hh_l0])
    assert_close(dw, dw_want * (dropped != 0) / 0.5, torch.float64, "DropConnect dW_hh")
    module.eval()
    plain.load_state_dict(module.state_dict())
    assert_close(module(x)[0], plain(x)[0], torch.float64, "DropConnect in eval")


def test_forget_bias_and_arguments():
    lstm = fused_rnn.LSTM(I, H, num_layers=2, forget_bias=1.0)
    for layer in (0, 1):
        assert torch.all(getattr(lstm, f"bias_ih_l{layer}")[H : 2 * H] == 1.0)
        assert torch.all(getattr(lstm, f"bias_hh_l{layer}")[H : 2 * H] == 0.0)
    assert "zoneout=0.1" in repr(fused_rnn.GRU(I, H, zoneout=0.1))
    with pytest.raises(ValueError, match="zoneout"):
        fused_rnn.LSTM(I, H, zoneout=1.0)
    with pytest.raises(ValueError, match="proj_size"):
        fused_rnn.LSTM(I, H, proj_size=4, zoneout=0.1)
    with pytest.raises(ValueError, match="one layer"):
        fused_rnn.GRU(I, H, num_layers=2).load_haste_state_dict({})


def test_zoneout_compiles_as_one_graph(device):
    """torch.compile(fullgraph=True) of a GRU with zoneout: in eval the same results as eager; in training one
    graph runs (its masks come from Inductor's RNG, not eager's: the same seed does not give eager's masks)."""
    torch.manual_seed(9)
    module = fused_rnn.GRU(I, 32, zoneout=0.2, device=device)
    x = torch.randn(T, 3, I, device=device)
    compiled = torch.compile(module, fullgraph=True)
    y, _ = compiled(x)
    assert y.shape == (T, 3, 32) and torch.isfinite(y).all()
    module.eval()
    torch.testing.assert_close(compiled(x)[0], module(x)[0], rtol=1e-5, atol=1e-6)
