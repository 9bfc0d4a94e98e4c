"""Launch bookkeeping shared by every kernel launcher: block choices and a launch counter.

The counter is a structural fact (kernel launches per call) that the tests and
the benchmark read; incrementing it costs one integer add per launch.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton


def interpreting() -> bool:
    """True when Triton's CPU interpreter runs the kernels (TRITON_INTERPRET=1 at import)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@dataclass
class LaunchCounter:
    """Kernel launches since the counter was created, by kernel name, and the grids each kernel ran on."""

    total: int = 0
    by_kernel: dict[str, int] | None = None
    grids: dict[str, set[tuple[int, ...]]] | None = None

    def add(self, name: str, grid: tuple[int, ...]) -> None:
        self.total += 1
        if self.by_kernel is None:
            self.by_kernel, self.grids = {}, {}
        self.by_kernel[name] = self.by_kernel.get(name, 0) + 1
        self.grids.setdefault(name, set()).add(tuple(grid))


_counters: list[LaunchCounter] = []


@contextlib.contextmanager
def count_launches() -> Iterator[LaunchCounter]:
    """Count the Triton launches made by fused_rnn inside the ``with`` block."""
    counter = LaunchCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def launch(kernel, grid: tuple[int, ...], *args, **kwargs) -> None:
    """Launch ``kernel`` on ``grid`` (skipped when the grid is empty) and count it."""
    if any(g == 0 for g in grid):
        return
    kernel[grid](*args, **kwargs)
    for counter in _counters:
        counter.add(kernel.fn.__name__, grid)


@dataclass(frozen=True)
class CellBlocks:
    """Tile of a pointwise cell kernel: BLOCK_N rows x BLOCK_H hidden units, and warps."""

    block_n: int
    block_h: int
    num_warps: int


def cell_blocks(n: int, hidden: int, dtype: torch.dtype) -> CellBlocks:
    """Tile for the step kernels, a pure function of batch, hidden size and dtype.

    About 2K elements per program per gate (1K for fp64, whose values take two
    registers) with 8 warps (8 elements a thread, 4 in fp64) and, on NVIDIA,
    every register a thread can have (the launcher's ``maxnreg``), so the live
    gate values fit in registers (checked by ``fused_rnn.compile_report``; with
    4 warps the accurate tanh of ``cell_math`` spilled in 7 configurations): wide
    along the hidden dimension, which is contiguous in memory, and as many rows as fit.
    """
    budget = 1024 if dtype == torch.float64 else 2048
    block_h = min(triton.next_power_of_2(max(hidden, 1)), 256)
    block_n = max(1, min(triton.next_power_of_2(max(n, 1)), budget // block_h))
    return CellBlocks(block_n=block_n, block_h=block_h, num_warps=8)


_poison = False


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    """Fill every kernel output buffer with NaN before the kernel runs (a testing aid).

    An element that a kernel forgets to write then shows up as NaN.
    """
    global _poison
    previous, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = previous


def new_output(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A new contiguous buffer with ``like``'s dtype and device, for a kernel to fill."""
    out = like.new_empty(shape)
    if _poison:
        out.fill_(float("nan"))
    return out


def tf32_products(dtype: torch.dtype) -> bool:
    """Whether the sequence kernels' fp32 products use TF32: they follow cuDNN's RNN switch
    (``torch.backends.cudnn.allow_tf32``), as torch.nn's recurrent layers do on a GPU."""
    return dtype == torch.float32 and torch.backends.cudnn.allow_tf32


@dataclass(frozen=True)
class SequenceBlocks:
    """Tile of a sequence kernel: BLOCK_B batch rows per program, BLOCK_H output units and
    BLOCK_K reduction units per recurrent-product block, warps, and the register limit per
    thread (NVIDIA's ``maxnreg``)."""

    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    max_registers: int


def sequence_blocks(batch: int, hidden: int, dtype: torch.dtype) -> SequenceBlocks:
    """Tile for the sequence kernels, a pure function of batch, hidden size and dtype (and the backend).

    Each program re-reads all of W_hh every step through its SM's share of L2
    bandwidth, so a step takes about the same time whatever the tile's rows:
    the smallest tile that tensor cores take (16 rows) gives the most programs,
    hence the most SMs working in parallel. W_hh is streamed by
    (BLOCK_K x BLOCK_H) blocks, BLOCK_H = BLOCK_K = clamp(next_pow2(H), 16, 32),
    8 warps: 64-wide blocks, or 4 warps, need more registers than a thread can
    have. Products that do not run on tensor cores (fp64, and fp32 without
    TF32) are computed with FMAs from operands held in registers: they take
    16-wide blocks (32-wide ones need 250 registers for the LSTM, and spill).
    TF32 products take 16-wide blocks too: with the gates side by side in one
    product a 32-wide block is a (32 x 128) fp32 W tile, and the GRU and the
    LSTM with a projection spilled on sm_90 (8 to 24 B). On AMD GPUs every
    product takes 16-wide blocks (MFMA's 16 x 16 tiles): the 32-wide ones of
    the LSTM with a projection spilled VGPRs on gfx942. 32-wide blocks remain
    for half types on NVIDIA.

    Registers: for 256 threads ptxas caps a kernel at 128 registers per thread
    (two programs per SM) unless told otherwise, and the per-step addresses of
    the GRU and LSTM kernels need up to about 225 (docs/compile-report.md),
    so they spilled. A sequence program is long-lived and
    bound by its reads of W_hh, not by occupancy, so the kernels may use up to
    255 registers (one 256-thread program per SM when they need more than
    128). ``fused_rnn.compile_report`` checks every configuration for spills.
    """
    widest = 16 if dtype.itemsize > 2 or torch.version.hip is not None else 32
    block_h = min(max(16, triton.next_power_of_2(max(hidden, 1))), widest)
    return SequenceBlocks(block_b=16, block_h=block_h, block_k=block_h, num_warps=8, max_registers=255)


@dataclass(frozen=True)
class SequencePlan:
    """How the sequence kernels cover one layer and direction.

    ``blocks`` is the tile; each batch tile is split into ``slices`` programs,
    each owning ``columns(width)`` hidden units (a multiple of BLOCK_H) of every
    gate. With several slices the programs of a tile meet at a barrier between
    phases: in one launch over the whole sequence when ``one_launch`` (the GPU
    must hold the grid at once), else one launch per step and phase. When
    ``resident`` each program owns one block of BLOCK_H units and keeps its
    slice of W_hh on chip for the whole launch (weight-stationary), else it
    streams the slice from L2 every step. ``directions`` = 2 runs both
    directions of a bidirectional layer in one launch (grid axis 0: the batch
    tiles of direction 0, then of direction 1); 1 runs one direction a launch.
    ``group``: with heads (a block-diagonal W_hh), the programs of a tile that
    meet at a barrier, those whose units share heads (``meeting_programs``):
    1 when each owns whole heads (no barrier at all); 0 means every slice.
    """

    blocks: SequenceBlocks
    slices: int = 1
    one_launch: bool = True
    resident: bool = False
    directions: int = 1
    group: int = 0

    def columns(self, width: int) -> int:
        """Units of a ``width``-wide state each program owns."""
        per = triton.cdiv(max(width, 1), self.slices)
        return triton.cdiv(per, self.blocks.block_h) * self.blocks.block_h

    def grid(self, batch: int) -> tuple[int, int]:
        """(directions x batch tiles, slices)."""
        return self.directions * triton.cdiv(batch, self.blocks.block_b), self.slices

    @property
    def meeting(self) -> int:
        """Programs of a batch tile that wait for each other between phases (1: none)."""
        return self.group or self.slices

    @property
    def barrier(self) -> bool:
        """Whether the kernels synchronise their programs in-kernel (programs that meet, in one launch)."""
        return self.meeting > 1 and self.one_launch


def meeting_programs(columns: int, head_dim: int, slices: int) -> int:
    """Programs of a batch tile that must meet between phases when each owns ``columns`` units of heads
    ``head_dim`` wide (0: one head): none (1) when each owns whole heads, the programs of one head when a head
    spans several whole programs, else all ``slices``."""
    if slices == 1 or not head_dim:
        return slices
    if columns % head_dim == 0:
        return 1
    return head_dim // columns if head_dim % columns == 0 else slices
