# fused-rnn: `make test` runs the test suite, `make bench` the benchmark.
# Without a GPU the kernels run in Triton's CPU interpreter (set up by the tests and the benchmark).

PYTHON ?= python3
# Extra pip arguments, e.g. PIP_ARGS="-c .ci/constraints.txt" to pin torch's CPU build.
PIP_ARGS ?=
# Options of the benchmark, e.g. BENCH_ARGS="--quick --out bench-results" (python -m fused_rnn.bench --help).
BENCH_ARGS ?=
# Options of the compile report, e.g. COMPILE_REPORT_ARGS="--quick --jobs 16" (python -m fused_rnn.compile_report --help).
COMPILE_REPORT_ARGS ?=

.PHONY: test bench install compile-report

install:
	@$(PYTHON) -c "import fused_rnn.kernels, torch, triton, numpy, pytest, pytest_benchmark, hypothesis" 2>/dev/null \
		|| $(PYTHON) -m pip install -e ".[test]" $(PIP_ARGS)

test: install
	$(PYTHON) -m pytest

bench: install
	$(PYTHON) -m fused_rnn.bench $(BENCH_ARGS)

# Compiles every kernel configuration for sm_80, sm_90 and gfx942 (no GPU needed) and rewrites the report;
# fails when a configuration does not compile, spills or overflows shared memory (see docs/compile-report.md).
compile-report: install
	$(PYTHON) -m fused_rnn.compile_report --markdown docs/compile-report.md $(COMPILE_REPORT_ARGS)
