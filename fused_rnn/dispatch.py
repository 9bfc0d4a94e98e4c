"""Which implementation runs a recurrent layer: a pure function of the cell, sizes and dtype.

- ``"sequence"``: one Triton launch per layer and direction loops over time
  (``fused_rnn::sequence``); every program re-reads W_hh (and W_hr) from L2
  each step, through one SM's share of L2 bandwidth.
- ``"stepwise"``: a Python loop over time of one cuBLAS matmul plus the fused
  cell kernel per step; the matmul reads W_hh with the whole GPU's bandwidth,
  but every step pays host dispatch.

On AMD GPUs (ROCm) LSTM, and GRU and tanh RNN in fp64, take the stepwise path:
their sequence kernels spill scalar registers on gfx942 (LSTM in fp64 and with a
projection, GRU's inference kernel in fp64, the tanh RNN's forward in fp64
since tanh's fp64 polynomial; ``fused_rnn.compile_report``), so they are not
launched there.

The heuristic compares a cost model of one time step on each path and picks
the cheaper one. Its constants are estimates from H100 specifications, not
measurements (no GPU run has calibrated them yet; ``make bench`` times both
paths). With them the sequence kernel serves, for example, LSTM fp32 up to
hidden 568 and bf16 up to 804, GRU fp32 up to 656, RNN fp32 up to 1137.

``force_path`` overrides the choice (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# Estimates, not measurements: one program's (one SM's) L2 read bandwidth, the
# host cost of one stepwise step (matmul + cell op + state update, dispatched
# from Python), and the GPU's DRAM bandwidth.
L2_BYTES_PER_S_PER_PROGRAM = 1.0e11
STEPWISE_HOST_S_PER_STEP = 50e-6
DRAM_BYTES_PER_S = 3.0e12

_forced: str | None = None


def recurrent_weight_bytes(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> int:
    """Bytes of the weights read every time step: W_hh (G, R) and, with a projection, W_hr (R, H)."""
    state = proj_size if proj_size > 0 else hidden_size
    elements = GATES[mode] * hidden_size * state + (proj_size * hidden_size if proj_size > 0 else 0)
    return elements * dtype.itemsize


def step_costs(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype) -> tuple[float, float]:
    """Estimated seconds per time step on the sequence kernel and on the stepwise path."""
    w_bytes = recurrent_weight_bytes(mode, hidden_size, proj_size, dtype)
    return w_bytes / L2_BYTES_PER_S_PER_PROGRAM, STEPWISE_HOST_S_PER_STEP + w_bytes / DRAM_BYTES_PER_S


def _stepwise_on_rocm(mode: str, dtype: torch.dtype) -> bool:
    """Whether the sequence kernels of ``mode`` in ``dtype`` spill on AMD GPUs, so never run there (docstring)."""
    return mode == "LSTM" or (mode in ("GRU", "RNN_TANH") and dtype == torch.float64)


def on_rocm(device: torch.device) -> bool:
    """True for a GPU device of a ROCm build of torch (an AMD GPU)."""
    return device.type == "cuda" and torch.version.hip is not None


def choose_path(mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, rocm: bool = False) -> str:
    """The path for one layer, "sequence" or "stepwise" (module docstring); ``rocm`` for an AMD GPU."""
    if _forced is not None:
        return _forced
    if rocm and _stepwise_on_rocm(mode, dtype):
        return "stepwise"
    sequence_step, stepwise_step = step_costs(mode, hidden_size, proj_size, dtype)
    return "sequence" if sequence_step <= stepwise_step else "stepwise"


def explain_path(
    mode: str, hidden_size: int, proj_size: int, dtype: torch.dtype, rocm: bool = False
) -> tuple[str, str]:
    """The path for one layer and why: ("sequence" | "stepwise", reason)."""
    path = choose_path(mode, hidden_size, proj_size, dtype, rocm)
    if _forced is not None:
        return path, f"forced by fused_rnn.force_path({_forced!r})"
    if rocm and _stepwise_on_rocm(mode, dtype):
        return path, f"on AMD GPUs the {mode} sequence kernels spill registers in {dtype} (compile report)"
    w_bytes = recurrent_weight_bytes(mode, hidden_size, proj_size, dtype)
    sequence_step, stepwise_step = step_costs(mode, hidden_size, proj_size, dtype)
    return path, (
        f"recurrent weights {w_bytes / 2**20:.2f} MiB read per step: estimated {sequence_step * 1e6:.1f} us "
        f"per step in the sequence kernel against {stepwise_step * 1e6:.1f} us stepwise (unmeasured cost model)"
    )


@contextlib.contextmanager
def force_path(path: str | None) -> Iterator[None]:
    """Run every layer in the block on ``path`` ("sequence" or "stepwise"; None restores the heuristic)."""
    global _forced
    if path not in (None, "sequence", "stepwise"):
        raise ValueError(f"unknown path {path!r}")
    previous, _forced = _forced, path
    try:
        yield
    finally:
        _forced = previous
