"""fused_rnn.flashrnn against FlashRNN itself (package ``flashrnn``): its pure-PyTorch backends are the oracle.

FlashRNN's "vanilla_fwbw" backend (its hand-written backward, which its CUDA
and Triton kernels follow) is the reference for LSTM and sLSTM, "vanilla"
(autograd through its forward) for GRU and Elman, which vanilla_fwbw lacks.
Every case compares the outputs, the last states and the gradients of Wx,
R, b and the initial states, with a loss that reaches every state of every
step (h, c, n; m has no gradient in FlashRNN's backward) and the last states.
Shapes cross the tiles: 17 rows (two batch tiles of 16), several heads, heads
split over several programs, blocks of 16 units that straddle two heads
(head widths 8 and 24), and one head (the torch.nn cell's W_hh).
"""

from __future__ import annotations

import pytest
import torch
import triton
from fused_rnn.kernels.launch import count_launches, poison_outputs
from helpers import assert_close
from packaging.version import Version

import fused_rnn

flashrnn = pytest.importorskip("flashrnn", reason="FlashRNN (test dependency) is not installed").flashrnn

T, B = 5, 17
# function -> (gates of Wx, of b, states)
SHAPES = {"lstm": (4, 4, 2), "slstm": (4, 4, 4), "gru": (3, 4, 1), "elman": (1, 1, 1)}


def reference(function: str, Wx, R, b, states):
    """FlashRNN's own pure-PyTorch result (it runs on the CPU)."""
    backend = "vanilla_fwbw" if function in ("lstm", "slstm") else "vanilla"
    return flashrnn(Wx, R, b, states, function=function, backend=backend, dtype="float32")


def inputs(function: str, heads: int, head: int, dtype: torch.dtype, device: str, scale: float = 1.0, seed: int = 0,
           steps: int = T, batch: int = B):
    """FlashRNN's tensors (Wx, R, b, initial states) on ``device``, leaves requiring grad; the sLSTM's initial n
    positive."""
    gw, gb, states = SHAPES[function]
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, s=1.0):
        return (s * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    Wx = randn(batch, steps, gw, heads, head, s=scale)
    R = randn(gw if function != "gru" else 3, heads, head, head, s=head ** -0.5)
    b = randn(gb, heads, head)
    s0 = randn(states, batch, 1, heads, head)
    if function == "slstm":
        s0[2] = s0[2].abs() + 0.5
    return [t.to(device).requires_grad_() for t in (Wx, R, b, s0)]


def outputs_and_grads(fn, function: str, tensors):
    """The results and the gradients of every input for a loss on every step's states and the last states."""
    every, last = fn(function, *tensors)
    recurrent = every[:3] if function == "slstm" else every  # FlashRNN's backward gives m no gradient
    loss = (recurrent * torch.cos(recurrent)).sum() + (last[:3] * last[:3]).sum()
    return [every, last, *torch.autograd.grad(loss, tensors)]


def fused(function, Wx, R, b, states):
    return fused_rnn.flashrnn(Wx, R, b, states, function=function)


NAMES = ["all states", "last states", "dWx", "dR", "db", "dstates"]
# (function, heads, head width, forced plan): the cost model's plan, or slices / resident forced.
CASES = [
    ("lstm", 3, 16, {}),  # whole heads, one per program
    ("slstm", 2, 48, {"slices": 6}),  # 3 programs of 16 units per head, meeting at the barrier
    ("slstm", 2, 24, {"resident": True}),  # blocks straddling heads, W_hh on chip
    ("gru", 2, 24, {"slices": 3}),  # blocks straddling heads (24 is not a power of two)
    ("elman", 4, 8, {}),  # heads narrower than a block
    ("lstm", 1, 40, {"slices": 3}),  # one head: a torch.nn W_hh
]


@pytest.mark.parametrize(("function", "heads", "head", "plan"), CASES,
                         ids=["lstm-3x16", "slstm-2x48-split", "slstm-2x24-resident", "gru-2x24", "elman-4x8",
                              "lstm-1x40"])
def test_matches_flashrnn_in_fp64(function, heads, head, plan, device):
    """Every result and gradient within the fp64 bound of FlashRNN's, NaN-poisoned outputs all written, by the
    sequence kernels."""
    tensors = inputs(function, heads, head, torch.float64, device)
    want = outputs_and_grads(reference, function, tensors)
    with fused_rnn.force_path("sequence", **plan), count_launches() as launches, poison_outputs():
        got = outputs_and_grads(fused, function, tensors)
    assert set(launches.by_kernel) == {"sequence_fwd_kernel", "sequence_bwd_kernel"}
    for g, w, name in zip(got, want, NAMES, strict=True):
        assert_close(g, w, torch.float64, f"{function} {name}")


@pytest.mark.parametrize("function", ["lstm", "slstm", "gru"])
def test_fp32_error_within_a_factor_of_flashrnns_own(function, device, monkeypatch):
    """In fp32 (IEEE products) each result's error against FlashRNN's fp64 result is within the library's stated
    factor (helpers.TORCH_FACTOR) of the error FlashRNN itself makes in fp32 on the same inputs."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    exact = outputs_and_grads(reference, function, inputs(function, 3, 16, torch.float64, device))
    theirs = outputs_and_grads(reference, function, inputs(function, 3, 16, torch.float32, device))
    ours = outputs_and_grads(fused, function, inputs(function, 3, 16, torch.float32, device))
    for o, t, e, name in zip(ours, theirs, exact, NAMES, strict=True):
        assert o.dtype == torch.float32
        assert_close(o, e, torch.float32, f"{function} {name}", torch_out=t)


def test_slstm_is_stable_over_long_sequences_with_large_preactivations(device):
    """T = 1000 with gate pre-activations up to |50|: every output and gradient finite and within the fp64
    bound of FlashRNN's (its stabiliser keeps each exponent <= 0; so does ours)."""
    tensors = inputs("slstm", 1, 16, torch.float64, device, scale=25.0, seed=3, steps=1000, batch=2)
    assert tensors[0].abs().max() > 50
    want = outputs_and_grads(reference, "slstm", tensors)
    got = outputs_and_grads(fused, "slstm", tensors)
    for g, w, name in zip(got, want, NAMES, strict=True):
        assert torch.isfinite(g).all(), name
        assert_close(g, w, torch.float64, f"slstm T=1000 {name}")


def test_default_states_are_zero_and_the_first_step_takes_m_from_the_input_gate(device):
    """Without states FlashRNN starts from zeros, and with n = 0 everywhere its sLSTM's first step sets m to the
    input gate's pre-activation (``torch.all(n == 0)``): the same here."""
    Wx, R, b, _ = inputs("slstm", 2, 16, torch.float64, device)
    want = reference("slstm", Wx, R, b, None)
    got = fused("slstm", Wx, R, b, None)
    for g, w in zip(got, want, strict=True):
        assert_close(g, w, torch.float64, "slstm from zero states")


def test_rejects_what_it_cannot_run(device):
    Wx, R, b, s0 = inputs("lstm", 2, 16, torch.float64, device)
    with pytest.raises(ValueError, match="unknown function"):
        fused_rnn.flashrnn(Wx, R, b, s0, function="mlstm")
    with pytest.raises(ValueError, match="does not match"):
        fused_rnn.flashrnn(Wx, R[:, :1], b, s0, function="lstm")
    with pytest.raises(ValueError, match="states"):
        fused_rnn.flashrnn(Wx, R, b, s0[:1], function="lstm")


TRITON = Version(triton.__version__)


@pytest.mark.skipif(TRITON >= Version("3.9"), reason=(
    f"FlashRNN's Triton kernels use block pointers (tl.make_block_ptr), which Triton 3.9 removed (this is "
    f"{triton.__version__}); they run with Triton 3.6, the GPU machine's version"))
@pytest.mark.parametrize("function", ["lstm", "slstm"])
def test_matches_flashrnns_triton_kernels(function, device):
    """A second oracle: FlashRNN's own Triton kernels (backend "triton_fused", LSTM and sLSTM only) on the same
    fp32 inputs, in Triton's interpreter or on the GPU: each of our results' error against FlashRNN's fp64
    result within the stated factor (helpers.TORCH_FACTOR) of the error of FlashRNN's Triton kernels."""
    exact = outputs_and_grads(reference, function, inputs(function, 2, 16, torch.float64, device, batch=16))
    tensors = inputs(function, 2, 16, torch.float32, device, batch=16)
    theirs = outputs_and_grads(lambda f, *t: flashrnn(*t, function=f, backend="triton_fused", dtype="float32"),
                               function, tensors)
    ours = outputs_and_grads(fused, function, tensors)
    for o, t, e, name in zip(ours, theirs, exact, NAMES, strict=True):
        assert_close(o, e, torch.float32, f"{function} {name} against FlashRNN's Triton kernels", torch_out=t)


def test_compiles_as_one_graph(device):
    """torch.compile(fullgraph=True) of FlashRNN's API: the same results as eager."""
    tensors = [t.detach() for t in inputs("slstm", 2, 16, torch.float32, device)]

    def call(*t):
        return fused_rnn.flashrnn(*t, function="slstm")

    eager = call(*tensors)
    compiled = torch.compile(call, fullgraph=True)(*tensors)
    for e, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
