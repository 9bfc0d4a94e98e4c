"""fused_rnn.LSTM/GRU/RNN against torch.nn over the contract's grid, in Triton's interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from helpers import TOL, rel_err
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import fused_rnn

CELLS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
# (bias, batch_first, bidirectional, num_layers, h0 given): every value of each option appears.
CONFIGS = [
    (True, False, False, 1, False),
    (False, True, True, 2, True),
    (True, True, False, 3, True),
    (True, False, True, 1, True),
]
KINDS = ["batched", "unbatched", "packed_sorted", "packed_unsorted", "pack_sequence"]
I, H, T, B = 5, 6, 5, 3


def make_pair(cell: str, dtype=torch.float64, device="cpu", **kwargs):
    """A fused module and a torch.nn module with the same weights."""
    torch.manual_seed(0)
    if cell.startswith("RNN"):
        kwargs["nonlinearity"] = cell[4:].lower()
        fused_cls, torch_cls = fused_rnn.RNN, torch.nn.RNN
    else:
        fused_cls, torch_cls = getattr(fused_rnn, cell), getattr(torch.nn, cell)
    fused = fused_cls(I, H, **kwargs).to(device, dtype)
    ref = torch_cls(I, H, **kwargs).to(device, dtype)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def make_input(kind: str, batch_first: bool, dtype, device):
    """The input for one input kind, a leaf tensor to differentiate, and the batch size."""
    x = torch.randn(B, T, I, dtype=dtype, device=device) if batch_first else torch.randn(T, B, I, dtype=dtype, device=device)
    if kind == "batched":
        x.requires_grad_()
        return x, x, B
    if kind == "unbatched":
        x = torch.randn(T, I, dtype=dtype, device=device, requires_grad=True)
        return x, x, 1
    x.requires_grad_()
    if kind == "packed_sorted":
        return pack_padded_sequence(x, torch.tensor([T, 3, 1]), batch_first=batch_first), x, B
    if kind == "packed_unsorted":
        return pack_padded_sequence(x, torch.tensor([2, T, 1]), batch_first=batch_first, enforce_sorted=False), x, B
    seqs = [torch.randn(n, I, dtype=dtype, device=device, requires_grad=True) for n in (1, T, 3)]
    leaf = seqs[1]
    return pack_sequence(seqs, enforce_sorted=False), leaf, B


def outputs(out) -> list[torch.Tensor]:
    y, hidden = out
    y = y.data if isinstance(y, torch.nn.utils.rnn.PackedSequence) else y
    return [y, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def forward_backward(module, inp, leaf, hx, seed_grads):
    out = outputs(module(inp, hx))
    params = [p for p in module.parameters()]
    leaves = [leaf] + ([*hx] if isinstance(hx, tuple) else [hx] if hx is not None else [])
    grads = torch.autograd.grad(out, leaves + params, seed_grads, retain_graph=True)
    return [o.detach() for o in out], list(grads)


def initial_state(cell, module, batch, unbatched, dtype, device, proj=0):
    dirs = 2 if module.bidirectional else 1
    shape = (module.num_layers * dirs,) + (() if unbatched else (batch,))
    h = torch.randn(*shape, proj or H, dtype=dtype, device=device, requires_grad=True)
    if cell == "LSTM":
        return (h, torch.randn(*shape, H, dtype=dtype, device=device, requires_grad=True))
    return h


def check_against_torch(cell, kind, config, dtype, device, proj=0):
    bias, batch_first, bidirectional, num_layers, with_h0 = config
    kwargs = dict(bias=bias, batch_first=batch_first, bidirectional=bidirectional, num_layers=num_layers)
    if proj:
        kwargs["proj_size"] = proj
    fused, ref = make_pair(cell, dtype, device, **kwargs)
    inp, leaf, batch = make_input(kind, batch_first, dtype, device)
    hx = initial_state(cell, fused, batch, kind == "unbatched", dtype, device, proj) if with_h0 else None
    expected_out, expected_grads = forward_backward(ref, inp, leaf, hx, seeds := _seeds(ref, inp, hx))
    with fused_path_only() as launches:
        got_out, got_grads = forward_backward(fused, inp, leaf, hx, seeds)
    assert launches.total > 0
    for name, a, b in zip(["output", "h_n", "c_n"], got_out, expected_out):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) <= TOL[dtype], f"{name}: {rel_err(a, b):.2e}"
    names = ["input"] + (["h0", "c0"] if with_h0 else []) + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got_grads, expected_grads):
        assert rel_err(a, b) <= TOL[dtype], f"grad {name}: {rel_err(a, b):.2e}"
    return launches


def _seeds(module, inp, hx):
    """Random output gradients, one per output, shaped like torch.nn's outputs."""
    with torch.no_grad():
        out = outputs(module(inp, hx))
    return [torch.randn_like(o) for o in out]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "bias{}-bf{}-bi{}-L{}-h0{}".format(*map(int, c)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_fp64(cell, kind, config, device):
    check_against_torch(cell, kind, config, torch.float64, device)


@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_fp32(cell, kind, device):
    check_against_torch(cell, kind, CONFIGS[1], torch.float32, device)


@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["uni", "bi2"])
def test_lstm_proj_size(kind, config, device):
    launches = check_against_torch("LSTM", kind, config, torch.float64, device, proj=3)
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}, "projection inside the kernel"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lstm_proj_size_over_several_blocks(dtype, device):
    """Hidden 20 and projection 17 span two 16-wide column blocks; packed lengths and both directions."""
    torch.manual_seed(3)
    fused = fused_rnn.LSTM(I, 20, proj_size=17, bidirectional=True).to(device, dtype)
    ref = torch.nn.LSTM(I, 20, proj_size=17, bidirectional=True).to(device, dtype)
    ref.load_state_dict(fused.state_dict())
    inp, leaf, _ = make_input("packed_unsorted", False, dtype, device)
    seeds = _seeds(ref, inp, None)
    expected_out, expected_grads = forward_backward(ref, inp, leaf, None, seeds)
    with fused_path_only() as launches:
        got_out, got_grads = forward_backward(fused, inp, leaf, None, seeds)
    assert launches.by_kernel == {"sequence_fwd_kernel": 2, "sequence_bwd_kernel": 2}
    for a, b in zip(got_out + got_grads, expected_out + expected_grads):
        assert a.shape == b.shape
        assert rel_err(a, b) <= TOL[dtype], f"{rel_err(a, b):.2e}"


@pytest.mark.parametrize("cell", CELLS)
def test_stepwise_path_matches_torch(cell, device):
    with fused_rnn.force_path("stepwise"):
        launches = check_against_torch(cell, "packed_unsorted", CONFIGS[1], torch.float64, device)
    assert "sequence_fwd_kernel" not in launches.by_kernel


def test_stepwise_path_with_projection(device):
    with fused_rnn.force_path("stepwise"):
        launches = check_against_torch("LSTM", "packed_unsorted", CONFIGS[1], torch.float64, device, proj=3)
    assert launches.by_kernel.keys() == {"lstm_cell_fwd_kernel", "lstm_cell_bwd_kernel"}


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_on_the_stepwise_path(cell, device):
    """create_graph=True through a layer: the stepwise path's fused cells are twice differentiable."""
    fused, ref = make_pair(cell, torch.float64, device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)

    def second_order(module):
        y = outputs(module(x))[0]
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, *module.parameters()])

    expected = second_order(ref)
    with fused_rnn.force_path("stepwise"), fused_path_only() as launches:
        got = second_order(fused)
    assert launches.total > 0
    for a, b in zip(got, expected):
        assert rel_err(a, b) <= TOL[torch.float64], f"{rel_err(a, b):.2e}"


def test_double_backward_on_the_sequence_path_names_the_way_out(device):
    fused, _ = make_pair("GRU", torch.float64, device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    y, _ = fused(x)
    with pytest.raises(NotImplementedError, match="force_path"):
        torch.autograd.grad(y.sum(), x, create_graph=True)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_launches_do_not_grow_with_sequence_length(cell, device):
    counts = []
    for length in (4, 64):
        fused, _ = make_pair(cell, torch.float32, device)
        x = torch.randn(length, 2, I, device=device, requires_grad=True)
        with fused_path_only() as launches:
            y, _ = fused(x)
            y.sum().backward()
        counts.append(launches.total)
    assert counts[0] == counts[1] == 2, counts


def test_long_sequence_relative_rms(device):
    """T = 256 in fp32 against the float64 torch.nn result: relative RMS error stays at fp32 level."""
    fused, ref = make_pair("LSTM", torch.float32, device)
    ref = ref.double()
    x = torch.randn(256, 2, I, device=device)
    with fused_path_only():
        y, (h, c) = fused(x)
    y_ref, _ = ref(x.double())
    err = ((y.double() - y_ref).pow(2).mean().sqrt() / y_ref.pow(2).mean().sqrt()).item()
    assert err <= 1e-5, err


def test_dropout_between_layers(device):
    fused, _ = make_pair("LSTM", torch.float64, device, num_layers=3, dropout=0.0)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    no_dropout, _ = fused(x)
    fused.dropout = 0.5
    fused.eval()
    assert torch.equal(fused(x)[0], no_dropout), "no dropout in eval mode"
    fused.train()
    torch.manual_seed(7)
    y, _ = fused(x)
    # The same computation layer by layer: dropout on the outputs of layers 0 and 1 only.
    layers = []
    for k in range(3):
        single = fused_rnn.LSTM(I if k == 0 else H, H).to(device, torch.float64)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            setattr(single, f"{name}_l0", getattr(fused, f"{name}_l{k}"))
        layers.append(single)
    torch.manual_seed(7)
    h = x
    for k, single in enumerate(layers):
        h, _ = single(h)
        if k < 2:
            h = torch.nn.functional.dropout(h, 0.5, training=True)
    assert torch.equal(y, h)
    fused.dropout = 0.0
    assert torch.equal(fused(x)[0], no_dropout), "p = 0 equals no dropout; changing .dropout takes effect"


@pytest.mark.parametrize("cell", CELLS)
def test_same_contract_as_torch(cell):
    fused, ref = make_pair(cell, torch.float32, "cpu", num_layers=2, bidirectional=True)
    assert isinstance(fused, type(ref))
    assert list(fused.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    fused.flatten_parameters()


@pytest.mark.parametrize(
    "case", ["4d_input", "input_size", "hidden_shape", "hidden_dims", "dtype", "empty_sequence"]
)
def test_errors_match_torch(case, device):
    fused, ref = make_pair("LSTM", torch.float32, device)
    x = torch.randn(T, B, I, device=device)
    hx = (torch.zeros(1, B, H, device=device), torch.zeros(1, B, H, device=device))
    if case == "4d_input":
        x = x[None]
    elif case == "input_size":
        x = torch.randn(T, B, I + 1, device=device)
    elif case == "hidden_shape":
        hx = (torch.zeros(1, B + 1, H, device=device), hx[1])
    elif case == "hidden_dims":
        hx = (hx[0][0], hx[1][0])
    elif case == "dtype":
        x = x.double()
    elif case == "empty_sequence":
        x = x[:0]
    with pytest.raises(Exception) as expected:
        ref(x, hx)
    before = [p.clone() for p in fused.parameters()]
    with pytest.raises(expected.type):
        fused(x, hx)
    assert all(torch.equal(a, b) for a, b in zip(before, fused.parameters()))


def test_tied_and_noncontiguous_weights(device):
    fused, ref = make_pair("GRU", torch.float64, device, bidirectional=True)
    for m in (fused, ref):
        m.bias_ih_l0_reverse = m.bias_ih_l0
        m.weight_hh_l0 = torch.nn.Parameter(m.weight_hh_l0.detach().t().contiguous().t())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    with fused_path_only():
        y, h = fused(x)
    y_ref, h_ref = ref(x)
    assert rel_err(y, y_ref) <= TOL[torch.float64] and rel_err(h, h_ref) <= TOL[torch.float64]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_half_types_against_float64(cell, dtype, device):
    """fp16/bf16 storage with fp32 state and math, against float64 torch.nn on the same rounded values."""
    fused, _ = make_pair(cell, dtype, device, num_layers=2, bidirectional=True)
    ref = make_pair(cell, torch.float64, device, num_layers=2, bidirectional=True)[1]
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    x = torch.randn(T, B, I, device=device).to(dtype).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    with fused_path_only():
        y, _ = fused(x)
        (gx,) = torch.autograd.grad(y.float().square().sum(), x)
    y_ref, _ = ref(x64)
    (gx_ref,) = torch.autograd.grad(y_ref.square().sum(), x64)
    assert y.dtype == dtype
    assert rel_err(y, y_ref) <= TOL[dtype] and rel_err(gx, gx_ref) <= TOL[dtype]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU-only: the classic size is too slow for the interpreter")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("cell", CELLS)
def test_classic_size_on_gpu(cell, dtype, monkeypatch):
    """T=100, B=64, input = hidden = 512 against float64 torch.nn (fp32 products in IEEE, not TF32)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fused = (fused_rnn.RNN(512, 512, nonlinearity=cell[4:].lower()) if cell.startswith("RNN")
             else getattr(fused_rnn, cell)(512, 512)).cuda().to(dtype)
    ref = type(fused).__mro__[1](512, 512, **({"nonlinearity": cell[4:].lower()} if cell.startswith("RNN") else {}))
    ref = ref.cuda().double()
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    x = torch.randn(100, 64, 512, device="cuda").to(dtype)
    with fused_path_only():
        y, _ = fused(x)
    y_ref, _ = ref(x.double())
    assert rel_err(y, y_ref) <= TOL[dtype]


def test_weight_norm_and_reassigned_weights(device):
    fused, ref = make_pair("LSTM", torch.float64, device)
    for m in (fused, ref):
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    with fused_path_only():
        y, _ = fused(x)
    assert rel_err(y, ref(x)[0]) <= TOL[torch.float64]
    for m in (fused, ref):
        m.weight_ih_l0 = torch.nn.Parameter(torch.ones_like(m.weight_ih_l0) * 0.1)
    with fused_path_only():
        y, _ = fused(x)
    assert rel_err(y, ref(x)[0]) <= TOL[torch.float64]
