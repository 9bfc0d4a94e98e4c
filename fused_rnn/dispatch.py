"""Which implementation runs a recurrent layer: a pure function of the sizes, dtype and device.

- ``"sequence"``: one Triton launch per layer and direction loops over time
  (``fused_rnn::sequence``). The default.
- ``"stepwise"``: a Python loop over time of one torch matmul plus the fused
  cell kernel per step. Used for LSTM with ``proj_size > 0``, whose projection
  the sequence kernel does not do yet.

``force_path`` overrides the choice (for tests and benchmarks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_forced: str | None = None


def choose_path(mode: str, hidden_size: int, proj_size: int, batch: int, dtype: torch.dtype, device: torch.device) -> str:
    """The path for one layer: "sequence" or "stepwise" (see the module docstring)."""
    if proj_size > 0:
        return "stepwise"
    if _forced is not None:
        return _forced
    return "sequence"


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
