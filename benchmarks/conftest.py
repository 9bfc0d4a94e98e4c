"""The pytest-benchmark suite over fused_rnn.bench's cases (``pytest benchmarks/ --benchmark-only``).

Without a GPU the kernels run in Triton's interpreter: TRITON_INTERPRET is set
here, before fused_rnn is imported, and the cases are scaled down
(``fused_rnn.bench.cases.standard_cases``), so the suite is a smoke test there.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fused_rnn.bench.candidates import KEYS  # noqa: E402
from fused_rnn.bench.cases import SWEEPS, standard_cases  # noqa: E402
from fused_rnn.kernels.launch import interpreting  # noqa: E402


def pytest_addoption(parser):
    group = parser.getgroup("fused-rnn benchmark")
    group.addoption("--bench-sweep", default="",
                    help=f"comma-separated sweeps instead of the default case: {', '.join(SWEEPS)}")
    group.addoption("--bench-impl", default="sequence,stepwise,cudnn,native",
                    help=f"comma-separated candidates (default: all but compile): {', '.join(KEYS)}")


def pytest_generate_tests(metafunc):
    """Parametrise ``case`` and ``impl`` from the options (ids like lstm-forward-fp32-T13-B8-I64-H64-L1-sequence)."""
    config = metafunc.config
    if "case" in metafunc.fixturenames:
        sweeps = tuple(s for s in config.getoption("--bench-sweep").split(",") if s)
        metafunc.parametrize("case", standard_cases(sweeps, interpreting()), ids=str)
    if "impl" in metafunc.fixturenames:
        impls = [i for i in config.getoption("--bench-impl").split(",") if i]
        unknown = [i for i in impls if i not in KEYS]
        if unknown:
            raise pytest.UsageError(f"--bench-impl: unknown {', '.join(unknown)}; choose from {', '.join(KEYS)}")
        metafunc.parametrize("impl", impls)
