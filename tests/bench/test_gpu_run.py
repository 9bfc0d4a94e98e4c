"""benchmarks/gpu_run.sh rehearsed on the CPU (REHEARSE=1): every stage runs its real command at tiny sizes and
writes its files, and the summary comes last. About a minute on 2 cores (the bitwise stage is half of it)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_run.sh"
BENCHMARKS = ["default", "flashrnn", "sweeps", "seq"]

pytestmark = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("timeout")), reason="gpu_run.sh needs bash and timeout"
)


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
    assert "bitwise: bitwise: 5 of 5 cases identical in one launch and step by step" in log, log
    for name in BENCHMARKS:
        data = json.loads((tmp_path / name / "bench.json").read_text())
        assert data["environment"]["triton_interpreter"], name
        rows = data["results"]
        assert rows and all(r["status"] in ("ok", "skipped") for r in rows), (name, rows)
        assert {"fused_rnn:sequence"} <= {r["impl"] for r in rows if r["status"] == "ok"}, name
        assert (tmp_path / name / "bench.csv").exists() and (tmp_path / name / "bench.md").exists()
        assert all((r["seq_len"], r["batch"]) != (100, 64) for r in rows), "tiny cases, not the real ones"
    forward = [r for r in json.loads((tmp_path / "default" / "bench.json").read_text())["results"]
               if r["impl"] == "fused_rnn:sequence" and r["mode"] == "forward" and r["status"] == "ok"]
    assert forward and all(r["us_per_step"] > 0 and r["predicted_us_per_step"] > 0 for r in forward)
    assert {r["sweep"] for r in json.loads((tmp_path / "seq" / "bench.json").read_text())["results"]} == {"seq"}
    summary = (tmp_path / "summary.txt").read_text()
    assert "interpreter timings" in summary and "lstm forward" in summary and "us/step (predicted)" in summary
    assert done.stdout.rstrip().endswith(summary.rstrip()), "the summary comes last"


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
