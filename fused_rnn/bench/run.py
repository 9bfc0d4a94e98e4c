"""Check every candidate against the float64 reference, then time those that pass: one result row each.

A row's status is "ok" (checked and timed), "failed" (outside the tolerance,
or a fused candidate that launched no Triton kernel: never timed), "skipped"
(the candidate does not apply, or its compilation passed the cap; the note
says why) or "error" (it raised; the note has the message).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..dispatch import device_shared, device_sms, layer_step_seconds, sequence_plan, stepwise_step_seconds
from ..kernels.launch import count_launches
from .candidates import Candidate, Unavailable, is_cudnn
from .cases import Case, point
from .problem import Problem, make_problem, make_step, max_rel_err, tolerance
from .timing import gpu_kernels, measure, peak_memory, time_limit

# A result row: FIELDS and their values (None where not measured).
Row = dict[str, object]
# The columns of a result row, in order.
FIELDS = (
    "cell", "mode", "dtype", "seq_len", "batch", "input_size", "hidden_size", "num_layers", "bidirectional", "packed",
    "impl", "median_ms", "p20_ms", "p80_ms", "tokens_per_s", "speedup_vs_cudnn", "peak_mem_bytes", "launches",
    "gpu_kernels", "max_rel_err", "tolerance", "status", "note", "sweep", "point", "us_per_step",
    "predicted_us_per_step",
)


@dataclass(frozen=True)
class Settings:
    """do_bench's warm-up and repetition budgets (ms), and the cap on torch.compile's first call (s)."""

    warmup_ms: float = 25.0
    rep_ms: float = 100.0
    compile_cap_s: float = 60.0


QUICK = Settings(warmup_ms=5.0, rep_ms=20.0)


@dataclass
class Checked:
    """A candidate that ran once: its timed call, error against the reference, Triton launches, and a note
    (the dispatcher's choice among fused paths, or the compilation time of a candidate that compiles)."""

    step: Callable[[], list[Tensor]]
    max_rel_err: float
    launches: int
    note: str


def check(problem: Problem, candidate: Candidate, settings: Settings) -> Checked:
    """Build ``candidate`` and run its call once against the reference.

    Raises Unavailable when it does not apply to the case, or when its first
    call (torch.compile's compilation) runs past its cap.
    """
    runner = candidate.build(problem, settings.compile_cap_s)
    step = make_step(runner.forward, problem.inputs, runner.params, problem.case.mode, problem.dy)
    start = time.perf_counter()
    try:
        with time_limit(runner.first_call_cap_s) as limit, count_launches() as launches:
            err = max_rel_err(step(), problem.reference)
    except Exception:
        if not limit.expired:
            raise
    # Also past the cap when the timeout was raised inside code that caught it and went on.
    if limit.expired:
        torch._dynamo.reset()
        raise Unavailable(f"compilation ran past the {runner.first_call_cap_s:g} s cap")
    note = runner.note
    if runner.first_call_cap_s is not None:
        note = f"first call (compilation) {time.perf_counter() - start:.1f} s"
    return Checked(step, err, launches.total, note)


def predicted_us_per_step(case: Case, label: str, device: torch.device) -> float | None:
    """The dispatcher's cost model of one forward time step of a fused path, over every layer and direction
    (an estimate, ``fused_rnn.dispatch``); None for other candidates and for forward+backward (not modelled)."""
    if case.mode != "forward" or label not in ("fused_rnn:sequence", "fused_rnn:stepwise"):
        return None
    mode, dtype, sms, shared = case.cell.upper(), case.torch_dtype, device_sms(device), device_shared(device)
    directions = 2 if case.bidirectional else 1
    if label == "fused_rnn:sequence":  # both directions in one launch, or one a launch, as the plan says
        plan = sequence_plan(mode, case.batch, case.hidden_size, 0, dtype, sms, shared=shared, directions=directions)
        step = layer_step_seconds(mode, case.batch, case.hidden_size, 0, dtype, plan, sms, directions)
    else:
        step = directions * stepwise_step_seconds(mode, case.hidden_size, 0, dtype)
    return step * case.num_layers * 1e6


def _row(case: Case, label: str, device: torch.device) -> Row:
    fields = {f.name: getattr(case, f.name) for f in dataclasses.fields(case)}
    row = dict.fromkeys(FIELDS)
    row.update(fields, impl=label, tolerance=tolerance(case.dtype, device), note="", point=point(case),
               predicted_us_per_step=predicted_us_per_step(case, label, device))
    return row


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def run_candidate(problem: Problem, candidate: Candidate, settings: Settings, device: torch.device) -> Row:
    """One result row: check the candidate, then, if it passed, time it, measure its memory and count its kernels."""
    row = _row(problem.case, candidate.label, device)
    try:
        checked = check(problem, candidate, settings)
    except Unavailable as why:
        return row | {"status": "skipped", "note": str(why)}
    except Exception as error:  # a broken candidate is reported, and the other candidates still run
        return row | {"status": "error", "note": _first_line(error)}
    row["max_rel_err"] = checked.max_rel_err
    if candidate.fused and checked.launches == 0:
        return row | {"status": "failed", "note": "no Triton launch: the fused kernels did not run"}
    if checked.max_rel_err > row["tolerance"]:
        return row | {"status": "failed", "note": f"max_rel_err above the {problem.case.dtype} tolerance; not timed"}
    try:
        timing = measure(checked.step, device, settings.warmup_ms, settings.rep_ms)
        peak = peak_memory(checked.step, device)
    except Exception as error:
        return row | {"status": "error", "note": _first_line(error)}
    note = checked.note
    try:
        kernels = gpu_kernels(checked.step, device)
    except Exception as error:  # the profiler's count is extra: the timing stands without it
        kernels, note = None, "; ".join(filter(None, [note, f"no kernel count: {_first_line(error)}"]))
    return row | {
        "median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
        "tokens_per_s": problem.case.tokens / (timing.median_ms / 1e3), "peak_mem_bytes": peak,
        "us_per_step": timing.median_ms * 1e3 / problem.case.seq_len,
        "launches": checked.launches if candidate.fused else kernels, "gpu_kernels": kernels,
        "status": "ok", "note": note,
    }


def add_speedups(rows: list[Row]) -> None:
    """speedup_vs_cudnn = cuDNN's median / the row's median, for one case's rows; None without a timed cuDNN row."""
    base = next((r["median_ms"] for r in rows if is_cudnn(r["impl"]) and r["median_ms"]), None)
    for r in rows:
        r["speedup_vs_cudnn"] = base / r["median_ms"] if base and r["median_ms"] else None


def run(
    cases: list[Case],
    candidates: list[Candidate],
    device: torch.device,
    settings: Settings,
    seed: int = 0,
    budget_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[list[Row], str]:
    """Rows for every case and candidate, and why the run stopped early ("" when it did not).

    A case that repeats (the same sizes in two sweeps) is run once. No new
    case starts after ``budget_s`` seconds; KeyboardInterrupt (Ctrl-C, or
    SIGTERM through the command line) ends the run with the finished cases.
    ``progress`` is called once per candidate run, with a description.
    """
    start = time.perf_counter()
    rows: list[Row] = []
    done: dict[Case, list[Row]] = {}
    for n, case in enumerate(cases):
        if budget_s is not None and time.perf_counter() - start > budget_s:
            return rows, f"the {budget_s:g} s budget ran out after {n} of {len(cases)} cases"
        key = dataclasses.replace(case, sweep="")
        try:
            if key not in done:
                done[key] = _run_case(case, candidates, device, settings, seed, progress)
        except KeyboardInterrupt:
            return rows, f"interrupted after {n} of {len(cases)} cases"
        rows += [r | {"sweep": case.sweep, "point": point(case)} for r in done[key]]
    return rows, ""


def _run_case(
    case: Case,
    candidates: list[Candidate],
    device: torch.device,
    settings: Settings,
    seed: int,
    progress: Callable[[str], None] | None,
) -> list[Row]:
    problem = make_problem(case, device, seed)
    rows = []
    for candidate in candidates:
        rows.append(run_candidate(problem, candidate, settings, device))
        if progress:
            progress(f"{case.cell} {case.mode} {case.dtype} {case.shape} {candidate.label}")
    add_speedups(rows)
    del problem
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows
