"""Which implementation runs a recurrent layer, and how: pure functions of the cell, sizes, dtype and GPU.

- ``"sequence"``: the Triton sequence kernels (``fused_rnn::sequence``) loop
  over time on the GPU. Their grid is (batch tile, hidden slice): each batch
  tile of 16 rows is split into ``slices`` programs, each owning a slice of
  the hidden units of every gate and reading only its rows of W_hh each step;
  the programs of a tile meet at a barrier between phases (one per step, two
  with a projection; haste's LayerNorm GRU two and LSTM three, modes "LN_GRU"
  and "LN_LSTM", whose row statistics span every slice). One slice is the batch-tiled kernel: every program
  reads all of W_hh each step, no barrier.
- ``"stepwise"``: a Python loop over time of one cuBLAS matmul plus the fused
  cell kernel per step; every step pays host dispatch.

``sequence_plan`` picks the slices with the smallest modelled time per step
(inside the op, at the call's batch size); ``choose_path`` compares it with
the stepwise path at PATH_BATCH rows (the path must not depend on the batch:
torch.compile bakes it into a graph for any batch). With the constants below
the hidden-split kernels win at every size on NVIDIA GPUs (when the weights
exceed L2 both paths read them from DRAM, and the stepwise path pays host
dispatch on top), so the stepwise path serves AMD GPUs (below) and
``force_path``. The model of one step
(``sequence_step_seconds``): every program of a wave reads its W_hh slice
(and W_hr slice), the h tile of its rows and, with a projection, the m tile,
through its SM's share of L2 bandwidth; programs beyond one per SM run in
further waves; each barrier costs a fixed time; a grid the GPU cannot hold at
once runs one launch per step and phase, each costing a launch. When the
recurrent weights do not fit in L2 the step cannot beat reading them from DRAM.
Every constant below is an estimate from H100 specifications and published
figures, not a measurement (no GPU run has calibrated them; ``make bench``
prints predicted against measured times).

``force_path`` overrides the choice, and the slices (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from collections.abc import Iterable, Iterator

import torch
import triton

from .kernels.launch import SequencePlan, meeting_programs, sequence_blocks, tf32_products
from .kernels.sequence_kernels import LN_LSTM_BACKWARD_KP, reduction_span

# Modes: torch.nn's, the sLSTM, and haste's LayerNorm LSTM and GRU ("LN_" + the cell's).
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1, "SLSTM": 4, "LN_LSTM": 4, "LN_GRU": 3}
# Estimates, not measurements:
# - one SM's L2 read bandwidth with every SM reading: gpu-benches' gpu-l2-cache measures about 5.4 TB/s on an
#   A100 (108 SMs), 7 TB/s on an H100 PCIe (114) and 10 TB/s on an H200 (132): 35-40 bytes per clock per SM,
#   about 72 GB/s per SM at H100/H200 clocks.
L2_BYTES_PER_S_PER_PROGRAM = 7.2e10
# - one barrier of the programs of a tile: an atomic add and acquire polls through L2, about 1 us
#   (GPU-scope atomics take ~0.5 us round trip; persistent-RNN papers report 0.5-2 us per grid barrier).
BARRIER_S = 1.0e-6
# - the dependent chain of a step whose programs meet no other (one slice, or whole heads each): h stored and read
#   back through L2 (~600 cycles, 0.35 us at 1.7 GHz) plus the product and the cell math. Where programs meet,
#   BARRIER_S holds that round trip. (FlashRNN publishes 1.97 ms for 1024 steps of its Triton LSTM at heads of 16,
#   1.9 us a step.)
STEP_LATENCY_S = 0.5e-6
# - one launch of the step-by-step form, back to back on a stream (CUDA launch throughput, ~3-5 us).
STEP_LAUNCH_S = 4.0e-6
# - the host cost of one stepwise step (matmul + cell op + state update, dispatched from Python).
STEPWISE_HOST_S_PER_STEP = 50e-6
# - DRAM bandwidth (H100 SXM ~3.35 TB/s peak, ~3.0 measured copy) and the L2 size (50 MB).
DRAM_BYTES_PER_S = 3.0e12
L2_BYTES = 50e6
# The GPU the plans assume where none is present (the interpreter, meta tensors): an H100 SXM's SMs.
REFERENCE_SMS = 132
# The compiled code (docs/sequence-kernels.md) keeps a weight-stationary program's W_hh slice in shared memory,
# loaded once before the time loop, beside its h tile (the product's other operand): their bytes must fit the
# shared memory one program may have (227 KB on sm_90 and on the reference GPU, 163 KB on sm_80, 64 KB on gfx942),
# less a margin for the kernel's own scratch (read from the compiled kernels: at most 1 KB).
REFERENCE_SHARED = 232448
SHARED_MARGIN = 2048
# AMD (gfx942): the compiled code keeps a resident program's W_hh slice in VGPRs (MFMA operands), not in LDS
# (docs/sequence-kernels.md), and the full compile grid spilled VGPRs to scratch past 32 KB of slice and h tile
# (LSTM fp16 at KP = 256 and LSTM fp32 at KP = 128, 40 KB each), whatever the LDS: the most a resident program
# may keep on chip there (with the margin).
AMD_RESIDENT_BYTES = 32 * 1024 + SHARED_MARGIN
# Units per weight-stationary program: tl.dot's smallest N.
RESIDENT_BLOCK_H = 16
# Batch tile heights a weight-stationary plan weighs: more rows keep fewer copies of W but read more h per program.
# Only 16 for now: with 32 or 64 rows the resident backward kernel spills for some cells on sm_80 and sm_90 (LSTM
# bf16 H = 768, docs/sequence-kernels.md); ``force_path(resident=True, rows=...)`` still runs them (tested in the
# interpreter).
RESIDENT_ROWS = (16,)
# Sequence programs held per SM that the plans count on: 8 warps of at most 255 registers fill an SM's 64K
# registers exactly, so one always fits (the launcher checks the compiled kernel before a one-launch grid).
PROGRAMS_PER_SM = 1

_forced: str | None = None
_forced_slices: int | None = None
_forced_resident: bool = False
_forced_rows: int | None = None


def recurrent_weight_bytes(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
    """Bytes of the weights read every time step: W_hh (G, R) and, with a projection, W_hr (R, H)."""
    state = proj_size if proj_size > 0 else hidden_size
    elements = GATES[mode] * hidden_size * state + (proj_size * hidden_size if proj_size > 0 else 0)
    return elements * dtype.itemsize


def _with_heads(plan: SequencePlan, hidden: int, head_dim: int, concurrent: bool, fits: bool) -> SequencePlan:
    """``plan`` with its meeting programs for heads ``head_dim`` wide (0: one head), in one launch when its
    programs need not meet, or run concurrently and the grid fits."""
    group = meeting_programs(plan.columns(hidden), head_dim, plan.slices) if head_dim else 0
    plan = dataclasses.replace(plan, group=group)
    return dataclasses.replace(plan, one_launch=plan.meeting == 1 or (concurrent and fits))


def make_plan(batch: int, hidden: int, dtype: torch.dtype, slices: int, sms: int, concurrent: bool,
              directions: int = 1, head_dim: int = 0) -> SequencePlan:
    """The streaming plan with ``slices`` programs per batch tile, ``directions`` directions a launch; one launch
    when the programs need not meet (one slice, or each owning whole heads of ``head_dim`` units), or run
    concurrently (not in the interpreter) and the grid fits ``sms`` SMs at PROGRAMS_PER_SM."""
    blocks = sequence_blocks(batch, hidden, dtype)
    fits = directions * triton.cdiv(batch, blocks.block_b) * slices <= sms * PROGRAMS_PER_SM
    return _with_heads(SequencePlan(blocks, slices, directions=directions), hidden, head_dim, concurrent, fits)


def for_mode(plan: SequencePlan, mode: str) -> SequencePlan:
    """``plan`` as ``mode`` takes it: haste's LayerNorm LSTM streams W_hh in 16-wide blocks (its kernels with the
    32-wide blocks of half types, every phase in one launch, spilled 16-40 B on sm_80 and sm_90: compile report);
    every other mode as it is."""
    if mode != "LN_LSTM" or plan.blocks.block_h <= RESIDENT_BLOCK_H:
        return plan
    return dataclasses.replace(plan, blocks=dataclasses.replace(plan.blocks, block_h=RESIDENT_BLOCK_H,
                                                                block_k=RESIDENT_BLOCK_H))


def resident_plan(batch: int, hidden: int, dtype: torch.dtype, sms: int, concurrent: bool,
                  rows: int = RESIDENT_ROWS[0], directions: int = 1, head_dim: int = 0) -> SequencePlan:
    """The weight-stationary plan: batch tiles of ``rows`` rows, each split into programs of RESIDENT_BLOCK_H
    units that keep their slice of W_hh on chip; directions, heads and one launch as for ``make_plan``."""
    blocks = dataclasses.replace(sequence_blocks(batch, hidden, dtype), block_b=rows,
                                 block_h=RESIDENT_BLOCK_H, block_k=RESIDENT_BLOCK_H)
    slices = triton.cdiv(max(hidden, 1), RESIDENT_BLOCK_H)
    fits = directions * triton.cdiv(batch, rows) * slices <= sms * PROGRAMS_PER_SM
    plan = SequencePlan(blocks, slices, resident=True, directions=directions)
    return _with_heads(plan, hidden, head_dim, concurrent, fits)


def reduction_width(hidden_size: int, head_dim: int, block_h: int) -> int:
    """Reduction indices one block of ``block_h`` units sums over: the whole state, or with heads the columns
    of the heads the block touches."""
    return reduction_span(hidden_size, head_dim, block_h) if head_dim else hidden_size


def resident_bytes(mode: str, hidden_size: int, dtype: torch.dtype, rows: int, head_dim: int = 0) -> int:
    """Shared memory of one weight-stationary program: its W_hh slice (RESIDENT_BLOCK_H units of every gate, the
    gates padded to a power of two, over the reduction width, H or with heads the span of a block's heads,
    padded to a power of two; H bounds R) and its h tile of ``rows`` rows (h is broadcast in the storage dtype).
    Equal to what the compiled kernels allocate (compile report)."""
    width = triton.next_power_of_2(max(reduction_width(hidden_size, head_dim, RESIDENT_BLOCK_H), 1))
    gates = triton.next_power_of_2(GATES[mode])
    return (gates * RESIDENT_BLOCK_H + rows) * width * dtype.itemsize


def sequence_step_seconds(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype,
                          plan: SequencePlan, sms: int = REFERENCE_SMS, head_dim: int = 0) -> float:
    """Modelled seconds of one time step of the sequence kernel under ``plan`` (module docstring); with heads
    ``head_dim`` wide each unit sums over its head only, and only programs that share heads meet."""
    state = proj_size if proj_size > 0 else hidden_size
    state_bytes = dtype.itemsize  # h is broadcast in the storage dtype
    rows = plan.blocks.block_b
    cols_h, cols_r = min(plan.columns(hidden_size), hidden_size), min(plan.columns(state), state)
    # the h columns a program's units sum over: all of h, or their heads
    reduce = min(state, max(cols_h, reduction_width(state, head_dim, plan.blocks.block_h)))
    # W_hh on chip across a one-launch run: only W_hr (streamed) is read per step; W_hh's load once per launch
    # is left out (T steps share it).
    stationary = plan.resident and plan.one_launch
    per_unit = head_dim or state
    weights = (0 if stationary else GATES[mode] * cols_h * per_unit) + (cols_r * hidden_size if proj_size > 0 else 0)
    reads = weights * dtype.itemsize + rows * reduce * state_bytes + (rows * hidden_size * dtype.itemsize if proj_size else 0)
    tiles, slices = plan.grid(batch)
    waves = triton.cdiv(tiles * slices, sms * PROGRAMS_PER_SM)
    seconds = waves * reads / L2_BYTES_PER_S_PER_PROGRAM
    w_bytes = recurrent_weight_bytes(mode, hidden_size, proj_size, dtype) // (hidden_size // head_dim if head_dim else 1)
    if w_bytes > L2_BYTES:
        seconds = max(seconds, w_bytes / DRAM_BYTES_PER_S)
    if plan.meeting > 1:
        seconds += meetings_per_step(mode, proj_size) * (BARRIER_S if plan.one_launch else STEP_LAUNCH_S)
    else:  # with layer normalisation each phase's pass over the program's blocks waits for the last one's
        seconds += STEP_LATENCY_S * (meetings_per_step(mode, proj_size) if mode.startswith("LN_") else 1)
    return seconds


def meetings_per_step(mode: str, proj_size: int) -> int:
    """Barriers a step of the sequence kernels takes where a tile's programs meet, forward and backward alike:
    one; two with a projection (the projection reads all of m); with layer normalisation (row statistics over
    every slice) two for the GRU and three for the LSTM (the products' statistics, c's, then h's exchange)."""
    if mode.startswith("LN_"):
        return 3 if mode == "LN_LSTM" else 2
    return 2 if proj_size > 0 else 1


def backward_step_seconds(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype,
                          plan: SequencePlan, sms: int = REFERENCE_SMS, head_dim: int = 0) -> float:
    """Modelled seconds of one step of the backward sequence kernel under ``plan``: each program reads the gate
    gradients of its rows that its units of dh_{t-1} sum over (LSTM 4H, GRU 3H, RNN H, or with heads ``head_dim``
    wide those of their heads; storage dtype) and, unless W_hh is resident in a one-launch plan, its columns of
    W_hh; one barrier per step (two with a projection) where programs meet. The saved gates of its own units, a
    few KB, are left out. An estimate, as the forward's."""
    state = proj_size if proj_size > 0 else hidden_size
    gates = GATES[mode]
    cols_r = min(plan.columns(state), state)
    reduce = min(hidden_size, max(cols_r, reduction_width(state, head_dim, plan.blocks.block_h)))
    # the LayerNorm LSTM's backward streams W_hh where its resident form would spill (kernels/sequence_kernels.py)
    wide = mode == "LN_LSTM" and triton.next_power_of_2(hidden_size) > LN_LSTM_BACKWARD_KP
    stationary = plan.resident and plan.one_launch and not wide
    weights = 0 if stationary else gates * (head_dim or hidden_size) * cols_r
    reads = plan.blocks.block_b * gates * reduce * dtype.itemsize + weights * dtype.itemsize
    tiles, slices = plan.grid(batch)
    seconds = triton.cdiv(tiles * slices, sms * PROGRAMS_PER_SM) * reads / L2_BYTES_PER_S_PER_PROGRAM
    phases = meetings_per_step(mode, proj_size)
    if plan.meeting > 1:
        seconds += phases * (BARRIER_S if plan.one_launch else 2 * STEP_LAUNCH_S)
    else:
        seconds += STEP_LATENCY_S * (phases if mode.startswith("LN_") else 1)
    return seconds


def stepwise_step_seconds(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> float:
    """Modelled seconds of one time step on the stepwise path."""
    return STEPWISE_HOST_S_PER_STEP + recurrent_weight_bytes(mode, hidden_size, proj_size, dtype) / DRAM_BYTES_PER_S


def slice_choices(hidden_size: int, proj_size: int, block_h: int, head_dim: int = 0) -> list[int]:
    """Slices per batch tile worth considering: each program owning block_h x 2^k units, down to one slice, and
    with heads ``head_dim`` wide each owning 2^k whole heads (a multiple of block_h units: no barrier)."""
    state = max(hidden_size, proj_size, 1)
    choices = []
    for first in (block_h, math.lcm(head_dim, block_h) if head_dim else block_h):
        width = first
        while True:
            choices.append(triton.cdiv(state, width))
            if width >= state:
                break
            width *= 2
    return sorted(set(choices))


@functools.lru_cache(maxsize=4096)
def _costed_plans(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype, tf32: bool,
                  sms: int, shared: int, directions: int = 1, head_dim: int = 0) -> tuple[tuple[float, SequencePlan], ...]:
    """(modelled seconds per step of the layer's ``directions`` directions, plan) of every choice, one launch
    where the GPU holds the grid. For a bidirectional layer each choice comes twice: both directions in one
    launch (twice the programs), and one direction a launch (twice the time).

    Cached: the layers ask at every call. ``tf32`` (which ``sequence_blocks``
    reads through ``tf32_products``) is part of the key only so that the cache follows the switch.
    """
    block_h = sequence_blocks(batch, hidden_size, dtype).block_h
    plans = []
    for together in sorted({1, directions}):
        plans += [for_mode(make_plan(batch, hidden_size, dtype, n, sms, True, together, head_dim), mode)
                  for n in slice_choices(hidden_size, proj_size, block_h, head_dim)]
        # with W_hr too, the resident backward spills; so does the TF32 one with heads 128 wide or more
        if on_tensor_cores(dtype, tf32) and proj_size == 0 and not _heads_spill(dtype, hidden_size, head_dim):
            candidates = (resident_plan(batch, hidden_size, dtype, sms, True, rows, together, head_dim)
                          for rows in resident_rows(batch))
            plans += [p for p in candidates if p.one_launch and resident_bytes(
                mode, hidden_size, dtype, p.blocks.block_b, head_dim) <= shared - SHARED_MARGIN]
    return tuple((layer_step_seconds(mode, batch, hidden_size, proj_size, dtype, p, sms, directions, head_dim), p)
                 for p in plans)


def _heads_spill(dtype: torch.dtype, hidden_size: int, head_dim: int) -> bool:
    """Whether a weight-stationary plan with heads spills: the full compile grid found the fp32 (TF32) resident
    backward with heads of 128 (LSTM and sLSTM, KP = 128) spilling 16-24 B on sm_80 and sm_90; heads of 64 and
    narrower, and half types, compile clean."""
    return bool(head_dim) and dtype.itemsize == 4 and reduction_width(hidden_size, head_dim, RESIDENT_BLOCK_H) >= 128


def layer_step_seconds(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype,
                       plan: SequencePlan, sms: int, directions: int, head_dim: int = 0) -> float:
    """Modelled seconds of one step of a layer's ``directions`` directions under ``plan``: one launch per
    ``plan.directions`` directions, one after another."""
    return directions // plan.directions * sequence_step_seconds(mode, batch, hidden_size, proj_size, dtype, plan,
                                                                 sms, head_dim)


def on_tensor_cores(dtype: torch.dtype, tf32: bool) -> bool:
    """Whether the recurrent products run on tensor cores (half types, TF32). Only those are planned
    weight-stationary: the FMA products of fp64 and IEEE fp32 need the resident operand in registers, and spill
    (compile report)."""
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and tf32)


def resident_rows(batch: int) -> list[int]:
    """Batch tile heights a weight-stationary plan may take at ``batch``: RESIDENT_ROWS up to the first that
    holds the whole batch."""
    rows = [r for r in RESIDENT_ROWS if r < batch]
    return rows + [next((r for r in RESIDENT_ROWS if r >= batch), RESIDENT_ROWS[-1])]


def _cheapest(costed: Iterable[tuple[float, SequencePlan]]) -> tuple[float, SequencePlan]:
    """The least modelled time; ties go to fewer launches (both directions in one), then fewer programs (fewer
    slices, then fewer batch tiles)."""
    return min(costed, key=lambda c: (c[0], -c[1].directions, c[1].slices, -c[1].blocks.block_b))


def sequence_plan(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype,
                  sms: int = REFERENCE_SMS, concurrent: bool = True, shared: int = REFERENCE_SHARED,
                  directions: int = 1, head_dim: int = 0) -> SequencePlan:
    """The sequence kernels' plan for one layer of ``directions`` directions: the least modelled time per step.

    ``sms``: the GPU's SMs; ``shared``: the shared memory one program may have;
    ``concurrent``: whether a launch's programs run at once (False in Triton's interpreter, which then runs the
    chosen plan one step and phase per launch, unless its programs need not meet); ``head_dim``: the width of
    the heads of a block-diagonal W_hh (0: one head). ``force_path(..., slices=n)`` sets the slices (both
    directions in one launch).
    """
    if _forced_resident:
        return resident_plan(batch, hidden_size, dtype, sms, concurrent, _forced_rows or RESIDENT_ROWS[0], directions,
                             head_dim)
    if _forced_slices is not None:
        return for_mode(make_plan(batch, hidden_size, dtype, _forced_slices, sms, concurrent, directions, head_dim),
                        mode)
    costed = _costed_plans(mode, batch, hidden_size, proj_size, dtype, tf32_products(dtype), sms, shared, directions,
                           head_dim)
    _, best = _cheapest(costed)
    return best if concurrent else dataclasses.replace(best, one_launch=best.meeting == 1)


def device_sms(device: torch.device) -> int:
    """SMs (compute units) of a GPU device; REFERENCE_SMS for any other device."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return REFERENCE_SMS


def resident_budget(shared: int, rocm: bool) -> int:
    """The ``shared`` the plans take: the bytes a weight-stationary program may keep on chip, the shared memory one
    program may have (NVIDIA) or, on AMD, where W lives in registers, at most AMD_RESIDENT_BYTES."""
    return min(shared, AMD_RESIDENT_BYTES) if rocm else shared


def device_shared(device: torch.device) -> int:
    """The on-chip bytes of a weight-stationary program (``resident_budget``) on a GPU device, from the shared
    memory (LDS) one program may have; REFERENCE_SHARED for any other device."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        shared = getattr(props, "shared_memory_per_block_optin", 0) or props.shared_memory_per_block
        return resident_budget(shared, torch.version.hip is not None)
    return REFERENCE_SHARED


# The batch at which the path is chosen: the path is a Python branch that torch.compile bakes into a graph
# traced for any batch size, so it must not depend on the batch (the plan's slices, chosen inside the op at
# run time, do).
PATH_BATCH = 64


@torch.compiler.assume_constant_result
def choose_path(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, sms: int = REFERENCE_SMS,
                shared: int = REFERENCE_SHARED) -> str:
    """The path for one layer, "sequence" or "stepwise" (module docstring), compared at PATH_BATCH rows;
    ``sms`` the GPU's SMs, ``shared`` its shared memory per program."""
    if _forced is not None:
        return _forced
    if mode.startswith("LN_"):  # no step kernel normalises: the sequence kernels only
        return "sequence"
    costed = _costed_plans(mode, PATH_BATCH, hidden_size, proj_size, dtype, tf32_products(dtype), sms, shared)
    sequence, _ = _cheapest(costed)
    return "sequence" if sequence <= stepwise_step_seconds(mode, hidden_size, proj_size, dtype) else "stepwise"


def predicted_steps(mode: str, batch: int, hidden_size: int, proj_size: int, dtype: torch.dtype,
                    sms: int = REFERENCE_SMS, shared: int = REFERENCE_SHARED,
                    directions: int = 1, head_dim: int = 0) -> dict[str, tuple[float, SequencePlan | None]]:
    """Modelled seconds per step of each path: "batch-tiled" (one slice streaming W_hh), "hidden-split" (the
    best with several slices streaming W_hh), "weight-stationary" (the best plan keeping W_hh on chip, where one
    fits) and "stepwise", each with its plan; per step of the layer's ``directions`` directions (heads:
    ``head_dim`` wide, 0 for one)."""
    costed = _costed_plans(mode, batch, hidden_size, proj_size, dtype, tf32_products(dtype), sms, shared, directions,
                           head_dim)
    streaming = [c for c in costed if not c[1].resident]
    out = {"batch-tiled": next(c for c in streaming if c[1].slices == 1)}
    for name, chosen in (("hidden-split", [c for c in streaming if c[1].slices > 1]),
                         ("weight-stationary", [c for c in costed if c[1].resident])):
        if chosen:
            out[name] = _cheapest(chosen)
    if not mode.startswith("LN_"):  # no stepwise path normalises
        out["stepwise"] = (directions * stepwise_step_seconds(mode, hidden_size, proj_size, dtype), None)
    return out


def explain_path(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, batch: int = 64,
                 sms: int = REFERENCE_SMS, concurrent: bool = True, shared: int = REFERENCE_SHARED,
                 directions: int = 1, head_dim: int = 0) -> tuple[str, str]:
    """The path for one layer and why: ("sequence" | "stepwise", reason with the predicted us per step);
    ``concurrent`` as for ``sequence_plan``."""
    path = choose_path(mode, hidden_size, proj_size, dtype, sms, shared)
    if _forced is not None:
        return path, f"forced by fused_rnn.force_path({_forced!r})"
    plan = sequence_plan(mode, batch, hidden_size, proj_size, dtype, sms, concurrent, shared, directions, head_dim)
    tiles, slices = triton.cdiv(batch, plan.blocks.block_b), plan.slices
    shown = []
    predicted = predicted_steps(mode, batch, hidden_size, proj_size, dtype, sms, shared, directions, head_dim)
    for name, (seconds, p) in predicted.items():
        how = "" if p is None else f" ({p.grid(batch)[0]} x {p.slices} programs)"
        shown.append(f"{name}{how} {seconds * 1e6:.2f} us")
    return path, (
        f"predicted per step at batch {batch} on {sms} SMs: {', '.join(shown)} (cost model, estimates, unmeasured; "
        f"the path is chosen at batch {PATH_BATCH}); "
        f"sequence plan: {tiles} batch tiles of {plan.blocks.block_b} rows x {slices} hidden slices of "
        f"{plan.columns(hidden_size)} units, W_hh " + ("on chip" if plan.resident else "streamed from L2") + ", "
        + ("one launch" if plan.one_launch else "one launch per step and phase")
        + ("" if not head_dim else f"; heads of {head_dim} units, "
           + ("no program waits for another" if plan.meeting == 1 else f"{plan.meeting} programs meet per head"))
        + ("" if not mode.startswith("LN_") else "; layer normalisation: "
           + (f"{meetings_per_step(mode, 0)} barriers a step" if plan.meeting > 1 else "no barrier (one program a row)"))
        + ("" if directions == 1 else " for both directions" if plan.directions == 2 else " for each direction")
    )


@contextlib.contextmanager
def force_path(path: str | None, slices: int | None = None, resident: bool = False,
               rows: int | None = None) -> Iterator[None]:
    """Run every layer in the block on ``path`` ("sequence" or "stepwise"; None restores the heuristic), the
    sequence kernels with ``slices`` hidden slices per batch tile streaming W_hh (None: the cost model's
    choice), or with ``resident`` the weight-stationary plan with batch tiles of ``rows`` rows (default 16)."""
    global _forced, _forced_slices, _forced_resident, _forced_rows
    if path not in (None, "sequence", "stepwise"):
        raise ValueError(f"unknown path {path!r}")
    if slices is not None and slices < 1:
        raise ValueError(f"slices must be at least 1, got {slices}")
    if resident and slices is not None:
        raise ValueError("a weight-stationary plan's slices follow from the hidden size: give slices or resident")
    if rows is not None and (not resident or rows < 16 or rows & (rows - 1)):
        raise ValueError(f"rows is a power of two >= 16 of a resident plan, got {rows}")
    previous = _forced, _forced_slices, _forced_resident, _forced_rows
    _forced, _forced_slices, _forced_resident, _forced_rows = path, slices, resident, rows
    try:
        yield
    finally:
        _forced, _forced_slices, _forced_resident, _forced_rows = previous
