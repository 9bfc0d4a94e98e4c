"""The sequence kernels' launch options: blocks follow the TF32 switch, register and pipeline options the backend.

The kernels themselves are tested through their op (tests/test_sequence_ops.py) and the layers.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fused_rnn.kernels.launch import count_launches, poison_outputs
from interpreter_threads import concurrent_programs

from fused_rnn.dispatch import make_plan
from fused_rnn.kernels import sequence_kernels as K


def _meta(cell: int, dtype: torch.dtype) -> dict:
    return K._meta(cell, False, dtype, make_plan(64, 512, dtype, 4, 132, concurrent=True))


def test_fp32_blocks_narrow_when_products_leave_tensor_cores(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("tf32", 32, 32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("ieee", 16, 16)


@pytest.mark.parametrize(("hip", "present", "absent"), [(None, {"maxnreg": 255}, "num_stages"),
                                                        ("6.0", {"num_stages": 1}, "maxnreg")], ids=["cuda", "rocm"])
def test_register_and_pipeline_options_follow_the_backend(monkeypatch, hip, present, absent):
    """NVIDIA: every register a thread can have (ptxas would cap at 128 and spill); AMD: one pipeline stage
    (SGPRs), and no maxnreg, which Triton's AMD backend rejects."""
    monkeypatch.setattr(torch.version, "hip", hip)
    meta = _meta(K.GRU, torch.bfloat16)
    assert present.items() <= meta.items() and absent not in meta


# ----------------------------------------------------------------------------
# One launch with real barriers against one launch per step and phase
# ----------------------------------------------------------------------------
T, B, H, P = 4, 19, 40, 21  # 2 batch tiles; 3 slices of 16 units of H (and of the projection P)
ONE_LAUNCH = dict(one_launch=True)


def _layer(cell: int, proj: int, device) -> dict:
    torch.manual_seed(cell + proj)
    R = proj or H
    G = K.GATES[cell] * H

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, dtype=torch.float64, device=device) * scale

    return dict(
        xp=randn(T, B, G), w_hh=randn(G, R, scale=0.3), b_hn=randn(H) if cell == K.GRU else None,
        w_hr=randn(R, H, scale=0.3) if proj else None, h0=randn(B, R), c0=randn(B, H) if cell == K.LSTM else None,
        lengths=torch.tensor([T, 1, 3, 2] * 4 + [2, T, 1], device=device),
    )


def _forward_and_backward(cell: int, proj: int, reverse: bool, plan, device) -> tuple[list, dict]:
    """Every output of the forward and backward launchers under ``plan``, and the launches they made."""
    a = _layer(cell, proj, device)
    with count_launches() as launches, poison_outputs():  # what no kernel writes is NaN in both forms
        out = K.sequence_forward(a["xp"], a["w_hh"], a["b_hn"], a["w_hr"], a["h0"], a["c0"], a["lengths"], cell,
                                 reverse, True, plan)
        y, h_n, c_n, ws, cs, ms = out
        torch.manual_seed(7)
        dy, dh_n, dc_n = torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n) if cell == K.LSTM else None
        grads = K.sequence_backward(dy, dh_n, dc_n, a["w_hh"], a["w_hr"], a["h0"], a["c0"], a["lengths"], y, ws, cs,
                                    cell, reverse, plan)
    return [*out, *grads], launches.by_kernel


BARRIER_CASES = [(K.LSTM, 0, False), (K.LSTM, P, True), (K.GRU, 0, True), (K.RNN_TANH, 0, False)]


@pytest.mark.parametrize(("cell", "proj", "reverse"), BARRIER_CASES, ids=["lstm", "lstm-proj-rev", "gru-rev", "rnn"])
def test_one_launch_with_barriers_equals_one_launch_per_step(cell, proj, reverse, device):
    """The persistent form (one launch, 3 slices per batch tile meeting at the barrier each phase) gives the
    same bits as one launch per step and phase (same code, same sums in the same order). In the interpreter the
    one launch runs one thread per program, the last slice of each tile slowed down, so its barriers really
    wait (``interpreter_threads``): too many expected arrivals hang (the join times out), too few, a wrong
    parity or a missing barrier read state not yet written (a different result)."""
    stepped = make_plan(B, H, torch.float64, 3, 132, concurrent=False)
    persistent = make_plan(B, H, torch.float64, 3, 132, concurrent=True)
    assert persistent.barrier and not stepped.one_launch and stepped.grid(B) == persistent.grid(B) == (2, 3)
    want, stepped_launches = _forward_and_backward(cell, proj, reverse, stepped, device)
    # The last slice of each tile stores slowly, so it always arrives last (a barrier that opens early shows).
    with concurrent_programs(straggler_s=0.02) if device == "cpu" else contextlib.nullcontext():
        got, launches = _forward_and_backward(cell, proj, reverse, persistent, device)
    phases = 2 if proj else 1
    assert stepped_launches == {"sequence_fwd_kernel": T * phases, "sequence_bwd_kernel": T * (phases + 1)}
    assert launches == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1}
    for i, (g, w) in enumerate(zip(got, want)):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=f"result {i} differs")


def test_a_grid_that_cannot_meet_raises_instead_of_hanging(device, monkeypatch):
    """Programs that run one after another (the interpreter without threads) never meet at the barrier: each
    wait gives up after SPIN_LIMIT spins, the rest of the launch passes, and the launcher raises."""
    if device != "cpu":
        pytest.skip("needs programs that run one after another: Triton's interpreter")
    monkeypatch.setattr(K, "SPIN_LIMIT", 50)
    persistent = make_plan(B, H, torch.float64, 3, 132, concurrent=True)
    with pytest.raises(RuntimeError, match="barrier waited 50 spins"):
        _forward_and_backward(K.GRU, 0, False, persistent, device)
