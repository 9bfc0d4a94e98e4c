"""The path heuristic is a pure function of the cell, sizes and dtype; force_path overrides it."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import dispatch
from fused_rnn.dispatch import (
    AMD_RESIDENT_BYTES, choose_path, force_path, make_plan, predicted_steps, recurrent_weight_bytes, resident_budget,
    resident_bytes, sequence_plan, sequence_step_seconds, slice_choices,
)
from fused_rnn.kernels.launch import meeting_programs


def test_weight_bytes():
    assert recurrent_weight_bytes("LSTM", 512, 0, torch.float32) == 4 * 512 * 512 * 4
    assert recurrent_weight_bytes("LSTM", 512, 128, torch.bfloat16) == (4 * 512 * 128 + 128 * 512) * 2
    assert recurrent_weight_bytes("RNN_RELU", 100, 0, torch.float64) == 100 * 100 * 8


def test_the_hidden_split_plan_spreads_a_step_over_the_gpu(monkeypatch):
    """At the classic size the batch-tiled kernel would use 4 programs; for products on FMA units (IEEE fp32,
    never weight-stationary) the plan splits each tile's hidden units as finely as the blocks allow (grid within
    the GPU's SMs, one program each) and predicts several times less per step."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    plan = sequence_plan("LSTM", 64, 512, 0, torch.float32, sms=132)
    tiles, slices = plan.grid(64)
    assert not plan.resident
    assert tiles == 4 and slices == 512 // plan.blocks.block_h and tiles * slices <= 132  # the finest slices
    assert plan.one_launch and plan.barrier
    steps = predicted_steps("LSTM", 64, 512, 0, torch.float32, sms=132)
    assert steps["hidden-split"][0] * 5 < steps["batch-tiled"][0] and steps["hidden-split"][0] < steps["stepwise"][0]
    # A grid the GPU cannot hold at once is planned step by step, and never as one launch.
    many = make_plan(4096, 512, torch.float32, 32, sms=132, concurrent=True)
    assert many.grid(4096)[0] * 32 > 132 and not many.one_launch
    # Small layers keep one slice: a barrier costs more than the reads it saves.
    assert sequence_plan("LSTM", 16, 20, 0, torch.float64).slices == 1


def test_the_plan_follows_the_gpu_and_the_interpreter():
    small_gpu = sequence_plan("GRU", 64, 1024, 0, torch.bfloat16, sms=16)
    assert small_gpu.grid(64)[0] * small_gpu.slices <= 16
    interpreted = sequence_plan("GRU", 64, 1024, 0, torch.bfloat16, sms=132, concurrent=False)
    assert interpreted.slices == sequence_plan("GRU", 64, 1024, 0, torch.bfloat16, sms=132).slices
    assert interpreted.slices > 1 and not interpreted.one_launch


@pytest.mark.parametrize("hidden", [16, 20, 40, 100, 768, 2048])
@pytest.mark.parametrize("slices", [1, 2, 3, 7])
def test_slices_cover_the_hidden_units_once(hidden, slices):
    plan = make_plan(64, hidden, torch.bfloat16, slices, sms=132, concurrent=True)
    width = plan.columns(hidden)
    # The narrowest multiple of the block that covers H in ``slices`` programs (forced slices may leave some empty).
    assert width % plan.blocks.block_h == 0 and slices * width >= hidden > slices * (width - plan.blocks.block_h)
    owned = [range(p * width, min((p + 1) * width, hidden)) for p in range(slices)]
    assert sorted(i for r in owned for i in r) == list(range(hidden))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_the_sequence_kernels_serve_the_benchmark_sizes(mode, dtype):
    """With the hidden split the sequence kernels beat the stepwise path (in the model, at PATH_BATCH rows) at
    every hidden size the benchmark runs; the layer tests run small sizes in every dtype, asserting the kernels
    by name. The path does not depend on the batch (torch.compile bakes it into a graph for any batch)."""
    for hidden in (16, 64, 256, 512, 1024, 2048):
        assert choose_path(mode, hidden, 0, dtype) == "sequence", hidden
    # Where the model would prefer the stepwise path at a larger batch, the sequence kernels still run.
    steps = predicted_steps("LSTM", 256, 2048, 0, torch.float32)
    assert steps["stepwise"][0] < steps["hidden-split"][0] and choose_path("LSTM", 2048, 0, torch.float32) == "sequence"


# ----------------------------------------------------------------------------
# Decisions: the plan and the path the model picks at known sizes (each would change if a term were dropped)
# ----------------------------------------------------------------------------
SM90_SHARED, SM80_SHARED = 232448, 166912


@pytest.mark.parametrize(("mode", "batch", "hidden", "dtype", "grid", "rows"), [
    ("LSTM", 64, 512, torch.float32, (4, 32), 16),
    ("LSTM", 64, 512, torch.bfloat16, (4, 32), 16),
    ("GRU", 64, 512, torch.float32, (4, 32), 16),
    ("GRU", 64, 512, torch.bfloat16, (4, 32), 16),
    ("LSTM", 16, 768, torch.bfloat16, (1, 48), 16),  # FlashRNN's setup: 48 programs of 16 units
    ("LSTM", 1, 512, torch.bfloat16, (1, 32), 16),
], ids=lambda v: str(v).replace("torch.", ""))
def test_headline_sizes_are_weight_stationary_on_an_h100(mode, batch, hidden, dtype, grid, rows, monkeypatch):
    """With TF32 (cuDNN's default) and half types, the headline sizes keep W_hh on chip in one launch."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    plan = sequence_plan(mode, batch, hidden, 0, dtype, sms=132, shared=SM90_SHARED)
    assert plan.resident and plan.one_launch and plan.grid(batch) == grid and plan.blocks.block_b == rows
    assert plan.columns(hidden) == dispatch.RESIDENT_BLOCK_H


def test_weight_stationary_follows_shared_memory_and_the_products(monkeypatch):
    """W_hh slice plus h tile (bf16: h is broadcast in the storage dtype) must fit one program's shared memory
    and the grid the GPU; products on FMA units (fp64, IEEE fp32) never keep W on chip."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert dispatch.resident_bytes("LSTM", 768, torch.bfloat16, 16) == (4 * 16 + 16) * 1024 * 2
    assert dispatch.resident_bytes("GRU", 512, torch.float32, 32) == (4 * 16 + 32) * 512 * 4  # 3 gates padded to 4
    assert sequence_plan("LSTM", 16, 1024, 0, torch.bfloat16, sms=132, shared=SM90_SHARED).resident
    # 4 batch tiles of 64 units: 256 programs, more than an H100 holds (taller tiles spill in the backward)
    assert not sequence_plan("LSTM", 64, 1024, 0, torch.bfloat16, sms=132, shared=SM90_SHARED).resident
    assert not sequence_plan("LSTM", 256, 512, 0, torch.float16, sms=132, shared=SM90_SHARED).resident
    assert sequence_plan("LSTM", 16, 768, 0, torch.bfloat16, sms=108, shared=SM80_SHARED).resident  # 160 KB
    # With a projection W_hh streams (the resident backward spilled with W_hr beside it).
    assert not sequence_plan("LSTM", 16, 512, 128, torch.bfloat16).resident
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert not sequence_plan("LSTM", 64, 256, 0, torch.float32).resident
    assert not sequence_plan("GRU", 64, 128, 0, torch.float64).resident
    # Where no tile height fits both the SMs and shared memory, W_hh is streamed: H = 2048 bf16 (256 KB of W).
    assert not sequence_plan("LSTM", 16, 2048, 0, torch.bfloat16, sms=132).resident


def test_the_path_crosses_over_to_stepwise_where_the_model_says():
    """fp64 LSTM: on 16 SMs the sequence kernels up to H = 512 and the stepwise path from 768; on 132 SMs up to
    2048, stepwise from 3072 (the DRAM floor of weights beyond L2, the waves of a grid larger than the GPU)."""
    assert choose_path("LSTM", 512, 0, torch.float64, sms=16) == "sequence"
    assert choose_path("LSTM", 768, 0, torch.float64, sms=16) == "stepwise"
    assert choose_path("LSTM", 2048, 0, torch.float64, sms=132) == "sequence"
    assert choose_path("LSTM", 3072, 0, torch.float64, sms=132) == "stepwise"


def test_ties_go_to_fewer_programs():
    blocks = make_plan(64, 512, torch.float32, 1, 132, True).blocks
    one, two = (dispatch.SequencePlan(blocks, n) for n in (1, 2))
    assert dispatch._cheapest([(1.0, two), (1.0, one)])[1] is one


def test_the_model_states_its_terms():
    """One step of the plan: every program's reads over one SM's L2 bandwidth, plus the barriers."""
    plan = make_plan(64, 512, torch.float32, 16, sms=132, concurrent=True)
    reads = 4 * 32 * 512 * 4 + 16 * 512 * 4  # W_hh rows of 32 units in 4 gates, h tile of 16 rows
    want = reads / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.BARRIER_S
    assert sequence_step_seconds("LSTM", 64, 512, 0, torch.float32, plan, 132) == pytest.approx(want)
    stepped = make_plan(64, 512, torch.float32, 16, sms=132, concurrent=False)
    want = reads / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.STEP_LAUNCH_S
    assert sequence_step_seconds("LSTM", 64, 512, 0, torch.float32, stepped, 132) == pytest.approx(want)


def test_force_path():
    with force_path("stepwise"):
        assert choose_path("GRU", 64, 0, torch.float32) == "stepwise"
    assert choose_path("GRU", 64, 0, torch.float32) == "sequence"
    with force_path("sequence"):
        assert choose_path("LSTM", 4096, 0, torch.float32) == "sequence"
    with pytest.raises(ValueError):
        with force_path("persistent"):
            pass
    with force_path("sequence", slices=5):
        assert sequence_plan("LSTM", 64, 512, 0, torch.float32).slices == 5
    assert sequence_plan("LSTM", 64, 512, 0, torch.float32).slices != 5


def test_amd_keeps_w_on_chip_only_within_its_register_budget():
    """On AMD a resident W_hh slice lives in VGPRs, not LDS (tests/test_ir_reads.py), and the full gfx942 compile
    grid spilled past 32 KB of slice and h tile: plans there keep W on chip only within AMD_RESIDENT_BYTES,
    whatever the LDS (LSTM fp16 B = 16: H = 128 takes 20 KB, resident; H = 256 takes 40 KB, which 64 KB of LDS
    would hold, streamed)."""
    amd, nvidia = resident_budget(64 * 1024, rocm=True), resident_budget(232448, rocm=False)
    assert (amd, nvidia) == (AMD_RESIDENT_BYTES, 232448)
    assert sequence_plan("LSTM", 16, 128, 0, torch.float16, sms=304, shared=amd).resident
    assert not sequence_plan("LSTM", 16, 256, 0, torch.float16, sms=304, shared=amd).resident
    assert sequence_plan("LSTM", 16, 256, 0, torch.float16, sms=304, shared=64 * 1024).resident


def test_the_model_counts_the_projection_and_the_resident_weights(monkeypatch):
    """With a projection: W_hr's slice and the m tile are read each step, and a step has two barriers. A
    weight-stationary one-launch plan reads no W_hh per step (its load once per launch is left out), only h."""
    plan = make_plan(64, 512, torch.float32, 16, sms=132, concurrent=True)
    assert (plan.columns(512), plan.columns(128)) == (32, 16)  # 16-wide fp32 blocks: 32 units of H, 16 of R
    reads = 4 * 32 * 128 * 4 + 16 * 512 * 4 + 16 * 128 * 4 + 16 * 512 * 4  # W_hh, W_hr slices, h and m tiles
    want = reads / dispatch.L2_BYTES_PER_S_PER_PROGRAM + 2 * dispatch.BARRIER_S
    assert sequence_step_seconds("LSTM", 64, 512, 128, torch.float32, plan, 132) == pytest.approx(want)
    resident = dispatch.resident_plan(64, 512, torch.bfloat16, 132, concurrent=True)
    want = 16 * 512 * 2 / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.BARRIER_S  # h broadcast in bf16
    assert sequence_step_seconds("LSTM", 64, 512, 0, torch.bfloat16, resident, 132) == pytest.approx(want)
    stepped = dispatch.resident_plan(64, 512, torch.bfloat16, 132, concurrent=False)  # W reloaded every launch
    want = (4 * 16 * 512 * 2 + 16 * 512 * 2) / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.STEP_LAUNCH_S
    assert sequence_step_seconds("LSTM", 64, 512, 0, torch.bfloat16, stepped, 132) == pytest.approx(want)


def test_weights_beyond_l2_cannot_beat_dram():
    """LSTM H = 4096 in fp32, one batch tile: 268 MB of W_hh, more than L2, spread over 64 or more programs: each
    reads at most 4 MB a step, but the step cannot beat reading all of W_hh from DRAM."""
    plan = sequence_plan("LSTM", 16, 4096, 0, torch.float32)
    assert plan.slices >= 64  # each program reads at most 4 x 64 units x 4096 x 4 B = 4 MB a step
    floor = recurrent_weight_bytes("LSTM", 4096, 0, torch.float32) / dispatch.DRAM_BYTES_PER_S
    assert sequence_step_seconds("LSTM", 16, 4096, 0, torch.float32, plan) == pytest.approx(floor + dispatch.BARRIER_S)


def test_force_path_resident():
    with force_path("sequence", resident=True, rows=32):
        plan = sequence_plan("GRU", 70, 40, 0, torch.float64)
    assert plan.resident and plan.grid(70) == (3, 3) and plan.blocks.block_b == 32
    with pytest.raises(ValueError):
        with force_path("sequence", slices=2, resident=True):
            pass
    with pytest.raises(ValueError):
        with force_path("sequence", resident=True, rows=24):
            pass


def test_the_backward_step_model():
    """The backward of a resident plan reads the gate gradients its units of dh_{t-1} sum over (4H for an LSTM);
    streaming adds its columns of W_hh. FlashRNN's setup (LSTM B = 16 H = 768 bf16, 48 programs)."""
    resident = sequence_plan("LSTM", 16, 768, 0, torch.bfloat16)
    assert resident.resident and resident.grid(16) == (1, 48)
    want = 16 * 4 * 768 * 2 / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.BARRIER_S
    assert dispatch.backward_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, resident) == pytest.approx(want)
    streamed = make_plan(16, 768, torch.bfloat16, 24, 132, True)
    want = (16 * 4 * 768 + 4 * 768 * 32) * 2 / dispatch.L2_BYTES_PER_S_PER_PROGRAM + dispatch.BARRIER_S
    assert dispatch.backward_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, streamed) == pytest.approx(want)


def test_a_bidirectional_layer_is_one_launch_where_the_gpu_holds_both():
    """Both directions in one launch (one forward and one backward launch per layer) where the GPU holds both
    directions' grids at once: FlashRNN's setup made bidirectional, 2 x 48 weight-stationary programs, and the
    small layers. Where it does not (B = 64, H = 512: 2 x 128 resident programs on 132 SMs) the model weighs one
    streaming launch against one resident launch per direction and takes the cheaper: two launches."""
    flashrnn = sequence_plan("LSTM", 16, 768, 0, torch.bfloat16, directions=2)
    assert flashrnn.directions == 2 and flashrnn.one_launch and flashrnn.resident and flashrnn.grid(16) == (2, 48)
    small = sequence_plan("GRU", 19, 40, 0, torch.float32, directions=2)
    assert small.directions == 2 and small.one_launch
    # A tie, 4 waves of batch tiles either way at B = 4096: one launch.
    assert sequence_plan("GRU", 4096, 16, 0, torch.float32, directions=2).directions == 2
    classic = sequence_plan("LSTM", 64, 512, 0, torch.bfloat16, directions=2)
    one = dispatch.predicted_steps("LSTM", 64, 512, 0, torch.bfloat16, directions=2)
    assert classic.directions == 1 and classic.resident and classic.grid(64) == (4, 32)
    assert one["weight-stationary"][1] == classic and one["weight-stationary"][0] < one["hidden-split"][0]
    assert one["weight-stationary"][0] == pytest.approx(
        2 * sequence_step_seconds("LSTM", 64, 512, 0, torch.bfloat16, classic))


# ----------------------------------------------------------------------------
# Heads: programs meet only with those sharing their heads
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(("columns", "head", "slices", "meeting"), [
    (16, 16, 48, 1),  # a head per program: none meet
    (64, 16, 12, 1),  # whole heads per program
    (16, 64, 48, 4),  # a head over 4 programs: they meet in fours
    (16, 24, 6, 6),  # blocks straddling heads: every slice of the tile
    (96, 1, 1, 1),  # one slice
    (16, 0, 4, 4),  # one head (no heads): every slice
])
def test_meeting_programs(columns, head, slices, meeting):
    assert meeting_programs(columns, head, slices) == meeting


def test_flashrnns_setup_plans_a_head_per_program_without_barriers():
    """FlashRNN's setup (B = 16, total hidden 768, bf16, H100) in heads of 16: one weight-stationary program per
    head, no barrier, one launch; one head: the slices meet every step."""
    plan = sequence_plan("SLSTM", 16, 768, 0, torch.bfloat16, head_dim=16)
    assert plan.resident and plan.meeting == 1 and not plan.barrier and plan.one_launch
    assert plan.grid(16) == (1, 48)
    one_head = sequence_plan("SLSTM", 16, 768, 0, torch.bfloat16)
    assert one_head.meeting == one_head.slices > 1 and one_head.barrier
    # the interpreter runs a plan whose programs never meet as one launch as well
    assert sequence_plan("SLSTM", 16, 768, 0, torch.bfloat16, concurrent=False, head_dim=16).one_launch


def test_heads_shrink_what_a_program_reads_and_keeps():
    """A unit sums over its head only: the resident slice spans the head (16 units x 4 gates x 64, not x 768), the
    modelled step reads a head's weights, and no barrier is charged when programs own whole heads."""
    assert resident_bytes("LSTM", 768, torch.bfloat16, 16, head_dim=64) == (4 * 16 + 16) * 64 * 2
    assert resident_bytes("LSTM", 96, torch.bfloat16, 16, head_dim=24) == (4 * 16 + 16) * 64 * 2  # spans 2 heads
    whole = make_plan(16, 768, torch.bfloat16, 12, 132, True, head_dim=64)
    assert whole.meeting == 1
    dense = make_plan(16, 768, torch.bfloat16, 12, 132, True)
    assert sequence_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, whole, head_dim=64) < \
        sequence_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, dense) / 4
    # whole heads of 48 per program: 96 units (lcm with the 32-wide blocks) and twice, 4 and 8 times that
    assert slice_choices(768, 0, 32, head_dim=48) == sorted(set(slice_choices(768, 0, 32)) | {8, 4, 2, 1})


def test_layer_norm_modes_count_their_barriers_and_take_the_sequence_kernels():
    """haste's LayerNorm cells (modes LN_LSTM, LN_GRU): three and two barriers a step where programs meet (each
    1 us in the model), forward and backward; the LayerNorm LSTM's backward reads W_hh even when resident; with
    one program a row, each phase pays the step's chain; the path is always the sequence kernels."""
    narrow = sequence_plan("LN_LSTM", 16, 512, 0, torch.bfloat16)  # KP 512: its backward keeps W_hh on chip too
    assert narrow.resident and (dispatch.backward_step_seconds("LN_LSTM", 16, 512, 0, torch.bfloat16, narrow)
                                - dispatch.backward_step_seconds("LSTM", 16, 512, 0, torch.bfloat16, narrow)
                                == pytest.approx(2 * dispatch.BARRIER_S))
    assert [dispatch.meetings_per_step(m, 0) for m in ("LSTM", "GRU", "LN_LSTM", "LN_GRU")] == [1, 1, 3, 2]
    assert dispatch.meetings_per_step("LSTM", 8) == 2
    resident = sequence_plan("LN_LSTM", 16, 768, 0, torch.bfloat16)
    assert resident.resident and resident.meeting > 1
    for mode, extra in (("LSTM", 2), ("GRU", 1)):
        plain = sequence_step_seconds(mode, 16, 768, 0, torch.bfloat16, resident)
        normed = sequence_step_seconds("LN_" + mode, 16, 768, 0, torch.bfloat16, resident)
        assert normed - plain == pytest.approx(extra * dispatch.BARRIER_S)
    w_reads = 4 * 768 * 16 * 2 / dispatch.L2_BYTES_PER_S_PER_PROGRAM  # its columns of W_hh (KP 1024), streamed
    assert (dispatch.backward_step_seconds("LN_LSTM", 16, 768, 0, torch.bfloat16, resident)
            - dispatch.backward_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, resident)
            == pytest.approx(2 * dispatch.BARRIER_S + w_reads))
    one = make_plan(16, 768, torch.bfloat16, 1, 132, True)
    assert (sequence_step_seconds("LN_LSTM", 16, 768, 0, torch.bfloat16, one)
            - sequence_step_seconds("LSTM", 16, 768, 0, torch.bfloat16, one)
            == pytest.approx(2 * dispatch.STEP_LATENCY_S))
    assert choose_path("LN_GRU", 4096, 0, torch.float64) == "sequence"
    # the LayerNorm LSTM streams in 16-wide blocks (32-wide half-type ones spilled); the GRU keeps 32
    assert sequence_plan("LN_LSTM", 16, 40, 0, torch.bfloat16).blocks.block_h == 16
    assert sequence_plan("LN_GRU", 16, 40, 0, torch.bfloat16).blocks.block_h == 32
    with force_path("sequence", slices=1):
        assert sequence_plan("LN_LSTM", 16, 1000, 0, torch.float16).blocks.block_h == 16
    assert "stepwise" not in predicted_steps("LN_LSTM", 64, 512, 0, torch.bfloat16)
