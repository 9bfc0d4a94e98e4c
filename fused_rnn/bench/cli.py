"""``python -m fused_rnn.bench`` (also ``fused-rnn-bench``): fused_rnn against torch.nn and torch.compile.

Without options: the default case (T=100, B=64, input = hidden = 512, one
layer) for LSTM, GRU and RNN-tanh, forward and forward+backward, fp32, fp16
and bf16. Without a GPU the kernels run in Triton's interpreter on scaled-down
cases; the output says so. docs/benchmarks.md has the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import signal
import sys
from collections.abc import Callable

import torch

from ..kernels.launch import interpreting
from . import report
from .candidates import KEYS, Candidate, candidates
from .cases import (
    CELLS,
    DEFAULT,
    DEFAULT_CELLS,
    DTYPES,
    INTERPRETER_DIVISOR,
    MODES,
    SWEEPS,
    Case,
    expand,
    scaled_for_interpreter,
    unique,
)
from .run import QUICK, Row, Settings, run


def _choices(allowed: tuple[str, ...] | list[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated list of ``allowed`` values ("all" for every one)."""

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(allowed) if text == "all" else tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(allowed)} (comma-separated) or all")
        return values

    return parse


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fused_rnn.bench",
        description="Throughput of fused_rnn's LSTM/GRU/RNN against torch.nn (cuDNN, native) and torch.compile. "
        "Every candidate is checked against a float64 torch.nn reference before it is timed.",
    )
    what = p.add_argument_group("what to run (lists are comma-separated)")
    what.add_argument("--cell", type=_choices(CELLS), default=DEFAULT_CELLS, help="default: lstm,gru,rnn_tanh")
    what.add_argument("--mode", type=_choices(MODES), default=MODES, help="default: both")
    what.add_argument("--dtype", type=_choices(list(DTYPES)), default=tuple(DTYPES), help="default: fp32,fp16,bf16")
    what.add_argument("--impl", type=_choices(KEYS),
                      help="candidates; default: all that apply (--quick and the interpreter leave out compile)")
    what.add_argument("--sweep", type=_choices(list(SWEEPS)), default=(),
                      help=f"named sweeps around the case: {', '.join(SWEEPS)}")
    size = p.add_argument_group("the case")
    size.add_argument("--seq", type=int, default=DEFAULT.seq_len, help="sequence length T (default 100)")
    size.add_argument("--batch", type=int, default=DEFAULT.batch, help="batch B (default 64)")
    size.add_argument("--input", type=int, help="input size I (default: the hidden size)")
    size.add_argument("--hidden", type=int, default=DEFAULT.hidden_size, help="hidden size H (default 512)")
    size.add_argument("--layers", type=int, default=DEFAULT.num_layers, help="layers (default 1)")
    size.add_argument("--bidirectional", action="store_true")
    size.add_argument("--packed", action="store_true", help="PackedSequence input, lengths uniform in [T/3, T]")
    size.add_argument("--no-scale", action="store_true",
                      help="in Triton's interpreter, run the sizes as given instead of dividing T, B, I, H by 8")
    how = p.add_argument_group("how")
    how.add_argument("--quick", action="store_true", help="short timing, no torch.compile: a smoke run")
    how.add_argument("--compile-cap", type=float, default=Settings.compile_cap_s,
                     help="seconds torch.compile may take on its first call before it is skipped (default 60)")
    how.add_argument("--budget-s", type=float, help="start no new case after this many seconds")
    how.add_argument("--seed", type=int, default=0)
    out = p.add_argument_group("output files")
    out.add_argument("--out", type=pathlib.Path, help="directory for bench.json, bench.csv, bench.md and bench.png")
    out.add_argument("--json", type=pathlib.Path)
    out.add_argument("--csv", type=pathlib.Path)
    out.add_argument("--markdown", type=pathlib.Path)
    out.add_argument("--plot", type=pathlib.Path, help="PNG (needs matplotlib)")
    return p


def restart_in_interpreter(argv: list[str] | None, module: str = "fused_rnn.bench") -> None:
    """Start this command (``python -m module``) again with TRITON_INTERPRET=1.

    Triton picks the interpreter when a kernel is defined, that is when
    fused_rnn is imported, which ``python -m fused_rnn.bench`` has already done.
    """
    args = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, [sys.executable, "-m", module, *args], {**os.environ, "TRITON_INTERPRET": "1"})


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM (from timeout, say) ends the run like Ctrl-C: the finished cases are still reported and written."""
    raise KeyboardInterrupt(f"signal {signum}")


def _outputs(args: argparse.Namespace) -> dict[str, pathlib.Path | None]:
    """The files to write: --out DIR gives DIR/bench.{json,csv,md,png}; an explicit path wins."""
    default = {"json": "bench.json", "csv": "bench.csv", "markdown": "bench.md", "plot": "bench.png"}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    return {k: getattr(args, k) or (args.out / name if args.out else None) for k, name in default.items()}


def _write(paths: dict[str, pathlib.Path | None], env: dict[str, object], rows: list[Row]) -> list[pathlib.Path]:
    """Write the requested files; returns those written (a plot is not, without matplotlib: a message says so)."""
    writers = {
        "json": lambda p: report.write_json(p, env, rows),
        "csv": lambda p: report.write_csv(p, rows),
        "markdown": lambda p: p.write_text(report.markdown(env, rows)),
    }
    written = []
    for kind, path in paths.items():
        if path is None:
            continue
        if kind == "plot":
            why_not = report.plot(path, env, rows)
            if why_not:
                print(f"--plot: {why_not}", file=sys.stderr)
                continue
        else:
            writers[kind](path)
        written.append(path)
    return written


def _plan(
    args: argparse.Namespace, device: torch.device, interpreter: bool
) -> tuple[list[Case], list[Candidate], list[str]]:
    """The cases, the candidates, and notes for the reader about both."""
    base = Case(seq_len=args.seq, batch=args.batch, input_size=args.input or args.hidden, hidden_size=args.hidden,
                num_layers=args.layers, bidirectional=args.bidirectional, packed=args.packed)
    cases = expand(base, args.cell, args.mode, args.dtype, args.sweep)
    notes = []
    if interpreter:
        notes.append(report.INTERPRETER_WARNING + "; the correctness checks and launch counts mean what they say")
        if not args.no_scale:
            cases = unique([scaled_for_interpreter(c) for c in cases])
            small = scaled_for_interpreter(base)
            notes.append(f"cases scaled down for the interpreter: {base.shape} -> {small.shape} "
                         f"(T, B, I, H divided by {INTERPRETER_DIVISOR}, rounded up; --no-scale keeps the sizes)")
    available = candidates(device)
    if "cudnn" not in available:
        notes.append(f"no cuDNN here: speedup_vs_cudnn stays empty; the torch baseline is {available['native'].label}")
    leave_out_compile = not args.impl and (args.quick or interpreter)
    impls = args.impl or tuple(k for k in available if not (leave_out_compile and k == "compile"))
    if leave_out_compile:
        why = "--quick" if args.quick else "the interpreter (a CPU compilation says nothing about a GPU)"
        notes.append(f"torch.compile left out for {why}: it compiles for tens of seconds per case; --impl adds it")
    missing = [k for k in impls if k not in available]
    if missing:
        notes.append(f"not available on this machine: {', '.join(missing)}")
    return cases, [available[k] for k in impls if k in available], notes


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 1 when a check failed or a fused_rnn candidate raised, else 0."""
    args = parser().parse_args(argv)
    if not interpreting() and not torch.cuda.is_available():
        restart_in_interpreter(argv)
    interpreter = interpreting()
    device = torch.device("cpu" if interpreter else "cuda")
    cases, chosen, notes = _plan(args, device, interpreter)
    settings = dataclasses.replace(QUICK if args.quick else Settings(), compile_cap_s=args.compile_cap)
    env = report.environment(device, interpreter)

    print(report.environment_line(env))
    for note in notes:
        print(f"note: {note}")
    print(f"{len(cases)} cases x {len(chosen)} candidates: {', '.join(c.label for c in chosen)}", flush=True)
    progress = report.Progress(len({dataclasses.replace(c, sweep="") for c in cases}) * len(chosen))
    signal.signal(signal.SIGTERM, _interrupt)
    rows, stopped = run(cases, chosen, device, settings, args.seed, args.budget_s, progress)
    progress.close()
    print(report.terminal_table(rows, color=sys.stdout.isatty() and "NO_COLOR" not in os.environ))
    print("\nSummary (fastest fused_rnn path per case)")
    print(report.summary_table(rows))
    if stopped:
        print(f"stopped early: {stopped}")
    written = _write(_outputs(args), env, rows)
    if written:
        print("wrote " + ", ".join(map(str, written)))
    broken = [r for r in rows if r["status"] == "failed" or (r["status"] == "error" and r["impl"].startswith("fused"))]
    return 1 if broken else 0
