"""Run-to-run determinism: the same inputs give bitwise-identical outputs and gradients.

No kernel reduces with atomics, so nothing depends on the order in which
programs run or finish. The sequence kernels' grid is (batch tile, hidden
slice): each program owns the rows of its batch tile and a fixed slice of their
hidden units, and computes every value it writes itself in a fixed order (its
slice of the recurrent product reduces over the whole state). The programs of a
tile read each other's slices of the state from global buffers and meet at a
barrier between phases (in one launch, or one launch per step and phase when
the GPU cannot hold the grid); the barrier's atomic arrival counters order the
phases and carry no data. A step kernel's program owns a tile of rows and
hidden units and is pointwise, and the weight and bias gradients (reductions
over time and batch) are GEMMs and sums after the kernels. Triton's interpreter
runs a launch's programs one after another and would hide a race, so the tests
here run on a GPU only (skipped with that reason on the CPU): in the
interpreter two runs cannot differ, so a pass there would prove nothing. (The
barriers themselves are tested on the CPU with one thread per program:
tests/kernels/test_sequence_kernels.py.)
"""

from __future__ import annotations

import pytest
import torch
from conftest import fused_path_only
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="GPU-only: the interpreter runs programs one after another, so two runs cannot differ"),
]

LAYERS = [
    ("LSTM", dict(proj_size=3)),
    ("GRU", dict()),
    ("RNN", dict(nonlinearity="relu")),
]


def _layer(
    name: str, input_size: int, hidden: int, layers: int, device: str, dtype: torch.dtype, **kwargs
) -> nn.RNNBase:
    torch.manual_seed(0)
    module = getattr(fused_rnn, name)(input_size, hidden, num_layers=layers, bidirectional=True, **kwargs)
    return module.to(device, dtype)


def _run(module: nn.RNNBase, x: torch.Tensor, lengths: list[int] | None) -> list[torch.Tensor]:
    """Outputs and gradients of the input and every parameter, for fixed output gradients."""
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths else x
    out, hidden = module(inp)
    outs = [out.data if isinstance(out, PackedSequence) else out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    g = torch.Generator(device=x.device).manual_seed(1)
    seeds = [torch.randn(o.shape, generator=g, device=x.device, dtype=o.dtype) for o in outs]
    grads = torch.autograd.grad(outs, [x, *module.parameters()], seeds)
    return [o.detach() for o in outs] + list(grads)


def _assert_bitwise_equal(first: list[torch.Tensor], second: list[torch.Tensor]) -> None:
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert torch.equal(a, b), f"tensor {i} differs between runs: max |diff| {(a - b).abs().max().item():.3e}"


PATHS = [(name, kwargs, "sequence") for name, kwargs in LAYERS] + [("LSTM", dict(proj_size=3), "stepwise")]


@pytest.mark.parametrize("name,kwargs,path", PATHS, ids=[f"{n}-{p}" for n, _, p in PATHS])
def test_layers_are_deterministic(name: str, kwargs: dict, path: str, device: str):
    """Two bidirectional runs over two batch tiles (B = 17 > 16 rows) with unsorted lengths; hidden 5 is one
    slice per tile."""
    module = _layer(name, 4, 5, 1, device, torch.float32, **kwargs)
    x = torch.randn(3, 17, 4, device=device)
    lengths = [3, 1, 2] * 5 + [3, 2]
    with fused_rnn.force_path(path), fused_path_only() as launches:
        first = _run(module, x, lengths)
        second = _run(module, x, lengths)
    assert launches.total > 0
    _assert_bitwise_equal(first, second)


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_are_deterministic(kind: str, device: str):
    torch.manual_seed(0)
    cell = getattr(fused_rnn, kind)(4, 5).to(device)
    x = torch.randn(9, 4, device=device)

    def run() -> list[torch.Tensor]:
        xi = x.clone().requires_grad_()
        out = cell(xi)
        outs = out if isinstance(out, tuple) else (out,)
        grads = torch.autograd.grad(outs, [xi, *cell.parameters()], [torch.ones_like(o) for o in outs])
        return [o.detach() for o in outs] + list(grads)

    with fused_path_only() as launches:
        first, second = run(), run()
    assert launches.total > 0
    _assert_bitwise_equal(first, second)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name,kwargs", LAYERS, ids=[n for n, _ in LAYERS])
def test_layers_are_deterministic_on_gpu(name: str, kwargs: dict, dtype: torch.dtype):
    """Two bidirectional layers, T = 50, B = 256 (16 batch tiles), hidden 256, each tile split into the hidden
    slices the dispatcher plans for this GPU (several, meeting at barriers, where the cost model splits): five
    runs, all bitwise equal."""
    module = _layer(name, 128, 256, 2, "cuda", dtype, **kwargs)
    x = torch.randn(50, 256, 128, device="cuda").to(dtype)
    lengths = torch.randint(1, 51, (256,)).tolist()
    with fused_path_only() as launches:
        runs = [_run(module, x, lengths) for _ in range(5)]
    assert launches.total > 0
    for other in runs[1:]:
        _assert_bitwise_equal(runs[0], other)
