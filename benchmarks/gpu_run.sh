#!/usr/bin/env bash
# The GPU benchmark in one command, for a GPU machine without network that already has
# torch, triton, pytest and pytest-benchmark:
#
#   benchmarks/gpu_run.sh OUTPUT_DIR        (or OUT=OUTPUT_DIR benchmarks/gpu_run.sh)
#   REHEARSE=1 benchmarks/gpu_run.sh DIR    the same stages on a CPU, at tiny sizes (see below)
#
# Stages, each with a time limit and its output in OUTPUT_DIR/NAME.log:
#   install   pip install --no-deps --no-build-isolation -e . (offline). Where that fails (a setuptools
#             older than 70.1 without the `wheel` package: "invalid command 'bdist_wheel'"), the run goes
#             on from the checkout instead: PYTHONPATH=OUTPUT_DIR/pythonpath, a fused_rnn/ of links to
#             fused_rnn/*, with kernels/ as fused_rnn/kernels, and PYTHONSAFEPATH=1 so that the
#             checkout's own fused_rnn/ (no kernels inside) does not shadow it (needs Python >= 3.11).
#             gpu_run.log says which happened and where fused_rnn was imported from.
#             INSTALL=checkout skips pip and runs from the checkout directly. (Without `wheel`,
#             tests/test_packaging.py, which builds a wheel, fails in the tests stage.)
#   bitwise   benchmarks/bitwise.py: the hidden-split sequence kernels in one launch with barriers against
#             one launch per step and phase, bitwise, every cell, forward and backward, B in {1,16,64,256},
#             H in {256,768,2048}, streaming W_hh and, where it fits, weight-stationary (W_hh on chip):
#             the GPU test of their synchronisation (bitwise.log; first, as it is the check that can
#             only run here)
#   tests     the test suite on the GPU (TESTS="pytest arguments" picks others; default: tests)
#   default/  the default case (T=100 B=64 I=H=512), LSTM/GRU/RNN-tanh, both modes, fp32/fp16/bf16
#   flashrnn/ FlashRNN's setup: LSTM, T=1024 B=16 I=H=768, bf16, both modes (weight-stationary on an
#             H100/H200: 48 programs of 16 units; cuDNN 2.01 / 5.19 ms published, FlashRNN 1.44 ms forward)
#   sweeps/   batch, hidden, layers and packed sweeps, LSTM fp16, both modes, short timing
#   seq/      the sequence-length sweep (16..4096), LSTM fp16, fused sequence path and cuDNN only
#   peers/    FlashRNN as a peer (python -m fused_rnn.bench.peers): LSTM and sLSTM, B=16 T=1024, total
#             hidden 768, bf16, heads 48x16, 24x32, 12x64, 6x128, 1x768, forward and forward+backward:
#             fused_rnn.flashrnn, FlashRNN's Triton and fused CUDA backends, cuDNN's nn.LSTM (one head).
#             This machine has no network: FlashRNN (and einops) install from FLASHRNN_WHEELS, a folder of
#             their wheels (docs/benchmarks.md says how to make it), when flashrnn does not import; without
#             it the stage logs why and times fused_rnn and cuDNN alone (peers.log, peers/peers.{json,md}).
#   loops/    haste's cells and the others torch.nn lacks (IndRNN, LSTM and GRU with zoneout, LayerNorm
#             LSTM and GRU, sLSTM, multi-head LSTM) against the plain-torch loop over time, and cuDNN where
#             it has a relative (python -m fused_rnn.bench.loops; loops.log, loops/loops.json; each row is
#             logged as it is measured, so a stage stopped at its limit keeps the rows before)
# Each benchmark writes bench.json, bench.csv, bench.md, bench.png (with matplotlib) under
# OUTPUT_DIR/NAME/, with measured and predicted (cost model) microseconds per step; the summary
# table comes last (also in summary.txt). The stage limits add up to 590 s, 650 s with peer-install (estimates,
# not yet checked on a GPU; install and peer-install take seconds of their minute), under the 10 minutes a
# command may run on the lent GPU machine; a benchmark stopped at its limit still writes the cases it finished.
# Exit status 1 when no benchmark wrote results.
#
# REHEARSE=1 runs every stage above through the same commands on the CPU, in Triton's
# interpreter (TRITON_INTERPRET=1), so that a mistake in this script shows up without a GPU:
# no GPU check, the bitwise check at B=19 H=40 (one thread per program for the one launch), a
# small test subset (tests/kernels/test_launch.py unless TESTS is set), and each
# benchmark on tiny cases (T=4 B=2 I=4 H=8 as given, a sweep replacing its own axis, --quick)
# starting no new case after REHEARSE_BUDGET_S seconds (default 2: one or a
# few cases each). Its timings mean nothing. Its install stage is the real one (pip install -e .
# into the Python that runs it); INSTALL=checkout leaves that environment alone. About two minutes
# on 2 cores, most of it the bitwise stage; tests/bench/test_gpu_run.py runs it
# (INSTALL=checkout, 0.5 s budgets).
set -uo pipefail

out="${OUT:-${1:-}}"
if [ -z "$out" ]; then
    echo "usage: benchmarks/gpu_run.sh OUTPUT_DIR (or set OUT); REHEARSE=1 for a CPU rehearsal" >&2
    exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.." || exit 2
repo="$(pwd)"
py="${PYTHON:-python}"
rehearse="${REHEARSE:-0}"
[ "$rehearse" = 0 ] && rehearse=""
if [ -n "$rehearse" ]; then
    export TRITON_INTERPRET=1
else
    unset TRITON_INTERPRET
fi

log() { echo "[gpu_run $(date +%T)] $*" | tee -a "$out/gpu_run.log"; }

# stage NAME SECONDS COMMAND...: run COMMAND with a time limit, its output in NAME.log; its exit status in $rc.
rc=0
stage() {
    local name=$1 limit=$2
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

if [ -n "$rehearse" ]; then
    log "REHEARSAL: every stage on the CPU in Triton's interpreter, tiny sizes; the timings mean nothing"
    "$py" -c 'import torch, triton; print("CPU rehearsal | torch", torch.__version__, "| triton", triton.__version__)' \
        | tee -a "$out/gpu_run.log"
else
    if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        log "torch sees no GPU: nothing to do (without a GPU use: make bench; to rehearse this script: REHEARSE=1)"
        exit 1
    fi
    "$py" -c 'import torch, triton; print("GPU:", torch.cuda.get_device_name(), "| torch", torch.__version__,
              "| triton", triton.__version__)' | tee -a "$out/gpu_run.log"
fi

# Install, or run from the checkout where the editable install is not possible.
install="${INSTALL:-auto}"
why="INSTALL=$install"
if [ "$install" != checkout ]; then
    stage install 60 "$py" -m pip install --no-deps --no-build-isolation -e .
    why="the editable install failed, exit status $rc, see install.log"
    grep -q "invalid command 'bdist_wheel'" "$out/install.log" 2>/dev/null \
        && why="$why; this setuptools has no bdist_wheel: no wheel package"
fi
if [ "$install" = checkout ] || [ "$rc" -ne 0 ]; then
    shim="$out/pythonpath"
    rm -rf "$shim"
    mkdir -p "$shim/fused_rnn"
    for f in "$repo"/fused_rnn/*; do
        [ "$(basename "$f")" = __pycache__ ] || ln -s "$f" "$shim/fused_rnn/"
    done
    ln -s "$repo/kernels" "$shim/fused_rnn/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    log "install: running from the checkout ($why): PYTHONPATH=$shim PYTHONSAFEPATH=1"
else
    log "install: editable install (pip install -e .)"
fi
if ! where="$("$py" -c 'import fused_rnn, fused_rnn.kernels; print(fused_rnn.__file__)' 2>&1)"; then
    log "fused_rnn does not import: $where"
    [ -n "${PYTHONSAFEPATH:-}" ] && log "(running from the checkout needs Python >= 3.11, for PYTHONSAFEPATH)"
    exit 1
fi
log "fused_rnn imports from $where"

if [ -n "${TESTS:-}" ]; then
    read -ra tests <<<"$TESTS"
elif [ -n "$rehearse" ]; then
    tests=(tests/kernels/test_launch.py)
else
    tests=(tests)
fi
quick=()
[ -n "$rehearse" ] && quick=(--quick)
stage bitwise 130 "$py" benchmarks/bitwise.py ${quick[@]+"${quick[@]}"}
stage tests 50 "$py" -m pytest -q -p no:cacheprovider "${tests[@]}"

bench=("$py" -m fused_rnn.bench)
# shellcheck disable=SC2054  # one argument: the comma-separated list
fast=(--impl sequence,stepwise,cudnn,native)
# Rehearsal: tiny cases as given (not scaled for the interpreter), short timing, a short budget per benchmark.
# These come last on each command line, so they override the real run's budgets.
tiny=()
[ -n "$rehearse" ] && tiny=(--seq 4 --batch 2 --input 4 --hidden 8 --no-scale --quick
                            --budget-s "${REHEARSE_BUDGET_S:-2}")
stage default 80 "${bench[@]}" "${fast[@]}" --budget-s 65 --out "$out/default" ${tiny[@]+"${tiny[@]}"}
stage flashrnn 60 "${bench[@]}" --impl sequence,cudnn --cell lstm --dtype bf16 --seq 1024 --batch 16 --hidden 768 \
    --input 768 --budget-s 50 --out "$out/flashrnn" ${tiny[@]+"${tiny[@]}"}
stage sweeps 45 "${bench[@]}" "${fast[@]}" --sweep batch,hidden,layers,packed --cell lstm --dtype fp16 --quick \
    --budget-s 36 --out "$out/sweeps" ${tiny[@]+"${tiny[@]}"}
stage seq 30 "${bench[@]}" --impl sequence,cudnn --sweep seq --cell lstm --dtype fp16 --quick --budget-s 24 \
    --out "$out/seq" ${tiny[@]+"${tiny[@]}"}
peer=()
if ! "$py" -c 'import flashrnn' >/dev/null 2>&1; then
    if [ -n "${FLASHRNN_WHEELS:-}" ]; then
        stage peer-install 60 "$py" -m pip install --no-deps --no-index "$FLASHRNN_WHEELS"/*.whl
    fi
    if ! "$py" -c 'import flashrnn' >/dev/null 2>&1; then
        log "peers: FlashRNN does not import (FLASHRNN_WHEELS=${FLASHRNN_WHEELS:-unset}): fused_rnn and cuDNN only"
        peer=(--no-peer)
    fi
fi
tiny_peers=()
[ -n "$rehearse" ] && tiny_peers=(--seq 4 --batch 16 --hidden 32 --heads 2 --function slstm --mode forward
                                  --no-scale --budget-s 60)
stage peers 90 "$py" -m fused_rnn.bench.peers --quick --budget-s 75 --out "$out/peers" ${peer[@]+"${peer[@]}"} \
    ${tiny_peers[@]+"${tiny_peers[@]}"}
tiny_loops=()
[ -n "$rehearse" ] && tiny_loops=(--seq 4 --batch 16 --hidden 32 --no-scale --cell indrnn --mode forward)
stage loops 45 "$py" -m fused_rnn.bench.loops --quick --out "$out/loops" ${tiny_loops[@]+"${tiny_loops[@]}"}

log "bitwise: $(tail -n 1 "$out/bitwise.log")"
log "tests: $(tail -n 1 "$out/tests.log")"
[ -f "$out/peers/peers.md" ] && log "peers: $out/peers/peers.md" && cat "$out/peers/peers.md"
shown=()
for name in default flashrnn sweeps seq; do
    [ -f "$out/$name/bench.json" ] && shown+=("$out/$name/bench.json")
done
if [ "${#shown[@]}" -eq 0 ]; then
    log "no benchmark results were written; see the logs in $out"
    exit 1
fi
log "files: $out/{default,flashrnn,sweeps,seq}/bench.{json,csv,md,png} and $out/*.log"
echo
# The short summary: the default and FlashRNN runs (the sweeps are in their own files).
short=()
for f in "${shown[@]}"; do
    case "$f" in */default/bench.json | */flashrnn/bench.json) short+=("$f") ;; esac
done
[ "${#short[@]}" -gt 0 ] || short=("${shown[@]}")
"$py" -m fused_rnn.bench.summary "${short[@]}" | tee "$out/summary.txt"
