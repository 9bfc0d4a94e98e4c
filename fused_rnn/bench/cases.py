"""Benchmark cases: the default case, the named sweeps, and their scaled-down interpreter versions.

The one source of truth for the command line (``python -m fused_rnn.bench``)
and the pytest-benchmark suite (``benchmarks/``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
DEFAULT_CELLS = ("lstm", "gru", "rnn_tanh")
MODES = ("forward", "forward+backward")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Without a GPU the kernels run in Triton's interpreter: T, B, I and H are divided by this (rounded up).
INTERPRETER_DIVISOR = 8


@dataclass(frozen=True)
class Case:
    """One benchmark configuration. Shapes: input (T, B, I), states (layers * directions, B, H).

    ``sweep`` names the sweep the case belongs to (empty for a single case).
    """

    cell: str = "lstm"
    mode: str = "forward+backward"
    dtype: str = "fp32"
    seq_len: int = 100
    batch: int = 64
    input_size: int = 512
    hidden_size: int = 512
    num_layers: int = 1
    bidirectional: bool = False
    packed: bool = False
    sweep: str = ""

    @property
    def tokens(self) -> int:
        """Tokens per call, T * B (padded positions of a packed batch included)."""
        return self.seq_len * self.batch

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def shape(self) -> str:
        """The sizes, e.g. "T100 B64 I512 H512 L1 bi packed"."""
        text = f"T{self.seq_len} B{self.batch} I{self.input_size} H{self.hidden_size} L{self.num_layers}"
        return text + " bi" * self.bidirectional + " packed" * self.packed

    def __str__(self) -> str:
        return f"{self.cell}-{self.mode}-{self.dtype}-{self.shape.replace(' ', '-')}"


DEFAULT = Case()


@dataclass(frozen=True)
class Sweep:
    """A named sweep: the fields each point replaces in the base case, and the x-axis label of a case."""

    axis: str
    points: tuple[dict[str, object], ...]
    label: Callable[[Case], str]


def _powers(lo: int, hi: int, factor: int = 2) -> tuple[int, ...]:
    out = [lo]
    while out[-1] * factor <= hi:
        out.append(out[-1] * factor)
    return tuple(out)


# (layers, bidirectional) points of the layers sweep.
_LAYERS = ((1, False), (2, False), (4, False), (1, True), (2, True))

SWEEPS: dict[str, Sweep] = {
    "batch": Sweep("batch", tuple({"batch": b} for b in _powers(1, 256)), lambda c: str(c.batch)),
    "hidden": Sweep(
        "input = hidden",
        tuple({"input_size": h, "hidden_size": h} for h in _powers(64, 2048)),
        lambda c: str(c.hidden_size),
    ),
    "seq": Sweep("sequence length", tuple({"seq_len": t} for t in _powers(16, 4096, 4)), lambda c: str(c.seq_len)),
    "layers": Sweep(
        "layers, directions",
        tuple({"num_layers": n, "bidirectional": bi} for n, bi in _LAYERS),
        lambda c: f"L{c.num_layers}" + " bi" * c.bidirectional,
    ),
    "packed": Sweep(
        "input (packed: lengths uniform in [T/3, T])",
        ({"packed": False}, {"packed": True}),
        lambda c: "packed" if c.packed else "padded",
    ),
}


def point(case: Case) -> str:
    """The case's value on its sweep's axis ("" for a single case)."""
    return SWEEPS[case.sweep].label(case) if case.sweep else ""


def expand(base: Case, cells, modes, dtypes, sweeps=()) -> list[Case]:
    """Every (cell, mode, dtype) for the base case, or for each point of each named sweep."""
    shapes = [base] if not sweeps else [
        dataclasses.replace(base, sweep=name, **fields) for name in sweeps for fields in SWEEPS[name].points
    ]
    return [
        dataclasses.replace(shape, cell=cell, mode=mode, dtype=dtype)
        for cell in cells
        for mode in modes
        for dtype in dtypes
        for shape in shapes
    ]


def scaled_for_interpreter(case: Case) -> Case:
    """The case with T, B, I and H divided by INTERPRETER_DIVISOR (rounded up): seconds per call in the interpreter."""

    def down(n: int) -> int:
        return -(-n // INTERPRETER_DIVISOR)

    return dataclasses.replace(
        case, seq_len=down(case.seq_len), batch=down(case.batch),
        input_size=down(case.input_size), hidden_size=down(case.hidden_size),
    )


def unique(cases: list[Case]) -> list[Case]:
    """The cases in order, without repeats (scaling can map two sweep points to one)."""
    return list(dict.fromkeys(cases))


def standard_cases(sweeps: tuple[str, ...] = (), interpreter: bool = False) -> list[Case]:
    """The default case (or the named sweeps around it) for the default cells, both modes and every dtype.

    Scaled down when the kernels run in the interpreter: then, without
    sweeps, this is the quick subset that ``--quick`` and CI run.
    """
    cases = expand(DEFAULT, DEFAULT_CELLS, MODES, tuple(DTYPES), sweeps)
    return unique([scaled_for_interpreter(c) for c in cases]) if interpreter else cases
