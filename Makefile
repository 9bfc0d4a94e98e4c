# fused-rnn: `make test` runs the test suite, `make bench` the benchmark.
# Without a GPU the kernels run in Triton's CPU interpreter (set up by the tests and the benchmark).

PYTHON ?= python3
# Extra pip arguments, e.g. PIP_ARGS="-c .ci/constraints.txt" to pin torch's CPU build.
PIP_ARGS ?=
# Options of the benchmark, e.g. BENCH_ARGS="--quick --out bench-results" (python -m fused_rnn.bench --help).
BENCH_ARGS ?=
# Options of the compile report, e.g. COMPILE_REPORT_ARGS="--quick --jobs 16" (python -m fused_rnn.compile_report --help).
COMPILE_REPORT_ARGS ?=

# `make compat`: the oldest versions pyproject.toml admits, torch 2.11 + triton 3.6 (the GPU machine's), in their own
# virtual environment COMPAT_VENV, made on first use (about 5 GB: PyPI's torch 2.11 is a CUDA build). It runs every
# kernel in Triton's interpreter: the cell step kernels and the sequence kernels (LSTM, LSTM with projection, GRU,
# RNN tanh/relu), forward and backward, in fp64, fp32, fp16 and bf16. A few minutes on 2 cores; not part of CI.
# Triton 3.6's interpreter needs numpy < 2.4 (numpy 2.4 made an array-to-scalar conversion it does an error; numpy 2.3
# warns, which is silenced below). PYTHON makes the environment (the GPU machine has Python 3.12).
COMPAT_VENV ?= .venv-compat
COMPAT_TORCH ?= 2.11.0
COMPAT_TRITON ?= 3.6.0
COMPAT_NUMPY ?= numpy<2.4
COMPAT_PIP_ARGS ?=
COMPAT_TESTS ?= tests/kernels tests/test_cells.py tests/test_cell_ops.py tests/test_sequence_ops.py tests/test_layers.py
# Leaves out what only costs time: torch.compile, double backward, the long-sequence, launch-count and classic-size
# tests, the fp32 tile-crossing shapes (the fp64 ones stay), and most of the fp64 layer matrix (a 2-layer bidirectional
# configuration per cell, batched and unbatched; packed input is in the fp32/fp16/bf16 tests).
COMPAT_K ?= not compile and not gradgradcheck and not test_long_sequence and not test_launches_do_not_grow \
	and not test_classic_size and not (test_tile_crossing_shapes and not fp64) \
	and not (test_matches_torch_fp64 and not batched-bias0-bf1-bi1-L2)

.PHONY: test bench install compile-report compat

install:
	@$(PYTHON) -c "import fused_rnn.kernels, torch, triton, numpy, pytest, pytest_benchmark, hypothesis, matplotlib" 2>/dev/null \
		|| $(PYTHON) -m pip install -e ".[test]" $(PIP_ARGS)

test: install
	$(PYTHON) -m pytest

# PEERS_ARGS: options of the FlashRNN peer benchmark (python -m fused_rnn.bench.peers --help).
PEERS_ARGS ?= --quick --budget-s 300
bench: install
	$(PYTHON) -m fused_rnn.bench $(BENCH_ARGS)
	$(PYTHON) -m fused_rnn.bench.peers $(PEERS_ARGS)
	$(PYTHON) -m fused_rnn.bench.loops --quick

# Compiles every kernel configuration for sm_80, sm_90 and gfx942 (no GPU needed) and rewrites the report;
# fails when a configuration does not compile, spills or overflows shared memory (see docs/compile-report.md).
compile-report: install
	$(PYTHON) -m fused_rnn.compile_report --markdown docs/compile-report.md $(COMPILE_REPORT_ARGS)

# fused_rnn is installed from this checkout (an editable install made from another checkout would bring its kernels).
compat:
	@test -x $(COMPAT_VENV)/bin/python || $(PYTHON) -m venv $(COMPAT_VENV)
	@$(COMPAT_VENV)/bin/python -c "import sys, torch, triton, numpy, pytest, pytest_benchmark, hypothesis; \
		sys.exit(torch.__version__.split('+')[0] != '$(COMPAT_TORCH)' or triton.__version__ != '$(COMPAT_TRITON)')" \
		2>/dev/null || $(COMPAT_VENV)/bin/python -m pip install "torch==$(COMPAT_TORCH)" "triton==$(COMPAT_TRITON)" \
		"$(COMPAT_NUMPY)" "pytest>=7" "pytest-benchmark>=4" "hypothesis>=6" "build>=1" $(COMPAT_PIP_ARGS)
	@$(COMPAT_VENV)/bin/python -c "import os, sys, fused_rnn.kernels as k; \
		sys.exit(os.path.dirname(os.path.abspath(k.__file__)) != os.path.abspath('kernels'))" 2>/dev/null \
		|| $(COMPAT_VENV)/bin/python -m pip install --no-deps -e . $(COMPAT_PIP_ARGS)
	@$(COMPAT_VENV)/bin/python -c "import sys, torch, triton, numpy; print('compat: Python', sys.version.split()[0], \
		'| torch', torch.__version__, '| triton', triton.__version__, '| numpy', numpy.__version__)"
	TRITON_INTERPRET=1 $(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider $(COMPAT_TESTS) -k "$(COMPAT_K)" \
		-W "ignore:Conversion of an array with ndim > 0 to a scalar:DeprecationWarning"
