"""The wheel ships kernels/ as fused_rnn/kernels/ and never as a top-level `kernels` package."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_wheel_contains_fused_rnn_kernels_only(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("fused_rnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "fused_rnn/kernels/cell_kernels.py" in names
    assert "fused_rnn/kernels/cell_math.py" in names
    assert "fused_rnn/bench/cli.py" in names, "the fused-rnn-bench console script needs its package"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fused-rnn-bench = fused_rnn.bench.cli:main" in entry_points
    assert not [n for n in names if n.startswith("kernels/")]
