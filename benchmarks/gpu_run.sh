#!/usr/bin/env bash
# The GPU benchmark in one command, for a GPU machine without network that already has
# torch, triton, pytest and pytest-benchmark:
#
#   benchmarks/gpu_run.sh OUTPUT_DIR        (or OUT=OUTPUT_DIR benchmarks/gpu_run.sh)
#
# Installs the package offline, runs the test suite on the GPU, then the benchmarks:
#   default/  the default case (T=100 B=64 I=H=512), LSTM/GRU/RNN-tanh, both modes, fp32/fp16/bf16
#   compile/  torch.compile of the reference loop on the default LSTM fp16 case (25 s compile cap)
#   sweeps/   batch, hidden, layers and packed sweeps, LSTM fp16, both modes, short timing
#   seq/      the sequence-length sweep (16..4096), LSTM fp16, fused sequence path and cuDNN only
# Each writes bench.json, bench.csv, bench.md, bench.png (with matplotlib) and a log under
# OUTPUT_DIR; the summary table comes last. Every stage has a time limit (worst case about
# 8.7 minutes in all; these limits are estimates, not yet checked on a GPU); a benchmark
# stopped at its limit still writes the cases it finished.
set -uo pipefail

out="${OUT:-${1:-}}"
if [ -z "$out" ]; then
    echo "usage: benchmarks/gpu_run.sh OUTPUT_DIR (or set OUT)" >&2
    exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
py="${PYTHON:-python}"

log() { echo "[gpu_run $(date +%T)] $*" | tee -a "$out/gpu_run.log"; }

# stage NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in NAME.log.
stage() {
    local name=$1 limit=$2 rc
    shift 2
    log "$name (limit ${limit} s): $*"
    timeout -k 10 "$limit" "$@" >"$out/$name.log" 2>&1
    rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        log "$name: stopped at its ${limit} s limit (see $name.log)"
    else
        log "$name: exit status $rc"
    fi
}

if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    log "torch sees no GPU: nothing to do (without a GPU use: make bench)"
    exit 1
fi
"$py" -c 'import torch, triton; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__,
          "| triton", triton.__version__)' | tee -a "$out/gpu_run.log"

stage install 60 "$py" -m pip install --no-deps --no-build-isolation -e .
stage tests 100 "$py" -m pytest -q -p no:cacheprovider tests

bench=("$py" -m fused_rnn.bench)
fast=(--impl sequence,stepwise,cudnn,native)
stage default 120 "${bench[@]}" "${fast[@]}" --budget-s 100 --out "$out/default"
stage compile 90 "${bench[@]}" --impl sequence,stepwise,cudnn,native,compile --cell lstm --dtype fp16 \
    --compile-cap 25 --out "$out/compile"
stage sweeps 100 "${bench[@]}" "${fast[@]}" --sweep batch,hidden,layers,packed --cell lstm --dtype fp16 --quick \
    --budget-s 85 --out "$out/sweeps"
stage seq 50 "${bench[@]}" --impl sequence,cudnn --sweep seq --cell lstm --dtype fp16 --quick --budget-s 40 \
    --out "$out/seq"

log "tests: $(tail -n 1 "$out/tests.log")"
shown=()
for name in default compile sweeps seq; do
    [ -f "$out/$name/bench.json" ] && shown+=("$out/$name/bench.json")
done
if [ "${#shown[@]}" -eq 0 ]; then
    log "no benchmark results were written; see the logs in $out"
    exit 1
fi
log "files: $out/{default,compile,sweeps,seq}/bench.{json,csv,md,png} and $out/*.log"
echo
# The short summary: the default and compile runs (the sweeps are in their own files).
short=()
for f in "${shown[@]}"; do
    case "$f" in */default/bench.json | */compile/bench.json) short+=("$f") ;; esac
done
[ "${#short[@]}" -gt 0 ] || short=("${shown[@]}")
"$py" -m fused_rnn.bench.summary "${short[@]}" | tee "$out/summary.txt"
