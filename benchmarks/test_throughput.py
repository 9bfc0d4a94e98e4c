"""One benchmark per (case, candidate): checked against the float64 reference first, then timed.

Save and compare runs with pytest-benchmark's tools (``--benchmark-autosave``,
``pytest-benchmark compare``); each result's extra_info holds the candidate,
its error against the reference, its Triton launches and the tokens per call.
"""

from __future__ import annotations

import pytest
import torch

from fused_rnn.bench.candidates import Unavailable, candidates
from fused_rnn.bench.problem import make_problem, tolerance
from fused_rnn.bench.run import Settings, check
from fused_rnn.kernels.launch import interpreting


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cpu" if interpreting() else "cuda")


@pytest.fixture(scope="session")
def problems(device):
    """The problem of a case, built once while consecutive tests share it."""
    last: dict = {}

    def get(case):
        if case not in last:
            last.clear()
            last[case] = make_problem(case, device)
        return last[case]

    return get


def test_throughput(benchmark, case, impl, problems, device):
    candidate = candidates(device).get(impl)
    if candidate is None:
        pytest.skip(f"{impl} does not exist on {device.type}")
    try:
        checked = check(problems(case), candidate, Settings())
    except Unavailable as why:
        pytest.skip(str(why))
    tol = tolerance(case.dtype, device)
    assert checked.max_rel_err <= tol, f"{candidate.label}: max_rel_err {checked.max_rel_err:.2e} > {tol:g}"
    assert checked.launches > 0 or not candidate.fused, "the fused kernels did not run"

    def call():
        checked.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.group = str(case)
    benchmark.extra_info.update(
        impl=candidate.label, max_rel_err=checked.max_rel_err, launches=checked.launches, tokens=case.tokens,
        interpreter=interpreting(),
    )
    benchmark.pedantic(call, rounds=3 if interpreting() else 20, warmup_rounds=1)
