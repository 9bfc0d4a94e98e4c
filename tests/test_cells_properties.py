"""Property-based tests (hypothesis) of fused_rnn.LSTMCell/GRUCell/RNNCell against the float64 reference.

Hypothesis draws the cell, input and hidden sizes (1 and non-powers of two
included), the batch (0 included, or an unbatched input), bias, the dtype and
whether the state is given. Outputs and the gradients of the input, the states
and every parameter are compared with the float64 reference
(``fused_rnn.reference``, plain torch ops) in both error measures, in every
dtype: fp64 within TOL, fp32 and half types within the bound set by the error
torch.nn's own cell makes in the same dtype on the same inputs (the policy of
tests/helpers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from conftest import fused_path_only
from helpers import assert_all_close, kernels_of
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fused_rnn
from fused_rnn import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]


@dataclass(frozen=True)
class Config:
    kind: str
    input_size: int
    hidden: int
    batch: int | None  # None: unbatched input
    bias: bool
    dtype: torch.dtype
    with_state: bool


@st.composite
def configs(draw: st.DrawFn) -> Config:
    return Config(
        kind=draw(st.sampled_from(KINDS)), input_size=draw(st.integers(1, 9)), hidden=draw(st.integers(1, 20)),
        batch=draw(st.one_of(st.none(), st.integers(0, 5))), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(DTYPES)), with_state=draw(st.booleans()),
    )


def cells(cfg: Config) -> tuple[nn.RNNCellBase, nn.RNNCellBase]:
    """The fused cell and torch.nn's, in cfg.dtype, with the same weights."""
    name, _, act = cfg.kind.partition("_")
    kwargs = {"nonlinearity": act} if act else {}
    torch.manual_seed(0)
    fused = getattr(fused_rnn, name)(cfg.input_size, cfg.hidden, cfg.bias, **kwargs).to(DEVICE, cfg.dtype)
    same = getattr(nn, name)(cfg.input_size, cfg.hidden, cfg.bias, **kwargs).to(DEVICE, cfg.dtype)
    same.load_state_dict(fused.state_dict())
    return fused, same


def reference_step(cfg: Config, params: dict[str, torch.Tensor], x: torch.Tensor, states: list[torch.Tensor]):
    """The float64 reference step on (N, I) input, zeros for absent states."""
    n = x.shape[0]
    zeros = x.new_zeros(n, cfg.hidden)
    h = states[0] if states else zeros
    w = params["weight_ih"], params["weight_hh"]
    b = params.get("bias_ih"), params.get("bias_hh")
    if cfg.kind == "LSTMCell":
        return reference.lstm_cell(x, h, states[1] if states else zeros, *w, *b)
    if cfg.kind == "GRUCell":
        return (reference.gru_cell(x, h, *w, *b),)
    return (reference.rnn_cell(x, h, *w, *b, cfg.kind.partition("_")[2]),)


def run(cfg: Config, step, params: list[torch.Tensor], x: torch.Tensor, states: list[torch.Tensor], dtype):
    """Outputs and gradients of (input, states, params) of ``step`` for fixed random output gradients."""
    x = x.detach().to(dtype).requires_grad_()
    states = [s.detach().to(dtype).requires_grad_() for s in states]
    outs = step(x, states)
    outs = outs if isinstance(outs, tuple) else (outs,)
    g = torch.Generator().manual_seed(2)
    seeds = [torch.randn(o.shape, generator=g, dtype=torch.float64).to(cfg.dtype).to(o) for o in outs]
    grads = torch.autograd.grad(outs, [x, *states, *params], seeds)
    return [o.detach() for o in outs], list(grads)


def _module_step(cell: nn.RNNCellBase, cfg: Config):
    def step(x, states):
        if not states:
            return cell(x)
        return cell(x, tuple(states) if cfg.kind == "LSTMCell" else states[0])

    return step


def reference_results(cfg: Config, params: dict[str, torch.Tensor], x: torch.Tensor, states: list[torch.Tensor]):
    """Outputs and gradients of the float64 reference with the given (float64) parameters and inputs."""
    leaves = {k: v.detach().double().requires_grad_() for k, v in params.items()}

    def step(x, states):
        unbatched = x.dim() == 1
        lift = (lambda t: t.unsqueeze(0)) if unbatched else (lambda t: t)
        out = reference_step(cfg, leaves, lift(x), [lift(s) for s in states])
        return tuple(o.squeeze(0) if unbatched else o for o in out)

    return run(cfg, step, list(leaves.values()), x, states, torch.float64)


@settings(max_examples=10 * settings.default.max_examples)
@given(cfg=configs())
def test_cell_matches_reference_and_torch(cfg: Config):
    fused, same = cells(cfg)
    g = torch.Generator().manual_seed(1)
    lead = () if cfg.batch is None else (cfg.batch,)
    x = torch.randn(*lead, cfg.input_size, generator=g, dtype=torch.float64).to(DEVICE, cfg.dtype)
    n_states = (2 if cfg.kind == "LSTMCell" else 1) if cfg.with_state else 0
    states = [torch.randn(*lead, cfg.hidden, generator=g, dtype=torch.float64).to(DEVICE, cfg.dtype)
              for _ in range(n_states)]
    with fused_path_only() as launches:
        outs, grads = run(cfg, _module_step(fused, cfg), list(fused.parameters()), x, states, cfg.dtype)
    kernels = dict.fromkeys(kernels_of(fused), 1)
    assert launches.by_kernel == (kernels if cfg.batch != 0 else None), launches.by_kernel
    params = dict(fused.named_parameters())
    ref_outs, ref_grads = reference_results(cfg, params, x, states)
    torch_outs, torch_grads = run(cfg, _module_step(same, cfg), list(same.parameters()), x, states, cfg.dtype)
    names = ["h'", "c'"][: len(outs)] + ["d input"] + [f"d state{i}" for i in range(n_states)]
    names += [f"d {n}" for n in params]
    assert all(o.dtype == cfg.dtype for o in outs + grads)
    assert_all_close(names, outs + grads, ref_outs + ref_grads, cfg.dtype, torch_outs + torch_grads)
