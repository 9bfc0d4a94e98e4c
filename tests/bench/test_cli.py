"""The benchmark command end to end on tiny cases, and the pytest-benchmark suite's quick subset (fp32)."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import torch

from fused_rnn.bench import summary
from fused_rnn.bench.candidates import candidates
from fused_rnn.bench.cli import main
from fused_rnn.kernels.launch import interpreting

ROOT = pathlib.Path(__file__).resolve().parents[2]
TINY = ["--seq", "5", "--batch", "3", "--input", "4", "--hidden", "8", "--no-scale"]


def test_cli_writes_checked_results(tmp_path, capsys, device):
    out = tmp_path / "results"
    status = main([*TINY, "--cell", "lstm", "--mode", "forward+backward", "--dtype", "fp32,bf16",
                   "--impl", "sequence,stepwise,native", "--packed", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    assert ("interpreter timings, not performance" in printed) == interpreting()
    data = json.loads((out / "bench.json").read_text())
    assert data["environment"]["triton_interpreter"] == interpreting()
    rows = data["results"]
    assert len(rows) == 2 * 3
    native = candidates(torch.device(device))["native"].label
    assert {r["impl"] for r in rows} == {"fused_rnn:sequence", "fused_rnn:stepwise", native}
    for r in rows:
        assert r["status"] == "ok" and r["max_rel_err"] <= r["tolerance"], r
        assert r["median_ms"] > 0 and r["tokens_per_s"] > 0 and r["packed"] and r["speedup_vs_cudnn"] is None
    assert {r["launches"] for r in rows if r["impl"] == "fused_rnn:sequence"} == {2}
    assert {r["launches"] for r in rows if r["impl"] == "fused_rnn:stepwise"} == {10}
    assert len(list(csv.DictReader((out / "bench.csv").open()))) == len(rows)
    assert (out / "bench.md").read_text().count("| fused_rnn:sequence |") == 2


def test_module_entry_point_restarts_in_the_interpreter(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "fused_rnn.bench", *TINY, "--cell", "gru", "--mode", "forward", "--dtype", "fp16",
         "--impl", "sequence", "--json", str(tmp_path / "r.json")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((tmp_path / "r.json").read_text())["results"]
    assert row["impl"] == "fused_rnn:sequence" and row["status"] == "ok" and row["launches"] == 1


def test_summary_of_saved_results(tmp_path, capsys):
    main([*TINY, "--cell", "rnn_relu", "--mode", "forward", "--dtype", "fp32", "--impl", "sequence,native",
          "--json", str(tmp_path / "r.json")])
    capsys.readouterr()
    assert summary.main([str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert ("interpreter timings" in lines[0]) == interpreting() and len(lines) == 3
    assert lines[2].startswith("rnn_relu forward fp32  T=5 B=3 I=4 H=8 L=1") and "(sequence)" in lines[2]


def test_pytest_benchmark_suite_runs_its_quick_subset():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-disable", "-q", "-p", "no:cacheprovider",
         "-k", "fp32", "--bench-impl", "sequence,stepwise,native"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "18 passed" in done.stdout, done.stdout[-1000:]
