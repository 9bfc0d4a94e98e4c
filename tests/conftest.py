"""Test setup: Triton's interpreter on CPU-only machines, NaN-poisoned outputs, device and path fixtures.

Without a GPU the kernels run in Triton's CPU interpreter. TRITON_INTERPRET
must be set before any Triton kernel is defined, so it is set here, at
collection time, before the tests import fused_rnn. A TRITON_INTERPRET=0
without a GPU stops the run with a message (the kernels could not run).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    # Without a GPU the kernels can only run in the interpreter. A TRITON_INTERPRET that turns it off would make
    # every fused module hand its calls to torch.nn, and the tests would compare torch.nn with itself: refuse.
    if os.environ.get("TRITON_INTERPRET", "1").lower() not in ("1", "true", "on", "yes"):
        raise pytest.UsageError(
            f"TRITON_INTERPRET={os.environ['TRITON_INTERPRET']!r} with no GPU: the Triton kernels could not run and "
            "the fused modules would fall back to torch.nn. Unset it (the tests then use Triton's CPU interpreter)."
        )
    os.environ.setdefault("TRITON_INTERPRET", "1")  # process-wide on purpose: Triton reads it at import

import contextlib  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

from fused_rnn.kernels.launch import count_launches, interpreting, poison_outputs  # noqa: E402

# Property tests (hypothesis). "ci", the default: a fixed set of examples (derandomize: the same ones on every
# run, no example database) sized for the interpreter on 2 cores. "dev": a 20x larger random search, for local
# runs: HYPOTHESIS_PROFILE=dev python -m pytest tests/test_layers_properties.py. Tests scale their own
# example counts from ``settings.default.max_examples``. No deadline: interpreter timings vary.
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile(
    "ci", max_examples=10, derandomize=True, database=None, deadline=None, suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile("dev", max_examples=200, deadline=None, suppress_health_check=_SLOW_OK, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# torch's own recurrent implementations (torch.nn's modules call them through _VF): the fused
# path must never call them.
_TORCH_RNN_FUNCTIONS = [
    "lstm_cell", "gru_cell", "rnn_tanh_cell", "rnn_relu_cell", "lstm", "gru", "rnn_tanh", "rnn_relu",
]


def pytest_report_header(config):
    where = "Triton interpreter on CPU" if interpreting() else f"GPU: {torch.cuda.get_device_name()}"
    return f"fused-rnn kernels run in: {where}"


@pytest.fixture(autouse=True)
def _poison_kernel_outputs():
    """Every buffer a kernel writes starts as NaN, so an element it forgets fails the comparison."""
    with poison_outputs():
        yield


@pytest.fixture
def device() -> str:
    """Where the kernels run: the GPU when there is one, else the CPU through the interpreter."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _forbidden(name):
    def fail(*args, **kwargs):
        raise AssertionError(f"torch's own RNN implementation ({name}) was called on the fused path")

    return fail


@contextlib.contextmanager
def fused_path_only():
    """Run the block with torch's recurrent kernels replaced by failures, and count Triton launches.

    Yields the launch counter; callers assert it is non-zero, proving the Triton path ran.
    """
    mp = pytest.MonkeyPatch()
    try:
        for name in _TORCH_RNN_FUNCTIONS:
            mp.setattr(torch._VF, name, _forbidden(f"_VF.{name}"))
            mp.setattr(torch, name, _forbidden(f"torch.{name}"))
        with count_launches() as counter:
            yield counter
    finally:
        mp.undo()
