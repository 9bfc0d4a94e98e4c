# fused-rnn: `make test` runs the test suite, `make bench` the benchmark.
# Without a GPU the kernels run in Triton's CPU interpreter (set up by the tests and the benchmark).

PYTHON ?= python3
# Extra pip arguments, e.g. PIP_ARGS="-c .ci/constraints.txt" to pin torch's CPU build.
PIP_ARGS ?=

.PHONY: test bench install

install:
	@$(PYTHON) -c "import fused_rnn.kernels, torch, triton, numpy, pytest, pytest_benchmark, hypothesis" 2>/dev/null \
		|| $(PYTHON) -m pip install -e ".[test]" $(PIP_ARGS)

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) benchmarks/demo_cells.py
