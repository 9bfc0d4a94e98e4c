"""W_hh on chip, read from the compiled code: the sequence kernels compiled for sm_80, sm_90 and gfx942 (no GPU
needed) under the plans the dispatcher returns, and their TTGIR searched for global loads of W_hh in the time loop."""

from __future__ import annotations

import functools
import re

import pytest

from fused_rnn import compile_report as cr
from fused_rnn.ir_reads import placements, state_accesses


@functools.cache
def _placements(case: cr.Case, target: str) -> dict[tuple[str, bool], str]:
    """``ir_reads.placements`` in a compile report worker (a process without Triton's interpreter)."""
    with cr._workers(1, None) as pool:
        return pool.apply(placements, (case, target))


RESIDENT = "resident (shared memory)"


LSTM_512 = cr.Case("LSTM", "bfloat16", 512, 64, reverse=False, bias=True, tf32=True)
GRU_512 = cr.Case("GRU", "float32", 512, 64, reverse=True, bias=True, tf32=True)
FLASHRNN = cr.Case("LSTM", "bfloat16", 768, 16, reverse=False, bias=True, tf32=True)
LSTM_1024 = cr.Case("LSTM", "bfloat16", 1024, 16, reverse=False, bias=True, tf32=True)


@pytest.mark.parametrize(("case", "target", "resident"), [
    (LSTM_512, "sm_90", True), (LSTM_512, "sm_80", False), (GRU_512, "sm_90", True), (GRU_512, "sm_80", False),
    (FLASHRNN, "sm_90", True), (FLASHRNN, "sm_80", True), (LSTM_1024, "sm_90", True), (LSTM_1024, "sm_80", True),
], ids=lambda v: str(v))
def test_weight_stationary_kernels_load_w_hh_before_the_time_loop(case, target, resident):
    """Forward and backward load W_hh's slice once, before the loop over steps, into shared memory, whence each
    step's product reads it; none of their global loads in the time loop reads W_hh. Where the resident grid
    does not fit the GPU (B = 64 at H = 512: 4 x 32 programs, more than an A100's 108 SMs) the plan streams."""
    placements = _placements(case, target)
    for kernel in ("sequence_fwd_kernel", "sequence_bwd_kernel"):
        if resident:  # the one-launch form, and the per-step form's phases (some without the product: "not read")
            forms = set(placements[(kernel, True)].split(" / "))
            assert RESIDENT in forms and forms <= {RESIDENT, "not read"}, (kernel, placements)
        else:
            assert (kernel, True) not in placements and "streamed" in placements[(kernel, False)]


def test_streaming_kernels_read_w_hh_every_step():
    """The other side of the check: with products on FMA units (IEEE fp32) the plan streams W_hh, and the
    search finds its loads inside the time loop."""
    case = cr.Case("LSTM", "float32", 512, 64, reverse=False, bias=True, tf32=False)
    placements = _placements(case, "sm_90")
    assert set(placements) == {("sequence_fwd_kernel", False), ("sequence_bwd_kernel", False)}
    for kernel in ("sequence_fwd_kernel", "sequence_bwd_kernel"):
        forms = set(placements[(kernel, False)].split(" / ")) - {"not read"}
        assert forms and all(re.fullmatch(r"streamed \([1-9]\d* loads a step\)", f) for f in forms), placements


def test_on_gfx942_w_hh_stays_in_registers():
    """AMD (MI300): the compiler stages W_hh's slice through LDS once before the time loop and loads it into the
    MFMA operand registers there too, so each step reads neither global memory nor LDS for W."""
    placements = _placements(cr.Case("GRU", "float16", 128, 16, reverse=False, bias=True, tf32=True), "gfx942")
    for kernel in ("sequence_fwd_kernel", "sequence_bwd_kernel"):
        forms = set(placements[(kernel, True)].split(" / "))
        assert "resident (registers)" in forms and forms <= {"resident (registers)", "not read"}, placements



@pytest.mark.parametrize(("case", "target"), [
    (FLASHRNN, "sm_90"), (cr.Case("LSTM", "float16", 128, 16, reverse=False, bias=True, tf32=True), "gfx942"),
], ids=lambda v: str(v))
def test_weight_stationary_programs_keep_their_state_in_registers(case, target):
    """A resident program owns its units of c (and of the dh and dc carries in backward): the time loop neither
    loads nor stores them (they are loaded before it and stored after it); the streaming form, where a program
    walks several blocks of units, does both every step (the other side of the check; a per-step launch of one
    phase touches only the buffers of that phase)."""
    with cr._workers(1, None) as pool:
        resident = pool.apply(state_accesses, (case, target))
        streaming = pool.apply(state_accesses, (cr.Case("LSTM", "float32", 512, 64, False, True, False), target))
    assert resident[("sequence_fwd_kernel", True)] == {(0,)}
    assert resident[("sequence_bwd_kernel", True)] == {(0, 0)}
    for kernel in ("sequence_fwd_kernel", "sequence_bwd_kernel"):  # the one-launch form runs every phase
        assert any(all(n > 0 for n in counts) for counts in streaming[(kernel, False)]), streaming
