"""Results out: the environment, terminal tables, JSON, CSV, markdown, a PNG plot and a progress bar."""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from typing import TextIO

import torch
import triton

from .candidates import is_cudnn
from .cases import SWEEPS
from .problem import tf32_enabled
from .run import FIELDS, Row

INTERPRETER_WARNING = "Triton interpreter on the CPU: timings are interpreter timings, not performance"


def _command(*args: str) -> str | None:
    """First output line of a command, or None when it is missing or fails."""
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=pathlib.Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if done.returncode == 0 and lines else None


def environment(device: torch.device, interpreter: bool) -> dict[str, object]:
    """Where and with what the results were measured."""
    cuda = device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(device) if cuda else f"CPU: {platform.processor() or platform.machine()}",
        "cpu_cores": os.cpu_count(),
        "driver": _command("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
        "hip": torch.version.hip if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda and torch.backends.cudnn.is_available() else None,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "git_commit": _command("git", "rev-parse", "HEAD"),
        "git_dirty": bool(_command("git", "status", "--porcelain", "--untracked-files=no")),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "triton_interpreter": interpreter,
        "tf32": tf32_enabled(device),
        "timer": "CUDA events (triton.testing.do_bench)" if cuda else "wall clock (time.perf_counter)",
    }


def environment_line(env: dict[str, object]) -> str:
    """One line: device, versions, date, commit, and the interpreter warning where it applies."""
    commit = str(env["git_commit"] or "unknown")[:10] + ("+dirty" if env["git_dirty"] else "")
    text = f"{env['device']} | torch {env['torch']} | triton {env['triton']} | {env['date']} | commit {commit}"
    if env["cudnn"]:
        text += f" | CUDA {env['cuda']}, cuDNN {env['cudnn']}, driver {env['driver']}"
    return text + (f" | {INTERPRETER_WARNING}" if env["triton_interpreter"] else "")


def _fmt(value: object, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:.4g}" if value < 1000 else f"{value:.0f}"
    if kind == "count":
        n = float(value)
        for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if n >= size:
                return f"{n / size:.3g}{unit}"
        return f"{n:.3g}"
    if kind == "bytes":
        return f"{value / 2**20:.1f} MiB"
    if kind == "err":
        return f"{value:.1e}" if math.isfinite(value) else "inf"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "us":
        return f"{value:.3g}"
    return str(value)


def _spread(row: Row) -> str:
    return "-" if row["p20_ms"] is None else f"{_fmt(row['p20_ms'], 'ms')}-{_fmt(row['p80_ms'], 'ms')}"


def _case_key(row: Row) -> tuple:
    return tuple(row[f] for f in FIELDS[: FIELDS.index("impl")])


def _shape(row: Row) -> str:
    shape = f"T={row['seq_len']} B={row['batch']} I={row['input_size']} H={row['hidden_size']} L={row['num_layers']}"
    return shape + " bidirectional" * bool(row["bidirectional"]) + " packed" * bool(row["packed"])


def _case_title(row: Row) -> str:
    return f"{row['cell']} {row['mode']} {row['dtype']}  {_shape(row)}"


def _color(text: str, speedup: float | None, enabled: bool) -> str:
    if not enabled or speedup is None:
        return text
    return f"\033[1;32m{text}\033[0m" if speedup >= 1 else f"\033[31m{text}\033[0m"


def terminal_table(rows: list[Row], color: bool) -> str:
    """Rows grouped by case, one line per candidate; speedups over cuDNN green (>= 1) or red when ``color``."""
    header = (
        f"  {'impl':<20} {'median ms':>10} {'p20-p80 ms':>17} {'tokens/s':>9} {'vs cuDNN':>9} {'peak mem':>11} "
        f"{'launches':>8} {'max rel err':>11} {'us/step':>8} {'predicted':>9}  status"
    )
    lines, seen = [], set()
    for row in rows:
        key = _case_key(row)
        if key not in seen:
            seen.add(key)
            lines += ["", _case_title(row), header]
        speedup = _fmt(row["speedup_vs_cudnn"], "x")
        status = row["status"] + (f" ({row['note']})" if row["note"] else "")
        lines.append(
            f"  {row['impl']:<20} {_fmt(row['median_ms'], 'ms'):>10} {_spread(row):>17} "
            f"{_fmt(row['tokens_per_s'], 'count'):>9} {_color(f'{speedup:>9}', row['speedup_vs_cudnn'], color)} "
            f"{_fmt(row['peak_mem_bytes'], 'bytes'):>11} {_fmt(row['launches'], ''):>8} "
            f"{_fmt(row['max_rel_err'], 'err'):>11} {_fmt(row['us_per_step'], 'us'):>8} "
            f"{_fmt(row['predicted_us_per_step'], 'us'):>9}  {status}"
        )
    return "\n".join(lines[1:])


def _per_step(row: Row | None) -> str:
    """Measured us per time step and, where the cost model covers the row, the prediction in parentheses."""
    if row is None:
        return "-"
    predicted = row.get("predicted_us_per_step")
    return _fmt(row.get("us_per_step"), "us") + ("" if predicted is None else f" ({_fmt(predicted, 'us')})")


def summary_table(rows: list[Row]) -> str:
    """One line per case: the fastest fused path against torch.nn's cuDNN and native paths and torch.compile."""
    cases: dict[tuple, list[Row]] = {}
    for row in rows:
        cases.setdefault(_case_key(row), []).append(row)
    head = (f"{'case':<58} {'fused ms (path)':>24} {'cuDNN ms':>9} {'native ms':>9} {'compile ms':>10} {'vs cuDNN':>8} "
            f"{'fused us/step (predicted)':>26}")
    lines = [head]
    for group in cases.values():
        timed = {r["impl"]: r for r in group if r["median_ms"] is not None}
        fused = [r for r in timed.values() if str(r["impl"]).startswith("fused_rnn:")]
        best = min(fused, key=lambda r: r["median_ms"], default=None)
        cudnn = next((r for r in timed.values() if is_cudnn(r["impl"])), None)
        native = next((r for r in timed.values() if str(r["impl"]).startswith("torch.nn:") and r is not cudnn), None)
        compiled = timed.get("torch.compile:loop")
        best_text = "-" if best is None else f"{_fmt(best['median_ms'], 'ms')} ({str(best['impl']).split(':')[1]})"
        lines.append(
            f"{_case_title(group[0]):<58} {best_text:>24} "
            + " ".join(f"{_fmt(r and r['median_ms'], 'ms'):>{w}}" for r, w in ((cudnn, 9), (native, 9), (compiled, 10)))
            + f" {_fmt(best and best['speedup_vs_cudnn'], 'x'):>8}"
            + f" {_per_step(best):>26}"
        )
    return "\n".join(lines)


def _finite(value: object) -> object:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_json(path: pathlib.Path, env: dict[str, object], rows: list[Row]) -> None:
    """{"environment": {...}, "results": [rows]}; non-finite numbers become null."""
    results = [{k: _finite(v) for k, v in row.items()} for row in rows]
    path.write_text(json.dumps({"environment": env, "results": results}, indent=1, allow_nan=False) + "\n")


def write_csv(path: pathlib.Path, rows: list[Row]) -> None:
    """One line per row, columns FIELDS; empty cells for None."""
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def markdown(env: dict[str, object], rows: list[Row]) -> str:
    """A markdown table of every row (speedups of at least 1x in bold), under the environment line."""
    head = "| cell | mode | dtype | shape | impl | median ms | p20-p80 ms | tokens/s | vs cuDNN | peak mem | launches "
    head += "| max rel err | status |"
    lines = [f"Measured on: {environment_line(env)}", "", head, "|" + "---|" * 13]
    for row in rows:
        speedup = _fmt(row["speedup_vs_cudnn"], "x")
        if row["speedup_vs_cudnn"] is not None and row["speedup_vs_cudnn"] >= 1:
            speedup = f"**{speedup}**"
        status = row["status"] + (f": {row['note']}" if row["note"] else "")
        cells = [
            row["cell"], row["mode"], row["dtype"], _shape(row), row["impl"], _fmt(row["median_ms"], "ms"),
            _spread(row),
            _fmt(row["tokens_per_s"], "count"), speedup, _fmt(row["peak_mem_bytes"], "bytes"),
            _fmt(row["launches"], ""), _fmt(row["max_rel_err"], "err"), status.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _panel(row: Row) -> tuple[tuple, str]:
    """A row's panel and x label: a sweep's (cell, mode, dtype) along the sweep, else (cell, mode, shape) by dtype."""
    if row["sweep"]:
        return (row["sweep"], row["cell"], row["mode"], row["dtype"]), str(row["point"])
    return ("", row["cell"], row["mode"], _shape(row)), str(row["dtype"])


def plot(path: pathlib.Path, env: dict[str, object], rows: list[Row]) -> str | None:
    """A PNG of tokens/s per candidate (log scale), one panel per sweep and cell, mode, dtype, or per cell and mode
    by dtype for single cases. Returns why no plot was written, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed, so no plot was written (pip install matplotlib)"
    panels: dict[tuple, list[tuple[str, Row]]] = {}
    for row in rows:
        if row["tokens_per_s"] is not None:
            key, x = _panel(row)
            panels.setdefault(key, []).append((x, row))
    if not panels:
        return "no timed results to plot"
    cols = min(3, len(panels))
    lines = -(-len(panels) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5 * cols, 3.8 * lines), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, ((sweep, cell, mode, last), points) in zip(axes.flat, panels.items()):
        labels = list(dict.fromkeys(x for x, _ in points))
        for impl in dict.fromkeys(r["impl"] for _, r in points):
            mine = [(labels.index(x), r["tokens_per_s"]) for x, r in points if r["impl"] == impl]
            ax.plot(*zip(*mine), marker="o", label=impl)
        ax.set_xticks(range(len(labels)), labels, rotation=30 if len(labels) > 6 else 0, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("tokens/s")
        ax.set_xlabel(SWEEPS[sweep].axis if sweep else "dtype")
        title = f"{cell} {mode} {last} ({sweep} sweep)" if sweep else f"{cell} {mode}\n{last}"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(textwrap.fill(environment_line(env), 45 * cols), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class Progress:
    """Progress over ``total`` steps on stderr: a tqdm bar when tqdm is installed, else a line per step."""

    def __init__(self, total: int, stream: TextIO = sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, file=stream, dynamic_ncols=True)

    def __call__(self, description: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(description)
            self.bar.update()
        else:
            print(f"[{self.done}/{self.total}] {description}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def load(paths: Iterable[pathlib.Path]) -> tuple[list[dict[str, object]], list[Row]]:
    """The environments and the rows of saved JSON results."""
    envs, rows = [], []
    for path in paths:
        data = json.loads(pathlib.Path(path).read_text())
        envs.append(data["environment"])
        rows += data["results"]
    return envs, rows
