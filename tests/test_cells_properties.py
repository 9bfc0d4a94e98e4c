"""Property-based tests (hypothesis) of fused_rnn.LSTMCell/GRUCell/RNNCell against torch.nn and the reference.

Hypothesis draws the cell, input and hidden sizes (1 and non-powers of two
included), the batch (0 included, or an unbatched input), bias, the dtype and
whether the state is given. Outputs and the gradients of the input, the states
and every parameter must equal the float64 reference (``fused_rnn.reference``,
plain torch ops) within ``TOL[dtype]``, and torch.nn's cell in float64 (not in
fp32: two fp32 results can each be within TOL of the reference and 2 TOL
apart). A result that misses the TOL is accepted only on an ill-conditioned
example, by the sensitivity rule of tests/test_layers_properties.py. Half
types: the outputs only, for the reasons given there (half-precision
gradients lose relative accuracy in any implementation; test_cells.py checks
half types on fixed inputs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from conftest import fused_path_only
from helpers import TOL, rel_err
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import fused_rnn
from fused_rnn import reference

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
KINDS = ["LSTMCell", "GRUCell", "RNNCell_tanh", "RNNCell_relu"]
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
COND_FACTOR = 50  # as in tests/test_layers_properties.py


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


def sensitivity(cfg: Config, params: dict[str, torch.Tensor], x: torch.Tensor, states: list[torch.Tensor],
                expected: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    """How far each float64 result moves when the inputs, states and weights are perturbed by up to one
    unit roundoff of cfg.dtype (see tests/test_layers_properties.py; the largest of two draws)."""
    u = torch.finfo(cfg.dtype).eps / 2
    g = torch.Generator().manual_seed(3)

    def jitter(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().double()
        return t * (1 + u * (2 * torch.rand(t.shape, generator=g, dtype=torch.float64) - 1)).to(t.device)

    moved = dict.fromkeys(names, 0.0)
    for _ in range(2):
        outs, grads = reference_results(cfg, {k: jitter(v) for k, v in params.items()}, jitter(x),
                                        [jitter(t) for t in states])
        for name, a, b in zip(names, outs + grads, expected):
            moved[name] = max(moved[name], rel_err(a, b))
    return moved


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
    assert launches.total > 0 or cfg.batch == 0, "the Triton kernels ran"
    params = dict(fused.named_parameters())
    ref_outs, ref_grads = reference_results(cfg, params, x, states)
    names = ["h'", "c'"][: len(outs)] + ["d input"] + [f"d state{i}" for i in range(n_states)]
    names += [f"d {n}" for n in params]
    names = names if cfg.dtype in (torch.float64, torch.float32) else names[: len(outs)]  # half: forward only
    expected = ref_outs + ref_grads
    err = {}
    for name, a, b in zip(names, outs + grads, expected):
        assert a.shape == b.shape and a.dtype == cfg.dtype, name
        err[name] = rel_err(a, b)
    missed = {n: e for n, e in err.items() if e > TOL[cfg.dtype]}
    if missed:  # ill-conditioned at this precision? (tests/test_layers_properties.py)
        moved = sensitivity(cfg, params, x, states, expected, names)
        missed = {n: (e, moved[n]) for n, e in missed.items() if e > COND_FACTOR * moved[n]}
    assert not missed, f"(error, sensitivity) above {TOL[cfg.dtype]:.0e} against the float64 reference: {missed}"
    if cfg.dtype == torch.float64:
        torch_outs, torch_grads = run(cfg, _module_step(same, cfg), list(same.parameters()), x, states, cfg.dtype)
        for name, a, b in zip(names, outs + grads, torch_outs + torch_grads, strict=True):
            assert rel_err(a, b) <= TOL[cfg.dtype], f"{name}: {rel_err(a, b):.2e} against float64 torch.nn"
