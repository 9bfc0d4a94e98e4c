"""``python -m fused_rnn.bench.summary RESULTS.json ...``: one line per case from saved benchmark results."""

from __future__ import annotations

import argparse
import pathlib
import sys

from . import report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fused_rnn.bench.summary", description=__doc__)
    p.add_argument("json", nargs="+", type=pathlib.Path, help="files written by python -m fused_rnn.bench --json")
    args = p.parse_args(argv)
    envs, rows = report.load(args.json)
    for line in dict.fromkeys(report.environment_line(env) for env in envs):
        print(line)
    print(report.summary_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
