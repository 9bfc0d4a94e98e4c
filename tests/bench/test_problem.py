"""A benchmark problem: inputs, output gradient, float64 reference, error measure and tolerances."""

from __future__ import annotations

import math

import torch

from fused_rnn.bench.cases import Case
from fused_rnn.bench.problem import TOLERANCE, make_problem, max_rel_err, rel_err, tolerance

CPU = torch.device("cpu")


def test_tolerance_per_dtype():
    assert tolerance("fp32", CPU) == TOLERANCE["fp32"] == 1e-4, "no TF32 on a CPU"
    assert TOLERANCE["fp32"] < TOLERANCE["fp32+tf32"] <= TOLERANCE["fp16"] < TOLERANCE["bf16"]


def test_packed_problem():
    case = Case(cell="lstm", dtype="bf16", seq_len=9, batch=6, input_size=3, hidden_size=4, bidirectional=True,
                packed=True)
    p = make_problem(case, CPU)
    lengths = p.inputs.lengths
    assert lengths.min() >= 3 and lengths.max() <= 9, "lengths uniform in [T/3, T]"
    assert p.inputs.x.dtype == torch.bfloat16 and p.inputs.x.shape == (9, 6, 3)
    assert p.inputs.h0.shape == p.inputs.c0.shape == (2, 6, 4)
    past_end = torch.arange(9)[:, None] >= lengths[None, :]
    assert p.dy.shape == (9, 6, 8) and not p.dy[past_end].any() and p.dy[~past_end].all()
    # y, h_n, c_n, then the gradients of x, h0, c0 and the 8 parameters, all float64.
    assert len(p.reference) == 3 + 3 + 8 and all(r.dtype == torch.float64 for r in p.reference)
    assert not p.reference[0][past_end].any(), "padded outputs are zero"


def test_forward_problem_has_outputs_only():
    p = make_problem(Case(cell="gru", mode="forward", seq_len=3, batch=2, input_size=3, hidden_size=4), CPU)
    assert len(p.reference) == 2 and not p.inputs.x.requires_grad


def test_errors():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert rel_err(torch.tensor([3.0, 4.5]), ref) == 0.1
    assert rel_err(torch.tensor([float("nan"), 4.0]), ref) == math.inf
    assert rel_err(torch.zeros(3), ref) == math.inf
    assert max_rel_err([ref, ref], [ref]) == math.inf
    assert max_rel_err([ref.float(), ref.float() * 1.5], [ref, ref]) == 0.5
