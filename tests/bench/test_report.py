"""The result files and tables: JSON, CSV, markdown, the terminal tables, and the plot with or without matplotlib."""

from __future__ import annotations

import csv
import json
import math
import sys

import torch

from fused_rnn.bench import report
from fused_rnn.bench.run import FIELDS

ENV = report.environment(torch.device("cpu"), interpreter=True)


def _row(impl: str, median_ms: float | None, speedup: float | None = None, **extra) -> dict:
    row = dict.fromkeys(FIELDS)
    row.update(
        cell="lstm", mode="forward", dtype="fp16", seq_len=10, batch=4, input_size=8, hidden_size=8, num_layers=1,
        bidirectional=False, packed=True, impl=impl, median_ms=median_ms, max_rel_err=1e-3, tolerance=1e-2,
        status="ok", note="", sweep="", point="",
    )
    if median_ms is not None:
        row.update(p20_ms=median_ms * 0.9, p80_ms=median_ms * 1.1, tokens_per_s=40 / (median_ms / 1e3),
                   speedup_vs_cudnn=speedup)
    return row | extra


ROWS = [
    _row("torch.nn:cudnn", 2.0, 1.0),
    _row("fused_rnn:sequence", 0.5, 4.0, launches=1),
    _row("fused_rnn:stepwise", None, max_rel_err=math.inf, status="failed", note="max_rel_err above tolerance"),
]


def test_environment_says_where_it_ran():
    for key in ("device", "torch", "triton", "python", "git_commit", "date", "triton_interpreter", "driver", "cuda"):
        assert key in ENV
    assert ENV["triton_interpreter"] is True and ENV["cuda"] is None
    assert "interpreter timings, not performance" in report.environment_line(ENV)


def test_json(tmp_path):
    path = tmp_path / "r.json"
    report.write_json(path, ENV, ROWS)
    data = json.loads(path.read_text())
    assert set(data) == {"environment", "results"}
    assert [r["impl"] for r in data["results"]] == [r["impl"] for r in ROWS]
    assert data["results"][2]["max_rel_err"] is None, "inf is written as null"
    assert list(data["results"][0])[:11] == list(FIELDS[:11])


def test_csv(tmp_path):
    path = tmp_path / "r.csv"
    report.write_csv(path, ROWS)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == list(FIELDS)
    assert rows[1]["speedup_vs_cudnn"] == "4.0" and rows[2]["median_ms"] == ""


def test_markdown_and_tables():
    text = report.markdown(ENV, ROWS)
    assert "interpreter timings, not performance" in text
    assert "| **4.00x** |" in text and "| 1.00x |" not in text.replace("**1.00x**", "")
    assert "failed: max_rel_err above tolerance" in text
    table = report.terminal_table(ROWS, color=True)
    assert "\033[1;32m" in table, "speedups >= 1 are highlighted"
    assert "lstm forward fp16  T=10 B=4 I=8 H=8 L=1 packed" in table
    summary = report.summary_table(ROWS).splitlines()
    assert len(summary) == 2 and "0.5 (sequence)" in summary[1] and "4.00x" in summary[1]


def test_plot_without_matplotlib(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    why = report.plot(tmp_path / "p.png", ENV, ROWS)
    assert "matplotlib is not installed" in why
    assert not (tmp_path / "p.png").exists()


def test_plot(tmp_path):
    """matplotlib is a test dependency (pyproject.toml): the plot is drawn, never skipped."""
    assert report.plot(tmp_path / "p.png", ENV, ROWS) is None
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
