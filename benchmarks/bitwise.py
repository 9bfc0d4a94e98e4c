"""One launch with barriers against one launch per step and phase, bitwise, for every cell: the GPU test of the
hidden-split sequence kernels' synchronisation.

    python benchmarks/bitwise.py [--quick]

The two forms run the same per-step code, so they compute the same sums in the
same order; a missing or broken barrier (an arrival count, the ping-pong
parity, memory ordering) makes the one-launch results differ. For each cell
(LSTM, LSTM with a projection, GRU, RNN tanh and relu), batch B in {1, 16, 64,
256} and hidden H in {256, 768, 2048} (bf16; LSTM also fp32 with TF32; haste's
LayerNorm LSTM and GRU at B in {16, 64}, H = 768, their three and two barriers
a step), T = 8
with lengths spread over [1, T], every other case with both directions of a
bidirectional layer in one launch (the second in reverse): the forward's outputs
(y, h_n, c_n, saved gates and cell states, m) and the backward's (gate
gradients, dh0, dc0, dh) of both forms, every unwritten element NaN in both,
must be identical. The slices are the dispatcher's where it splits, else the
finest whose grid the GPU holds at once (there must be a barrier to test);
each case runs again weight-stationary (W_hh on chip for the launch) where
that plan fits the GPU's SMs and shared memory, in the other direction.
Prints one line per case and exits 1 if any differs or a one-launch grid did
not run as one launch.

Without a GPU (Triton's interpreter, ``--quick`` sizes: the rehearsal of
benchmarks/gpu_run.sh) the one-launch form runs with one thread per program
(tests/interpreter_threads.py), the last hidden slice of each batch tile storing
STRAGGLER_S late as in tests/kernels/test_sequence_kernels.py, so a barrier that
opens early shows; that tests the protocol, not GPU memory ordering.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import pathlib
import sys
import time

import torch

from fused_rnn import dispatch
from fused_rnn.dispatch import device_shared, device_sms, make_plan, sequence_plan, slice_choices
from fused_rnn.kernels import sequence_kernels as K
from fused_rnn.kernels.launch import count_launches, interpreting, poison_outputs

T = 8
# Interpreter only: each store of the last hidden slice of a batch tile waits this long, so that slice always
# arrives last at the barrier (as in the unit test, tests/kernels/test_sequence_kernels.py).
STRAGGLER_S = 0.02
# name: (cell, projection, layer normalisation)
CELLS = {"lstm": (K.LSTM, False, False), "lstm_proj": (K.LSTM, True, False), "gru": (K.GRU, False, False),
         "rnn_tanh": (K.RNN_TANH, False, False), "rnn_relu": (K.RNN_RELU, False, False),
         "ln_lstm": (K.LSTM, False, True), "ln_gru": (K.GRU, False, True)}


def _inputs(cell: int, proj: bool, batch: int, hidden: int, dtype: torch.dtype, device, directions: int,
            layer_norm: bool = False) -> dict:
    """The launchers' inputs, stacked over ``directions`` (xp and dy side by side); ``layer_norm``: the
    normalisation's gains (and the LSTM's c bias)."""
    torch.manual_seed(batch * 7 + hidden + cell)
    R, D = hidden // 2 if proj else hidden, directions
    G = K.GATES[cell] * hidden

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, device=device) * scale).to(dtype)

    lengths = torch.randint(1, T + 1, (batch,), device=device)
    lengths[0] = T
    return dict(
        xp=randn(T, batch, D * G), w_hh=randn(D, G, R, scale=R**-0.5),
        b_hn=randn(D, hidden) if cell == K.GRU else None,
        w_hr=randn(D, R, hidden, scale=hidden**-0.5) if proj else None,
        h0=randn(D, batch, R), c0=randn(D, batch, hidden) if cell == K.LSTM else None, lengths=lengths,
        dy=randn(T, batch, D * R), dh_n=randn(D, batch, R), dc_n=randn(D, batch, hidden) if cell == K.LSTM else None,
        ln=1.0 + randn(D, G + (2 * hidden if cell == K.LSTM else 0), scale=0.3) if layer_norm else None,
    )


def _run(a: dict, cell: int, reverse: bool, plan) -> tuple[list[torch.Tensor], dict]:
    with count_launches() as launches, poison_outputs():
        y, h_n, c_n, ws, cs, ms, ns = K.sequence_forward(a["xp"], a["w_hh"], a["b_hn"], a["w_hr"], a["h0"],
                                                         a["c0"], a["lengths"], cell, reverse, True, plan, ln=a["ln"])
        grads = K.sequence_backward(a["dy"], a["dh_n"], a["dc_n"], a["w_hh"], a["w_hr"], a["h0"], a["c0"],
                                    a["lengths"], y, ws, cs, cell, reverse, plan, ln=a["ln"], ns=ns)
    return [y, h_n, c_n, ws, cs, ms, ns, *grads], dict(launches.by_kernel)


def _slices(mode: str, batch: int, hidden: int, proj: int, dtype: torch.dtype, sms: int, directions: int) -> int:
    """The dispatcher's slices where it splits, else the finest whose grid fits ``sms`` SMs."""
    chosen = sequence_plan(mode, batch, hidden, proj, dtype, sms).slices
    if chosen > 1:
        return chosen
    one = make_plan(batch, hidden, dtype, 1, sms, True, directions)
    tiles = one.grid(batch)[0]
    return max(n for n in slice_choices(hidden, proj, one.blocks.block_h) if n == 1 or tiles * n <= sms)


def resident_plan(mode: str, batch: int, hidden: int, dtype: torch.dtype, sms: int, shared: int, directions: int):
    """The weight-stationary plan to test: the dispatcher's where it keeps W_hh on chip (in ``directions``
    directions a launch), else the 16-row one where it fits the GPU's SMs and shared memory; None where none
    fits."""
    plan = sequence_plan(mode, batch, hidden, 0, dtype, sms, shared=shared, directions=directions)
    if not (plan.resident and plan.directions == directions):
        plan = dispatch.resident_plan(batch, hidden, dtype, sms, True, directions=directions)
    fits = dispatch.resident_bytes(mode, hidden, dtype, plan.blocks.block_b) <= shared - dispatch.SHARED_MARGIN
    return plan if plan.barrier and fits else None


def check(name: str, dtype: torch.dtype, batch: int, hidden: int, directions: int, device, sms: int,
          one=None) -> bool:
    """``name``'s forms bitwise equal in ``directions`` directions (2: both in one launch, the second in
    reverse); ``one`` the one-launch plan (default: the streaming one of ``_slices``)."""
    cell, proj, layer_norm = CELLS[name]
    a = _inputs(cell, proj, batch, hidden, dtype, device, directions, layer_norm)
    mode = _mode(name)
    reverse = False
    if one is None:
        slices = _slices(mode, batch, hidden, hidden // 2 if proj else 0, dtype, sms, directions)
        one = dispatch.for_mode(make_plan(batch, hidden, dtype, slices, sms, concurrent=True, directions=directions),
                                mode)
    stepped = dataclasses.replace(one, one_launch=False)
    start = time.perf_counter()
    want, _ = _run(a, cell, reverse, stepped)
    with concurrent() if interpreting() else contextlib.nullcontext():
        got, launches = _run(a, cell, reverse, one)
    if device.type == "cuda":
        torch.cuda.synchronize()
    same = [torch.equal(g.nan_to_num(nan=7.0), w.nan_to_num(nan=7.0)) and torch.equal(g.isnan(), w.isnan())
            for g, w in zip(got, want)]
    single = launches == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1}
    tiles, n = one.grid(batch)
    verdict = "ok" if all(same) and single and one.barrier else "DIFFERS" if not all(same) else "NOT ONE LAUNCH"
    differing = [i for i, s in enumerate(same) if not s]
    form = "resident" if one.resident else "streamed"
    print(f"{verdict:<14} {name:<9} {form:<8} {str(dtype).removeprefix('torch.'):<8} B={batch:<4} H={hidden:<5} "
          f"{'both directions' if directions == 2 else 'forward'} grid {tiles}x{n} launches {launches}"
          + (f" differing results {differing}" if differing else "") + f" {time.perf_counter() - start:.2f} s",
          flush=True)
    return verdict == "ok"


def _mode(name: str) -> str:
    """The dispatcher's mode of a case's cell (haste's LayerNorm cells: "LN_LSTM", "LN_GRU")."""
    return name.removesuffix("_proj").upper()


@contextlib.contextmanager
def concurrent():
    """One thread per program in Triton's interpreter (the CPU rehearsal), the last slice of each batch tile
    straggling, from the test suite's helper."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
    from interpreter_threads import concurrent_programs

    with concurrent_programs(straggler_s=STRAGGLER_S):
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="B=19, H=40, bf16 only (the CPU rehearsal)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not interpreting() else "cpu")
    sms, shared = device_sms(device), device_shared(device)
    batches, hiddens = ((19,), (40,)) if args.quick else ((1, 16, 64, 256), (256, 768, 2048))
    # the LayerNorm cells at two batches of H = 768 on the GPU (the unit tests run their barriers in the interpreter)
    cases = [(name, torch.bfloat16) for name in CELLS if not CELLS[name][2]]
    cases += [] if args.quick else [("lstm", torch.float32), ("ln_lstm", torch.bfloat16), ("ln_gru", torch.bfloat16)]
    if interpreting():
        print(f"interpreter: the one launch runs one thread per program, each store of the last hidden slice of "
              f"a batch tile {STRAGGLER_S} s late", flush=True)
    ok, total = 0, 0
    for i, (name, dtype) in enumerate(cases):
        normalised = CELLS[name][2]
        for batch in (16, 64) if normalised else batches:
            for hidden in (768,) if normalised else hiddens:
                total += 1
                ok += check(name, dtype, batch, hidden, 1 + i % 2, device=device, sms=sms)
                mode = _mode(name)
                directions = 2 - i % 2
                projected = CELLS[name][1]
                resident = None if projected else resident_plan(mode, batch, hidden, dtype, sms, shared, directions)
                if resident is not None:  # the weight-stationary form (LSTM with a projection streams)
                    total += 1
                    ok += check(name, dtype, batch, hidden, directions, device=device, sms=sms, one=resident)
    print(f"bitwise: {ok} of {total} cases identical in one launch and step by step", flush=True)
    return 0 if ok == total else 1


if __name__ == "__main__":
    sys.exit(main())
