"""The path heuristic is a pure function of the cell, sizes and dtype; force_path overrides it."""

from __future__ import annotations

import pytest
import torch

from fused_rnn import dispatch
from fused_rnn.dispatch import (
    choose_path, force_path, make_plan, predicted_steps, recurrent_weight_bytes, sequence_plan, sequence_step_seconds,
)


def test_weight_bytes():
    assert recurrent_weight_bytes("LSTM", 512, 0, torch.float32) == 4 * 512 * 512 * 4
    assert recurrent_weight_bytes("LSTM", 512, 128, torch.bfloat16) == (4 * 512 * 128 + 128 * 512) * 2
    assert recurrent_weight_bytes("RNN_RELU", 100, 0, torch.float64) == 100 * 100 * 8


def test_the_hidden_split_plan_spreads_a_step_over_the_gpu():
    """At the classic size the batch-tiled kernel would use 4 programs; the plan splits each tile's hidden
    units as finely as the blocks allow (grid within the GPU's SMs, one program each) and predicts several
    times less per step."""
    plan = sequence_plan("LSTM", 64, 512, 0, torch.float32, sms=132)
    tiles, slices = plan.grid(64)
    assert tiles == 4 and slices == 512 // plan.blocks.block_h and tiles * slices <= 132  # the finest slices
    assert plan.one_launch and plan.barrier
    steps = predicted_steps("LSTM", 64, 512, 0, torch.float32, sms=132)
    assert steps["hidden-split"][0] * 5 < steps["batch-tiled"][0] < steps["stepwise"][0]
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


def test_lstm_and_fp64_gru_and_tanh_rnn_run_stepwise_on_amd_gpus():
    """Their sequence kernels spill scalar registers on gfx942 (compile report): never launched there."""
    assert choose_path("LSTM", 64, 0, torch.float16, rocm=True) == "stepwise"
    assert choose_path("LSTM", 64, 0, torch.float16, rocm=False) == "sequence"
    assert choose_path("GRU", 64, 0, torch.float64, rocm=True) == "stepwise"
    assert choose_path("RNN_TANH", 64, 0, torch.float64, rocm=True) == "stepwise"
    assert choose_path("RNN_RELU", 64, 0, torch.float64, rocm=True) == "sequence"
    assert choose_path("GRU", 64, 0, torch.float64, rocm=False) == "sequence"
    for mode in ("GRU", "RNN_TANH", "RNN_RELU"):
        assert choose_path(mode, 64, 0, torch.float16, rocm=True) == "sequence"
