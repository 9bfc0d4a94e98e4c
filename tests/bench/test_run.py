"""Check-then-time: failed checks are reported and never timed, errors and skips are reported, launches counted."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fused_rnn.bench.candidates import Candidate, Runner, Unavailable, candidates
from fused_rnn.bench.cases import Case
from fused_rnn.bench.problem import TORCH_CLASSES, copy_module, module_forward
from fused_rnn.bench.run import QUICK, add_speedups, run

TINY = Case(cell="gru", seq_len=4, batch=2, input_size=3, hidden_size=4)


@pytest.fixture
def dev(device) -> torch.device:
    """Where the kernels run (tests/conftest.py's device), as a torch.device."""
    return torch.device(device)


def _scaled_weights(problem, compile_cap_s):
    """torch.nn with every weight 10% too large: a wrong implementation."""
    module = copy_module(problem, TORCH_CLASSES[problem.case.cell])
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.1)
    return Runner(lambda inputs: module_forward(module, inputs), list(module.parameters()))


def _raises(problem, compile_cap_s):
    def forward(inputs):
        raise RuntimeError("kernel exploded\nsecond line")

    return Runner(forward, [])


def _unavailable(problem, compile_cap_s):
    raise Unavailable("not for this case")


def _no_launch(problem, compile_cap_s):
    """A 'fused' candidate that silently runs torch.nn."""
    module = copy_module(problem, TORCH_CLASSES[problem.case.cell])
    return Runner(lambda inputs: module_forward(module, inputs), list(module.parameters()))


def test_wrong_candidates_are_reported_and_not_timed(dev):
    torch_nn = candidates(dev)["native"]
    injected = [
        Candidate("wrong", "wrong", False, _scaled_weights),
        Candidate("raises", "raises", False, _raises),
        Candidate("na", "na", False, _unavailable),
        Candidate("fake", "fused_rnn:fake", True, _no_launch),
    ]
    rows, stopped = run([TINY], [torch_nn, *injected], dev, QUICK)
    assert stopped == ""
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl[torch_nn.label]["status"] == "ok" and by_impl[torch_nn.label]["median_ms"] > 0
    wrong = by_impl["wrong"]
    assert wrong["status"] == "failed" and wrong["max_rel_err"] > wrong["tolerance"]
    assert wrong["median_ms"] is None and wrong["tokens_per_s"] is None, "a failed candidate is never timed"
    assert by_impl["raises"]["status"] == "error" and by_impl["raises"]["note"] == "RuntimeError: kernel exploded"
    assert by_impl["na"]["status"] == "skipped" and by_impl["na"]["note"] == "not for this case"
    assert by_impl["fused_rnn:fake"]["status"] == "failed" and "no Triton launch" in by_impl["fused_rnn:fake"]["note"]


def test_fused_launches_do_not_grow_with_the_sequence_length(dev):
    fused = [candidates(dev)[k] for k in ("sequence", "stepwise")]
    cases = [dataclasses.replace(TINY, seq_len=t) for t in (3, 6)]
    rows, _ = run(cases, fused, dev, QUICK)
    launches = {(r["impl"], r["seq_len"]): r["launches"] for r in rows}
    assert all(r["status"] == "ok" and r["max_rel_err"] <= r["tolerance"] for r in rows)
    assert launches["fused_rnn:sequence", 3] == launches["fused_rnn:sequence", 6] == 2, "one forward, one backward"
    assert launches["fused_rnn:stepwise", 6] == 2 * launches["fused_rnn:stepwise", 3]
    chosen = {r["impl"] for r in rows if r["note"] == "dispatcher's choice"}
    assert chosen == {"fused_rnn:sequence"}, "a small GRU takes the sequence path"


def test_compilation_past_its_cap_is_skipped(dev):
    compiled = candidates(dev)["compile"]
    rows, _ = run([TINY], [compiled], dev, dataclasses.replace(QUICK, compile_cap_s=0.01))
    (row,) = rows
    assert row["status"] == "skipped" and "0.01 s cap" in row["note"] and row["median_ms"] is None


def test_a_repeated_case_runs_once(dev):
    calls = []

    def counted(problem, compile_cap_s):
        calls.append(problem.case)
        return _no_launch(problem, compile_cap_s)

    twice = [dataclasses.replace(TINY, sweep="batch"), dataclasses.replace(TINY, sweep="packed")]
    rows, _ = run(twice, [Candidate("c", "c", False, counted)], dev, QUICK)
    assert len(calls) == 1 and [r["sweep"] for r in rows] == ["batch", "packed"]
    assert [r["point"] for r in rows] == ["2", "padded"]


def test_budget_stops_before_new_cases(dev):
    rows, stopped = run([TINY, TINY], [candidates(dev)["native"]], dev, QUICK, budget_s=0)
    assert rows == [] and stopped == "the 0 s budget ran out after 0 of 2 cases"


def test_an_interrupt_keeps_the_finished_cases(dev):
    def interrupt(problem, compile_cap_s):
        if problem.case.seq_len == 3:
            raise KeyboardInterrupt
        return _no_launch(problem, compile_cap_s)

    cases = [TINY, dataclasses.replace(TINY, seq_len=3), TINY]
    rows, stopped = run(cases, [Candidate("c", "c", False, interrupt)], dev, QUICK)
    assert len(rows) == 1 and rows[0]["seq_len"] == 4 and stopped == "interrupted after 1 of 3 cases"


@pytest.mark.parametrize("cudnn_ms, expect", [(2.0, [1.0, 4.0, None]), (None, [None, None, None])])
def test_speedup_against_cudnn(cudnn_ms, expect):
    rows = [
        {"impl": "torch.nn:cudnn", "median_ms": cudnn_ms},
        {"impl": "fused_rnn:sequence", "median_ms": 0.5},
        {"impl": "fused_rnn:stepwise", "median_ms": None},
    ]
    add_speedups(rows)
    assert [r["speedup_vs_cudnn"] for r in rows] == ([None, None, None] if cudnn_ms is None else expect)
