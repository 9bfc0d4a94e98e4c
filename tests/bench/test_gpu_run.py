"""benchmarks/gpu_run.sh rehearsed on the CPU (REHEARSE=1): every stage runs its real command at tiny sizes and
writes its files, and the summary comes last; the benchmark rows' predictions are the cost model's, and the bitwise
stage slows the last hidden slice as the kernels' unit test does. About a minute and a half on 2 cores (the bitwise
stage is half of it)."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import interpreter_threads
import pytest
import torch

from fused_rnn.bench.cases import DTYPES
from fused_rnn.dispatch import device_sms, predicted_steps

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
BENCHMARKS = ["default", "flashrnn", "sweeps", "seq"]

pytestmark = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("timeout")), reason="gpu_run.sh needs bash and timeout"
)


# The unit test of the one launch against one launch per step and phase, in the interpreter's threads.
UNIT_TEST = (ROOT / "tests" / "kernels" / "test_sequence_kernels.py",
             "test_one_launch_with_barriers_equals_one_launch_per_step")


def _unit_test_straggler_s() -> float:
    """The ``straggler_s`` that UNIT_TEST gives ``concurrent_programs`` (read from its source)."""
    path, name = UNIT_TEST
    test = next(n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef) and n.name == name)
    found = [ast.literal_eval(k.value) for n in ast.walk(test)
             if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "concurrent_programs"
             for k in n.keywords if k.arg == "straggler_s"]
    assert len(found) == 1 and found[0] > 0, f"{name} should give one straggler_s > 0, found {found}"
    return found[0]


def _predicted_us(row: dict) -> float | None:
    """The cost model's microseconds per forward step for a fused row's sizes, over its layers and directions
    (``predicted_steps`` on the CPU's reference SMs, per step of a layer's directions: the dispatcher's sequence
    plan is the cheapest of the sequence plans it lists); None for other candidates and for forward+backward (not
    modelled)."""
    if row["mode"] != "forward" or row["impl"] not in ("fused_rnn:sequence", "fused_rnn:stepwise"):
        return None
    steps = predicted_steps(row["cell"].upper(), row["batch"], row["hidden_size"], 0, DTYPES[row["dtype"]],
                            sms=device_sms(torch.device("cpu")), directions=2 if row["bidirectional"] else 1)
    if row["impl"] == "fused_rnn:sequence":
        seconds = min(s for path, (s, _) in steps.items() if path != "stepwise")
    else:
        seconds = steps["stepwise"][0]
    return seconds * row["num_layers"] * 1e6


def _run(out: pathlib.Path, **env: str) -> subprocess.CompletedProcess:
    drop = ("OUT", "TRITON_INTERPRET", "REHEARSE", "REHEARSE_BUDGET_S", "INSTALL", "TESTS")
    environ = {k: v for k, v in os.environ.items() if k not in drop}
    return subprocess.run(
        ["bash", str(SCRIPT), str(out)], env=environ | {"PYTHON": sys.executable} | env,
        capture_output=True, text=True, timeout=600,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the real run is the check (and it runs this suite)")
def test_rehearsal_runs_every_stage(tmp_path):
    # INSTALL=checkout: no pip install into the environment running this test; the fallback a GPU machine without
    # the wheel package takes (running from the checkout) is the path exercised.
    done = _run(tmp_path, REHEARSE="1", INSTALL="checkout", REHEARSE_BUDGET_S="0.5")
    log = (tmp_path / "gpu_run.log").read_text()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "REHEARSAL" in log and "torch sees no GPU" not in log
    assert "install: running from the checkout (INSTALL=checkout)" in log
    assert f"fused_rnn imports from {tmp_path}/pythonpath/fused_rnn/__init__.py" in log, log
    for name in ["bitwise", "tests", *BENCHMARKS]:
        assert f"{name}: exit status 0" in log, log
        assert (tmp_path / f"{name}.log").stat().st_size > 0
    assert re.search(r"tests: \d+ passed", log), "the tests stage's last line is logged"
    # every cell streaming W_hh, and weight-stationary except the LSTM with a projection
    assert "bitwise: bitwise: 9 of 9 cases identical in one launch and step by step" in log, log
    straggler = f"each store of the last hidden slice of a batch tile {_unit_test_straggler_s()} s late"
    assert straggler in (tmp_path / "bitwise.log").read_text()
    for name in BENCHMARKS:
        data = json.loads((tmp_path / name / "bench.json").read_text())
        assert data["environment"]["triton_interpreter"], name
        rows = data["results"]
        assert rows and all(r["status"] in ("ok", "skipped") for r in rows), (name, rows)
        assert {"fused_rnn:sequence"} <= {r["impl"] for r in rows if r["status"] == "ok"}, name
        assert (tmp_path / name / "bench.csv").exists() and (tmp_path / name / "bench.md").exists()
        assert all((r["seq_len"], r["batch"]) != (100, 64) for r in rows), "tiny cases, not the real ones"
        for r in rows:
            expected = _predicted_us(r)
            got = r["predicted_us_per_step"]
            assert got is None if expected is None else got == pytest.approx(expected, rel=1e-12), (name, r)
    forward = [r for r in json.loads((tmp_path / "default" / "bench.json").read_text())["results"]
               if r["impl"] == "fused_rnn:sequence" and r["mode"] == "forward" and r["status"] == "ok"]
    assert forward and all(r["us_per_step"] > 0 and r["predicted_us_per_step"] > 0 for r in forward)
    assert {r["sweep"] for r in json.loads((tmp_path / "seq" / "bench.json").read_text())["results"]} == {"seq"}
    # FlashRNN as the peer: its PyTorch backend stands in on the CPU, on the same tensors as fused_rnn.flashrnn
    assert "peers: exit status 0" in log, log
    peers = json.loads((tmp_path / "peers" / "peers.json").read_text())["results"]
    assert {r["candidate"] for r in peers if r["median_ms"] is not None} == {"fused_rnn", "flashrnn:vanilla"}, peers
    assert all(r["rel_err"] < 5e-2 for r in peers), peers  # bf16 against FlashRNN's fp64
    # haste's cells against the plain-torch loop: the IndRNN in one launch without a barrier
    assert "loops: exit status 0" in log, log
    loops = json.loads((tmp_path / "loops" / "loops.json").read_text())
    assert {(r["candidate"], r["launches"], r["barriers_per_step"]) for r in loops} == {
        ("fused_rnn", 1, 0), ("torch loop", None, None)}, loops
    summary = (tmp_path / "summary.txt").read_text()
    assert "interpreter timings" in summary and "lstm forward" in summary and "us/step (predicted)" in summary
    assert done.stdout.rstrip().endswith(summary.rstrip()), "the summary comes last"


def test_bitwise_stage_straggles_like_the_unit_test(monkeypatch):
    """In the interpreter benchmarks/bitwise.py runs the one launch in threads with the unit test's straggling
    last slice, so a barrier that opens before that slice arrives gives different bits there too."""
    spec = importlib.util.spec_from_file_location("bitwise", ROOT / "benchmarks" / "bitwise.py")
    bitwise = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bitwise)
    calls = []

    def recorded(**kwargs):
        calls.append(kwargs)
        return contextlib.nullcontext()

    monkeypatch.setattr(interpreter_threads, "concurrent_programs", recorded)
    with bitwise.concurrent():
        pass
    assert calls == [{"straggler_s": _unit_test_straggler_s()}]


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the real run would start")
def test_real_run_stops_without_a_gpu(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 1
    assert "torch sees no GPU" in (tmp_path / "gpu_run.log").read_text()
    assert not (tmp_path / "install.log").exists(), "nothing installed"


def test_usage_without_an_output_directory():
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "OUT"})
    assert done.returncode == 2 and "usage:" in done.stderr
