"""The fused modules under torch.autocast: torch.nn's dtypes, the Triton path, bf16-level accuracy."""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close, assert_kernels, kernels_of
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn
from fused_rnn import autocast

LAYERS = ["LSTM", "GRU", "RNN"]
# With a GPU present the CPU runs torch.nn's own implementation (no interpreter): CPU autocast is the interpreter's.
cpu_kernels = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU tensors run torch.nn itself when a GPU is present")
CELLS = ["LSTMCell", "GRUCell", "RNNCell"]


def pair(name: str, device: str, **kwargs):
    torch.manual_seed(0)
    fused = getattr(fused_rnn, name)(4, 5, **kwargs).to(device)
    ref = getattr(torch.nn, name)(4, 5, **kwargs).to(device)
    ref.load_state_dict(fused.state_dict())
    return fused, ref


def flat(out) -> list[torch.Tensor]:
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, tuple):
        return [t for o in out for t in flat(o)]
    return [out]


def compare_under_autocast(fused, ref, device_type: str, dtype: torch.dtype, inp, hx=None):
    """Same output dtypes as torch.nn under the same autocast, the Triton path ran, values near float64."""
    with torch.autocast(device_type, dtype=dtype):
        expected = flat(ref(inp, hx))
        with fused_path_only() as launches:
            got = flat(fused(inp, hx))
    assert_kernels(launches, kernels_of(fused, backward=False))
    assert [t.dtype for t in got] == [t.dtype for t in expected]
    exact = flat(ref.double()(to_double(inp), to_double(hx)))
    for a, b in zip(got, exact):
        assert_close(a, b, dtype)
    return got


def to_double(x):
    if x is None:
        return None
    if isinstance(x, PackedSequence):
        return x._replace(data=x.data.double())
    if isinstance(x, tuple):
        return tuple(t.double() for t in x)
    return x.double()


@cpu_kernels
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", LAYERS)
def test_layers_on_cpu_autocast(name, input_dtype):
    fused, ref = pair(name, "cpu", num_layers=2)
    x = torch.randn(6, 3, 4).to(input_dtype)
    compare_under_autocast(fused, ref, "cpu", torch.bfloat16, x)


@cpu_kernels
@pytest.mark.parametrize("name", LAYERS)
def test_layers_with_fp32_states_and_packed_input_on_cpu_autocast(name):
    fused, ref = pair(name, "cpu", bidirectional=True)
    x = pack_padded_sequence(torch.randn(6, 3, 4), torch.tensor([6, 4, 1]))
    h = torch.randn(2, 3, 5)
    hx = (h, torch.randn(2, 3, 5)) if name == "LSTM" else h
    compare_under_autocast(fused, ref, "cpu", torch.bfloat16, x, hx)


@cpu_kernels
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", CELLS)
def test_cells_on_cpu_autocast(name, input_dtype):
    fused, ref = pair(name, "cpu")
    x = torch.randn(3, 4).to(input_dtype)
    compare_under_autocast(fused, ref, "cpu", torch.bfloat16, x)


@cpu_kernels
def test_gradients_reach_fp32_parameters_under_autocast():
    fused, ref = pair("GRU", "cpu")
    x = torch.randn(6, 3, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = fused(x)
        y_ref, _ = ref.double()(x.double())
    seed = torch.randn_like(y_ref)
    grads = torch.autograd.grad(y, [x, *fused.parameters()], seed.to(y.dtype))
    expected = torch.autograd.grad(y_ref, [*ref.parameters()], seed)
    assert all(g.dtype == torch.float32 for g in grads)
    for a, b in zip(grads[1:], expected):
        assert_close(a, b, torch.bfloat16)


def test_the_ops_lower_their_inputs():
    """The autocast rule casts every floating argument but float64 to the autocast dtype."""
    args = (torch.randn(2), torch.randn(2, dtype=torch.float64), torch.tensor([1]), 3)
    low = autocast._lowered(args, torch.bfloat16)
    assert [a.dtype for a in low[:3]] == [torch.bfloat16, torch.float64, torch.int64] and low[3] == 3


def test_output_dtype_rule():
    bf16, f32 = torch.bfloat16, torch.float32
    assert autocast.output_dtype("GRU", "cuda", bf16, f32) == bf16, "cuDNN lowers everything"
    assert autocast.output_dtype("GRU", "cpu", bf16, f32) == f32
    assert autocast.output_dtype("LSTMCell", "cuda", torch.float16, f32) == f32
    assert autocast.output_dtype("RNN_TANH", "cpu", bf16, f32) == bf16


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", LAYERS + CELLS)
def test_cuda_autocast(name, dtype):
    fused, ref = pair(name, "cuda")
    x = torch.randn(6, 3, 4, device="cuda") if name in LAYERS else torch.randn(3, 4, device="cuda")
    compare_under_autocast(fused, ref, "cuda", dtype, x)
