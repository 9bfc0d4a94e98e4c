"""haste's LayerNorm LSTM, GRU and IndRNN (fused_rnn/layer_norm.py) on the sequence kernels' layer normalisation.

The oracle is haste's own PyTorch code written out in ``fused_rnn/reference.py`` (``haste_layer_norm_lstm``,
``haste_layer_norm_gru``, ``haste_layer_norm_indrnn``, from haste's ``frameworks/pytorch/layer_norm_*.py``),
itself checked on hand-computed steps. Shapes cross the tiles: 17 rows (two batch tiles of 16), 40 units (three blocks of 16, the last partial)
split over one program and over three (whose row statistics then meet across programs), streamed and resident.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import fused_path_only
from fused_rnn.kernels.launch import poison_outputs
from helpers import assert_close, assert_equals_haste
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import backend, reference
from fused_rnn.layers import zoneout_keep

T, B, I, H = 5, 17, 6, 40
LENGTHS = torch.tensor([5, 1, 3, 2] * 4 + [4])
MODULES = {"lstm": fused_rnn.LayerNormLSTM, "gru": fused_rnn.LayerNormGRU, "indrnn": fused_rnn.LayerNormIndRNN}
PLANS = {"one-slice": {"slices": 1}, "three-slices": {"slices": 3}, "resident": {"resident": True}}


def _layer_norm(values: list[float], gains: list[float], biases: list[float] | None = None) -> list[float]:
    """Layer normalisation by hand: biased variance, eps 1e-5."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / len(values)
    biases = biases or [0.0] * len(values)
    return [(v - mean) / math.sqrt(var + 1e-5) * g + b for v, g, b in zip(values, gains, biases, strict=True)]


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_haste_layer_norm_references_on_a_hand_computed_step():
    """One step of haste's LayerNorm LSTM (gates i, g, f, o; two units) and GRU (z, r, g; one unit), the
    normalisations written out by hand."""
    x, h0, c0 = [1.0, -2.0], [0.5, -0.25], [2.0, -1.0]
    kernel = [[0.1, 0.2, 0.3, 0.4, -0.1, 0.0, 0.2, 0.5], [0.3, -0.2, 0.1, 0.0, 0.4, 0.2, -0.3, 0.1]]
    rk = [[1.0, -1.0, 0.5, 0.0, 0.2, 0.3, -0.4, 0.1], [0.0, 0.5, -0.5, 1.0, 0.1, -0.2, 0.3, 0.6]]
    bias = [0.0, 0.1, 0.2, 0.3, -0.1, 0.0, 0.4, 0.2]
    gamma = [[1.0, 0.5, 1.5, 2.0, 1.0, 0.8, 1.2, 0.9], [1.2, 1.0, 0.7, 1.1, 0.6, 1.3, 1.0, 0.5]]
    gamma_h, beta_h = [1.5, 0.7], [0.1, -0.2]
    wx = _layer_norm([sum(x[k] * kernel[k][j] for k in range(2)) for j in range(8)], gamma[0])
    rh = _layer_norm([sum(h0[k] * rk[k][j] for k in range(2)) for j in range(8)], gamma[1])
    v = [a + b + c for a, b, c in zip(wx, rh, bias, strict=True)]
    i, g, f, o = v[0:2], v[2:4], v[4:6], v[6:8]
    c = [_sig(f[u]) * c0[u] + _sig(i[u]) * math.tanh(g[u]) for u in range(2)]
    h = [_sig(o[u]) * math.tanh(n) for u, n in enumerate(_layer_norm(c, gamma_h, beta_h))]
    t = torch.tensor
    hs, cs = reference.haste_layer_norm_lstm(t([[x]]), t([h0]), t([c0]), t(kernel), t(rk), t(bias), t(gamma),
                                             t(gamma_h), t(beta_h))
    torch.testing.assert_close(cs[1, 0], t(c))
    torch.testing.assert_close(hs[1, 0], t(h))
    kernel, rk = [[0.1, 0.2, 0.3]], [[1.0, -1.0, 0.5]]
    bias, rbias, gamma = [0.0, 0.1, 0.2], [0.3, 0.0, -0.1], [[1.0, 2.0, 0.5], [0.5, 1.0, 1.5]]
    wx = [a + b for a, b in zip(_layer_norm([0.1, 0.2, 0.3], gamma[0]), bias, strict=True)]
    rh = [a + b for a, b in zip(_layer_norm([0.5, -0.5, 0.25], gamma[1]), rbias, strict=True)]
    z, r = _sig(wx[0] + rh[0]), _sig(wx[1] + rh[1])
    new = z * 0.5 + (1 - z) * math.tanh(wx[2] + r * rh[2])
    got = reference.haste_layer_norm_gru(t([[[1.0]]]), t([[0.5]]), t(kernel), t(rk), t(bias), t(rbias), t(gamma))
    torch.testing.assert_close(got[1, 0, 0], t(new))
    kernel, u, bias, gamma = [[0.2, -0.4]], [0.5, -0.25], [0.1, 0.3], [[1.5, 0.5], [9.0, 9.0]]  # gamma[1] unused
    wx = [a + b for a, b in zip(_layer_norm([0.2, -0.4], gamma[0]), bias, strict=True)]
    new = [math.tanh(wx[k] + u[k] * h) for k, h in enumerate([0.5, -1.0])]
    got = reference.haste_layer_norm_indrnn(t([[[1.0]]]), t([[0.5, -1.0]]), t(kernel), t(u), t(bias), t(gamma))
    torch.testing.assert_close(got[1, 0], t(new))


def _haste(cell: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    """A haste layer's parameters, haste's names and layout, gains and c's bias away from their initial values."""
    gates = {"lstm": 4, "gru": 3, "indrnn": 1}[cell]

    def randn(*shape, scale=0.4, mean=0.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale + mean

    if cell == "indrnn":
        return {"kernel": randn(I, H), "recurrent_scale": randn(H), "bias": randn(H),
                "gamma": randn(2, H, scale=0.3, mean=1.0)}
    state = {"kernel": randn(I, gates * H), "recurrent_kernel": randn(H, gates * H), "bias": randn(gates * H),
             "gamma": randn(2, gates * H, scale=0.3, mean=1.0)}
    if cell == "lstm":
        state.update(gamma_h=randn(H, scale=0.3, mean=1.0), beta_h=randn(H, scale=0.2))
    else:
        state["recurrent_bias"] = randn(gates * H)
    return state


def _haste_run(cell: str, state: dict, x, h0, c0, zoneout: float, mask, training: bool):
    """haste's result: every output (T, B, H) and the final h (and c)."""
    if cell == "lstm":
        h, c = reference.haste_layer_norm_lstm(x, h0, c0, state["kernel"], state["recurrent_kernel"], state["bias"],
                                               state["gamma"], state["gamma_h"], state["beta_h"], zoneout, mask,
                                               training)
        return h[1:], h[-1], c[-1]
    if cell == "gru":
        h = reference.haste_layer_norm_gru(x, h0, state["kernel"], state["recurrent_kernel"], state["bias"],
                                           state["recurrent_bias"], state["gamma"], zoneout, mask, training)
    else:
        h = reference.haste_layer_norm_indrnn(x, h0, state["kernel"], state["recurrent_scale"], state["bias"],
                                              state["gamma"], zoneout, mask, training)
    return h[1:], h[-1]


# (training, plan, zoneout): training with zoneout on every plan, and weight-stationary without (the LayerNorm
# LSTM's backward keeps W_hh on chip only without zoneout); eval (haste's blend) on programs that meet
RUNS = [(True, plan, 0.3) for plan in PLANS] + [(True, "resident", 0.0), (False, "three-slices", 0.3)]


@pytest.mark.parametrize(("training", "plan", "zoneout"), RUNS,
                         ids=[f"{'training' if t else 'eval'}-{p}-zoneout{z}" for t, p, z in RUNS])
@pytest.mark.parametrize("cell", list(MODULES))
def test_haste_weights_equal_haste(cell, training, plan, zoneout, device):
    """A LayerNorm layer with a haste layer's parameters, zoneout 0.3 (weight-stationary also without): outputs,
    final states and the gradients of the input, the initial states and every haste parameter (gains and c's bias
    included) equal haste's
    (fp64), with the masks the layer drew (same seed) in training and haste's blend in eval; on the sequence
    kernels, one program a row, three that meet, and weight-stationary; outputs poisoned with NaN first."""
    g = torch.Generator().manual_seed(1)
    state = {k: v.to(device) for k, v in _haste(cell, g).items()}
    module = MODULES[cell](I, H, zoneout=zoneout, dtype=torch.float64, device=device).train(training)
    module.load_haste_state_dict(state)
    x = torch.randn(T, B, I, generator=g, dtype=torch.float64).to(device).requires_grad_()
    h0 = torch.randn(1, B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    c0 = torch.randn(1, B, H, generator=g, dtype=torch.float64).to(device).requires_grad_()
    hx = (h0, c0) if cell == "lstm" else h0
    torch.manual_seed(7)
    with fused_path_only() as launches, fused_rnn.force_path("sequence", **PLANS[plan]), poison_outputs():
        y, h = module(x, hx)
        ours = [y, *(h if isinstance(h, tuple) else (h,))]
        loss = sum((o * torch.cos(o)).sum() for o in ours)
        wrt = [x, h0, *([c0] if cell == "lstm" else [])]
        got = list(torch.autograd.grad(loss, wrt + list(module.parameters())))
    assert launches.by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}
    torch.manual_seed(7)
    mask = zoneout_keep(module, T, B, x)
    leaves = {k: v.clone().requires_grad_() for k, v in state.items()}
    theirs = _haste_run(cell, leaves, x, h0[0], c0[0], zoneout, mask if training and zoneout else None, training)
    assert_equals_haste(cell, ours, got, wrt, leaves, theirs, MODULES[cell](I, H, dtype=torch.float64, device=device))


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    """The gains and c's biases away from 1 and 0, so that a forgotten one shows."""
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("ln_"):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device) * 0.3)
    return module


def _run(module, x, kernels: bool, plan: dict):
    """Outputs and every gradient of packed input, on the kernels (outputs poisoned with NaN first) or on
    the plain-torch loop."""
    with pytest.MonkeyPatch.context() as m, fused_rnn.force_path("sequence", **plan), poison_outputs():
        if not kernels:
            m.setattr(backend, "interpreting", lambda: False)
        torch.manual_seed(4)
        out, h = module(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False))
        flat = [out.data, *(h if isinstance(h, tuple) else (h,))]
        return flat + list(torch.autograd.grad(sum((o * torch.sin(o)).sum() for o in flat), [x, *module.parameters()]))


@pytest.mark.parametrize("cell", list(MODULES))
def test_layers_directions_and_packed_input_against_the_reference_loop(cell, device):
    """Two bidirectional layers, batch_first, packed input of unequal lengths, zoneout in training: the kernels
    against the plain-torch loop (``reference.sequence``, which runs where no kernel does), same masks, every
    output and gradient (fp64); padding read anywhere would show as NaN."""
    if device != "cpu":
        pytest.skip("the plain-torch loop runs where no kernel does: the CPU")
    torch.manual_seed(3)
    module = _randomised(MODULES[cell](I, H, num_layers=2, bidirectional=True, batch_first=True, zoneout=0.25,
                                       dtype=torch.float64))
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    names = ["y", "h_n", *(["c_n"] if cell == "lstm" else []), "dx"] + [f"d{n}" for n, _ in module.named_parameters()]
    got_want = zip(_run(module, x, True, PLANS["three-slices"]), _run(module, x, False, {}), names, strict=True)
    for got, want, name in got_want:
        assert_close(got, want, torch.float64, f"{cell} {name}")


# fp32 for every cell; bf16 (the kernels keep fp32 state and statistics) for the LSTM, whose c is normalised too
DTYPE_CASES = [(cell, torch.float32) for cell in MODULES] + [("lstm", torch.bfloat16)]


@pytest.mark.parametrize(("cell", "dtype"), DTYPE_CASES, ids=[f"{c}-{str(d)[6:]}" for c, d in DTYPE_CASES])
def test_fp32_and_bf16_within_the_factor_of_the_reference_loops_own_error(cell, dtype, device):
    """Three programs that meet, one direction, packed, in fp32 (and bf16): every output and gradient within
    TORCH_FACTOR of the same dtype's error of the plain-torch loop (haste's own PyTorch form) against fp64
    (``helpers.assert_close``)."""
    if device != "cpu":
        pytest.skip("the plain-torch loop runs where no kernel does: the CPU")
    torch.manual_seed(5)
    wide = _randomised(MODULES[cell](I, H, batch_first=True, dtype=torch.float64))
    narrow = MODULES[cell](I, H, batch_first=True, dtype=dtype)
    narrow.load_state_dict({k: v.to(dtype) for k, v in wide.state_dict().items()})
    x64 = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    x_low = x64.detach().to(dtype).requires_grad_()
    want = _run(wide, x64, True, PLANS["three-slices"])
    got = _run(narrow, x_low, True, PLANS["three-slices"])
    loop = _run(narrow, x_low, False, {})
    for k, (g, w, lo) in enumerate(zip(got, want, loop, strict=True)):
        assert_close(g, w, dtype, f"{cell} {dtype} result {k}", torch_out=lo)


@pytest.mark.parametrize("cell", list(MODULES))
def test_barriers_per_step_from_the_launches(cell, device):
    """The step's phases, counted where the kernel boundaries are the barriers (the interpreter runs a plan whose
    programs meet one step and phase per launch): three a step for the LSTM forward and four backward (LN(c)'s
    row statistics, then the products' and the carry), two and three for the GRU; one launch each way when one
    program owns every unit of its rows (no barrier), and always for the IndRNN (its input is normalised before
    the loop; its programs own whole one-unit heads)."""
    if device != "cpu":
        pytest.skip("on a GPU a plan whose programs meet is one cooperative launch")
    module = MODULES[cell](I, H, dtype=torch.float64)
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    phases = {"lstm": (3, 4), "gru": (2, 3), "indrnn": None}[cell]
    for slices, per_step in ((3, phases), (1, None)):
        with fused_rnn.force_path("sequence", slices=slices), fused_path_only() as launches:
            y, _ = module(x)
            y.sum().backward()
        want = (T * per_step[0], T * per_step[1]) if per_step else (1, 1)
        assert (launches.by_kernel["sequence_fwd_kernel"], launches.by_kernel["sequence_bwd_kernel"]) == want


def test_double_backward_equals_the_reference_loops(device):
    """Gradients of gradients (create_graph=True): the op's recomputation against the plain-torch loop."""
    if device != "cpu":
        pytest.skip("the plain-torch loop runs where no kernel does: the CPU")
    torch.manual_seed(6)
    module = _randomised(fused_rnn.LayerNormLSTM(I, 24, dtype=torch.float64))
    x = torch.randn(3, 4, I, dtype=torch.float64, requires_grad=True)
    results = []
    for kernels in (True, False):
        with pytest.MonkeyPatch.context() as m:
            if not kernels:
                m.setattr(backend, "interpreting", lambda: False)
            y, _ = module(x)
            (dx,) = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
            results.append(torch.autograd.grad(dx.pow(2).sum(), [x, *module.parameters()]))
    for k, (got, want) in enumerate(zip(*results, strict=True)):
        assert_close(got, want, torch.float64, f"second-order gradient {k}")


def test_compiles_autocasts_and_round_trips(device):
    """torch.compile(fullgraph=True) equals eager; under bf16 autocast the LSTM returns bf16 within the bf16 bound
    of its fp32 result; unbatched input; the state_dict holds the gains under their names and loads back."""
    torch.manual_seed(9)
    module = _randomised(fused_rnn.LayerNormGRU(I, 32, device=device))
    x = torch.randn(T, 3, I, device=device)
    compiled = torch.compile(module, fullgraph=True)
    with fused_path_only() as launches:
        torch.testing.assert_close(compiled(x)[0], module(x)[0], rtol=1e-5, atol=1e-6)
    assert launches.total > 0
    lstm = _randomised(fused_rnn.LayerNormLSTM(I, 32, device=device))
    with torch.autocast(device, dtype=torch.bfloat16):  # torch.nn.LSTM's output dtype there: bf16
        low, _ = lstm(x)
    assert low.dtype == torch.bfloat16
    assert_close(low.float(), lstm(x)[0].double(), torch.bfloat16, "LayerNormLSTM under autocast")
    unbatched, h = module(x[:, 1])  # torch.nn's unbatched input: (T, I) and a (1, H) state
    torch.testing.assert_close(unbatched, module(x)[0][:, 1])
    assert h.shape == (1, 32)
    state = module.state_dict()
    assert {"ln_weight_ih_l0", "ln_weight_hh_l0"} <= state.keys()
    fresh = fused_rnn.LayerNormGRU(I, 32, device=device)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x)[0], module(x)[0])


def test_initialisation_and_what_it_rejects():
    lstm = fused_rnn.LayerNormLSTM(I, H, num_layers=2, bidirectional=True, forget_bias=1.0)
    for name, p in lstm.named_parameters():
        if name.startswith("ln_weight"):
            assert torch.all(p == 1.0), name
        elif name.startswith("ln_bias"):
            assert torch.all(p == 0.0), name
    assert lstm.ln_weight_c_l1_reverse.shape == (H,) and lstm.ln_weight_hh_l1_reverse.shape == (4 * H,)
    assert torch.all(lstm.bias_ih_l1[H : 2 * H] == 1.0)
    assert not any(n.startswith("ln_weight_c") for n, _ in fused_rnn.LayerNormGRU(I, H).named_parameters())
    indrnn = fused_rnn.LayerNormIndRNN(I, H)
    assert [n for n, _ in indrnn.named_parameters() if n.startswith("ln_")] == ["ln_weight_ih_l0"]
    assert torch.all(indrnn.ln_weight_ih_l0 == 1.0) and indrnn.weight_hh_l0.shape == (H, 1)
    with pytest.raises(ValueError, match="proj_size"):
        fused_rnn.LayerNormLSTM(I, H, proj_size=4)
    with pytest.raises(ValueError, match="one layer"):
        fused_rnn.LayerNormGRU(I, H, num_layers=2).load_haste_state_dict({"gamma": torch.ones(2, 3 * H)})
