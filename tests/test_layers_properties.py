"""Property-based tests (hypothesis) of fused_rnn.LSTM/GRU/RNN against torch.nn in float64.

Hypothesis draws the cell, sizes (1 and non-powers of two included), sequence
length, layers, directions, batch_first, bias, LSTM projection, the input kind
(batched, unbatched, packed with lengths all equal, all different or random,
sorted or not), the dtype and whether h0 is given. The fused module's outputs,
final states and gradients (of the input, h0/c0 and every parameter) are
compared with torch.nn in float64 on the same values (the float64 reference)
in both error measures, in every dtype: fp64 within TOL, fp32 and half types
within the bound set by the error torch.nn itself makes in the same dtype on
the same inputs (the policy of tests/helpers.py). Where a result is
ill-conditioned at a precision (a short sum that cancels, tanh's derivative
1 - h^2 from a stored half-precision h near +-1), torch.nn's own error is
large too, and the bound follows it; on well-conditioned inputs the bound is
tight.

Example counts come from the hypothesis profile (tests/conftest.py): "ci"
(default, derandomized) or "dev" (HYPOTHESIS_PROFILE=dev, a larger search).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_all_close
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fused_rnn

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CELLS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class Config:
    """One drawn layer configuration and input."""

    cell: str
    input_size: int
    hidden: int
    proj: int
    seq_len: int
    layers: int
    bidirectional: bool
    batch_first: bool
    bias: bool
    kind: str  # "batched", "unbatched" or "packed"
    batch: int
    lengths: tuple[int, ...]  # packed only
    enforce_sorted: bool  # packed only
    dtype: torch.dtype
    with_h0: bool

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1


@st.composite
def configs(draw: st.DrawFn) -> Config:
    cell = draw(st.sampled_from(CELLS))
    dtype = draw(st.sampled_from(DTYPES))
    hidden = draw(st.integers(1, 7))
    proj = draw(st.integers(0, hidden - 1)) if cell == "LSTM" else 0
    seq_len = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["batched", "unbatched", "packed"]))
    lengths: tuple[int, ...] = ()
    enforce_sorted = False
    if kind == "packed":
        pattern = draw(st.sampled_from(["all equal", "all different", "random"]))
        if pattern == "all equal":
            lengths = (draw(st.integers(1, seq_len)),) * draw(st.integers(1, 4))
        elif pattern == "all different":
            lengths = tuple(draw(st.permutations(range(1, seq_len + 1))))[: draw(st.integers(1, seq_len))]
        else:
            lengths = tuple(draw(st.lists(st.integers(1, seq_len), min_size=1, max_size=4)))
        batch = len(lengths)
        enforce_sorted = list(lengths) == sorted(lengths, reverse=True) and draw(st.booleans())
    else:
        batch = 1 if kind == "unbatched" else draw(st.integers(1, 4))
    return Config(
        cell=cell, input_size=draw(st.integers(1, 6)), hidden=hidden, proj=proj, seq_len=seq_len,
        layers=draw(st.integers(1, 2)), bidirectional=draw(st.booleans()), batch_first=draw(st.booleans()),
        bias=draw(st.booleans()), kind=kind, batch=batch, lengths=lengths, enforce_sorted=enforce_sorted,
        dtype=dtype, with_h0=draw(st.booleans()),
    )


def _classes_and_kwargs(cfg: Config) -> tuple[type, type, dict]:
    kwargs = dict(num_layers=cfg.layers, bias=cfg.bias, batch_first=cfg.batch_first, bidirectional=cfg.bidirectional)
    if cfg.proj:
        kwargs["proj_size"] = cfg.proj
    if cfg.cell.startswith("RNN"):
        return fused_rnn.RNN, nn.RNN, kwargs | {"nonlinearity": cfg.cell[4:].lower()}
    return getattr(fused_rnn, cfg.cell), getattr(nn, cfg.cell), kwargs


def torch_module(cfg: Config, fused: nn.RNNBase, dtype: torch.dtype) -> nn.RNNBase:
    """torch.nn's module in ``dtype`` with the fused module's weights."""
    _, torch_cls, kwargs = _classes_and_kwargs(cfg)
    module = torch_cls(cfg.input_size, cfg.hidden, **kwargs).to(DEVICE, dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in fused.state_dict().items()})
    return module


def modules(cfg: Config) -> tuple[nn.RNNBase, nn.RNNBase]:
    """The fused module in cfg.dtype and torch.nn's in float64 with the same (rounded) weights."""
    fused_cls, _, kwargs = _classes_and_kwargs(cfg)
    torch.manual_seed(0)
    fused = fused_cls(cfg.input_size, cfg.hidden, **kwargs).to(DEVICE, cfg.dtype)
    return fused, torch_module(cfg, fused, torch.float64)


def inputs(cfg: Config) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The padded input (or unbatched sequence) and the initial states, in cfg.dtype."""
    g = torch.Generator().manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE, cfg.dtype)

    if cfg.kind == "unbatched":
        x = randn(cfg.seq_len, cfg.input_size)
    elif cfg.batch_first:
        x = randn(cfg.batch, cfg.seq_len, cfg.input_size)
    else:
        x = randn(cfg.seq_len, cfg.batch, cfg.input_size)
    states = []
    if cfg.with_h0:
        lead = (cfg.layers * cfg.directions,) + (() if cfg.kind == "unbatched" else (cfg.batch,))
        states.append(randn(*lead, cfg.proj or cfg.hidden))
        if cfg.cell == "LSTM":
            states.append(randn(*lead, cfg.hidden))
    return x, states


def run(module: nn.RNNBase, cfg: Config, x: torch.Tensor, states: list[torch.Tensor], seed: int = 2):
    """Outputs (output, h_n[, c_n]) and gradients of (input, states, parameters) for random output gradients."""
    x = x.detach().clone().requires_grad_()
    states = [s.detach().clone().requires_grad_() for s in states]
    hx = None if not states else (tuple(states) if cfg.cell == "LSTM" else states[0])
    inp = x
    if cfg.kind == "packed":
        inp = pack_padded_sequence(x, list(cfg.lengths), batch_first=cfg.batch_first, enforce_sorted=cfg.enforce_sorted)
    out, hidden = module(inp, hx)
    outs = [out.data if isinstance(out, PackedSequence) else out, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    g = torch.Generator().manual_seed(seed)
    seeds = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(cfg.dtype).to(o) for o in outs]
    grads = torch.autograd.grad(outs, [x, *states, *module.parameters()], seeds)
    return [o.detach() for o in outs], list(grads)




def _config(**fields) -> Config:
    """A configuration: two bidirectional fp32 LSTM layers over a batched input, with h0, unless overridden."""
    base = dict(
        cell="LSTM", input_size=3, hidden=5, proj=0, seq_len=4, layers=2, bidirectional=True, batch_first=False,
        bias=True, kind="batched", batch=3, lengths=(), enforce_sorted=False, dtype=torch.float32, with_h0=True,
    )
    return Config(**(base | fields))


# Explicit examples: the generated ones favour small configurations, these make sure every profile covers
# the widest ones (projection, unsorted distinct lengths, two bidirectional layers, half types).
EXAMPLES = [
    _config(proj=2, kind="packed", lengths=(2, 4, 1)),
    _config(cell="GRU", hidden=6, seq_len=3, batch_first=True, kind="packed", lengths=(3, 3, 3), enforce_sorted=True,
            dtype=torch.bfloat16),
    _config(cell="RNN_RELU", input_size=4, hidden=7, batch_first=True, bias=False, batch=4, dtype=torch.float64),
    _config(input_size=5, hidden=4, seq_len=3, layers=1, kind="unbatched", batch=1, dtype=torch.float16),
]


@settings(max_examples=6 * settings.default.max_examples)
@given(cfg=configs())
@example(cfg=EXAMPLES[0])
@example(cfg=EXAMPLES[1])
@example(cfg=EXAMPLES[2])
@example(cfg=EXAMPLES[3])
def test_layer_matches_torch_nn_in_float64(cfg: Config):
    fused, ref = modules(cfg)
    x, states = inputs(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.backends.cudnn, "allow_tf32", False)  # IEEE fp32 products: the kernels follow cuDNN's switch
        with fused_path_only() as launches:
            outs, grads = run(fused, cfg, x, states)
        ref_outs, ref_grads = run(ref, cfg, x.double(), [s.double() for s in states])
        same = None
        if cfg.dtype != torch.float64:
            same_outs, same_grads = run(torch_module(cfg, fused, cfg.dtype), cfg, x, states)
            same = same_outs + same_grads
    runs = cfg.layers  # one launch per layer: both directions of a bidirectional one together at these sizes
    assert launches.by_kernel == {"sequence_fwd_kernel": runs, "sequence_bwd_kernel": runs}, launches.by_kernel
    assert all(o.dtype == cfg.dtype for o in outs + grads)
    names = ["output", "h_n", "c_n"][: len(outs)] + ["d input"] + [f"d {n}" for n in ["h0", "c0"][: len(states)]]
    names += [f"d {n}" for n, _ in fused.named_parameters()]
    assert_all_close(names, outs + grads, ref_outs + ref_grads, cfg.dtype, same)
