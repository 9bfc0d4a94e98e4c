"""The sequence kernels' launch options: blocks follow the TF32 switch, register and pipeline options the backend.

The kernels themselves are tested through their op (tests/test_sequence_ops.py) and the layers.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from fused_rnn.kernels.launch import count_launches, poison_outputs
from interpreter_threads import bytes_loaded_from, concurrent_programs

from fused_rnn.dispatch import make_plan, resident_plan
from fused_rnn.kernels import sequence_kernels as K


def _meta(cell: int, dtype: torch.dtype) -> dict:
    return K._meta(cell, False, dtype, make_plan(64, 512, dtype, 4, 132, concurrent=True))


def test_fp32_takes_16_wide_blocks_with_or_without_tf32_and_half_types_32(monkeypatch):
    """The TF32 switch sets the products' precision; fp32 blocks are 16 wide either way (32-wide fp32 blocks of
    the gates side by side spilled on sm_90), half types' 32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("tf32", 16, 16)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    meta = _meta(K.LSTM, torch.float32)
    assert (meta["DOT_PREC"], meta["BLOCK_H"], meta["BLOCK_K"]) == ("ieee", 16, 16)
    meta = _meta(K.LSTM, torch.bfloat16)
    assert (meta["BLOCK_H"], meta["BLOCK_K"]) == (32, 32)


@pytest.mark.parametrize(("hip", "present", "absent"), [(None, {"maxnreg": 255}, "num_stages"),
                                                        ("6.0", {"num_stages": 1}, "maxnreg")], ids=["cuda", "rocm"])
def test_register_and_pipeline_options_follow_the_backend(monkeypatch, hip, present, absent):
    """NVIDIA: every register a thread can have (ptxas would cap at 128 and spill); AMD: one pipeline stage
    (SGPRs), and no maxnreg, which Triton's AMD backend rejects."""
    monkeypatch.setattr(torch.version, "hip", hip)
    meta = _meta(K.GRU, torch.bfloat16)
    assert present.items() <= meta.items() and absent not in meta


# ----------------------------------------------------------------------------
# One launch with real barriers against one launch per step and phase
# ----------------------------------------------------------------------------
T, B, H, P = 4, 19, 40, 21  # 2 batch tiles; 3 slices of 16 units of H (and of the projection P)
GRID = (2, 3)
# Spins of a barrier wait in the threaded tests: a few seconds of the interpreter, far more than the straggler's
# delays, so a barrier that cannot meet fails fast instead of hanging.
TEST_SPIN_LIMIT = 1 << 15


def _layer(cell: int, proj: int, device, directions: int = 1, layer_norm: bool = False) -> dict:
    """A layer's inputs for the launchers, every direction stacked (xp and the outputs side by side);
    ``layer_norm``: haste's normalisation's gains (and the LSTM's c bias), away from 1 and 0."""
    torch.manual_seed(cell + proj)
    R, D = proj or H, directions
    G = K.GATES[cell] * H

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, dtype=torch.float64, device=device) * scale

    owned = K.OWNED[cell] if cell != K.GRU else 0
    return dict(
        xp=randn(T, B, D * G), w_hh=randn(D, G, R, scale=0.3), b_hn=randn(D, H) if cell == K.GRU else None,
        w_hr=randn(D, R, H, scale=0.3) if proj else None, h0=randn(D, B, R),
        c0=randn(D, B, owned * H).abs() if owned else None,  # the sLSTM's n >= 0
        lengths=torch.tensor([T, 1, 3, 2] * 4 + [2, T, 1], device=device),
        ln=1.0 + randn(D, G + (2 * H if cell == K.LSTM else 0), scale=0.3) if layer_norm else None,
    )


def _forward_and_backward(cell: int, proj: int, reverse: bool, plan, device, layer=None, layer_norm: bool = False):
    """Every output of the forward and backward launchers under ``plan``, and the launch counter."""
    a = layer or _layer(cell, proj, device, plan.directions, layer_norm)
    with count_launches() as launches, poison_outputs():  # what no kernel writes is NaN in both forms
        out = K.sequence_forward(a["xp"], a["w_hh"], a["b_hn"], a["w_hr"], a["h0"], a["c0"], a["lengths"], cell,
                                 reverse, True, plan, ln=a["ln"])
        y, h_n, c_n, ws, cs, ms, ns = out
        torch.manual_seed(7)
        carried = K.CARRIED[cell] * c_n.shape[-1] // max(K.OWNED[cell], 1)  # LSTM c; sLSTM c, n (not m)
        dy, dh_n = torch.randn_like(y), torch.randn_like(h_n)
        dc_n = torch.randn_like(c_n)[..., :carried] if carried else None
        # gradients of every step's c (and n); not with layer normalisation (its layers have no such output)
        dcs = torch.randn_like(cs)[..., :carried] if carried and not layer_norm else None
        grads = K.sequence_backward(dy, dh_n, dc_n, a["w_hh"], a["w_hr"], a["h0"], a["c0"], a["lengths"], y, ws, cs,
                                    cell, reverse, plan, dcs, ln=a["ln"], ns=ns)
    return [*out, *grads], launches


def _plans(resident: bool, directions: int = 1) -> tuple:
    """(one launch per step and phase, one launch with barriers) on the GRID (times the directions), streaming
    W_hh or resident."""
    if resident:
        forms = [resident_plan(B, H, torch.float64, 132, concurrent=c, directions=directions) for c in (False, True)]
    else:
        forms = [make_plan(B, H, torch.float64, 3, 132, concurrent=c, directions=directions) for c in (False, True)]
    stepped, persistent = forms
    grid = (directions * GRID[0], GRID[1])
    assert persistent.barrier and not stepped.one_launch and stepped.grid(B) == persistent.grid(B) == grid
    return stepped, persistent


# (cell, projection, reverse, directions, layer norm): direction 1 of a bidirectional launch runs in reverse.
BARRIER_CASES = [(K.LSTM, 0, False, 1, False), (K.LSTM, P, True, 1, False), (K.GRU, 0, True, 1, False),
                 (K.RNN_TANH, 0, False, 1, False), (K.LSTM, P, False, 2, False), (K.GRU, 0, False, 2, False),
                 (K.SLSTM, 0, True, 1, False), (K.LSTM, 0, False, 1, True), (K.GRU, 0, True, 1, True)]


def _assert_bitwise(got: list, want: list) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(g, w, rtol=0, atol=0, equal_nan=True, msg=f"result {i} differs")


@pytest.mark.parametrize("resident", [False, True], ids=["streamed", "resident"])
@pytest.mark.parametrize(("cell", "proj", "reverse", "directions", "layer_norm"), BARRIER_CASES,
                         ids=["lstm", "lstm-proj-rev", "gru-rev", "rnn", "lstm-proj-bi", "gru-bi", "slstm-rev",
                              "ln-lstm", "ln-gru-rev"])
def test_one_launch_with_barriers_equals_one_launch_per_step(cell, proj, reverse, directions, layer_norm, resident,
                                                             device, monkeypatch):
    """The persistent form (one launch, 3 slices per batch tile meeting at the barrier each phase; both
    directions of a bidirectional layer in one launch, each (direction, batch tile) with its own counter),
    streaming W_hh or keeping it resident, gives the same bits as one launch per step and phase (same code, same
    sums in the same order). In the interpreter the one launch runs one thread per program, the last slice of
    each tile slowed down, so its barriers really wait (``interpreter_threads``): too many expected arrivals
    give up after TEST_SPIN_LIMIT spins and raise, too few, a wrong parity or a missing barrier read state not
    yet written (a different result). With layer normalisation the phases per step are three (LSTM) or two
    (GRU) forward, one more backward: each barrier ends the writes of partial row statistics others read."""
    monkeypatch.setattr(K, "SPIN_LIMIT", TEST_SPIN_LIMIT)
    stepped, persistent = _plans(resident, directions)
    grid = (directions * GRID[0], GRID[1])
    want, stepped_launches = _forward_and_backward(cell, proj, reverse, stepped, device, layer_norm=layer_norm)
    # The last slice of each tile stores slowly, so it always arrives last (a barrier that opens early shows).
    with concurrent_programs(straggler_s=0.02) if device == "cpu" else contextlib.nullcontext() as threads:
        got, launches = _forward_and_backward(cell, proj, reverse, persistent, device, layer_norm=layer_norm)
    phases = (3 if cell == K.LSTM else 2) if layer_norm else 2 if proj else 1
    assert stepped_launches.by_kernel == {"sequence_fwd_kernel": T * phases, "sequence_bwd_kernel": T * (phases + 1)}
    assert launches.by_kernel == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1}
    assert launches.grids == {"sequence_fwd_kernel": {grid}, "sequence_bwd_kernel": {grid}}
    if device == "cpu":  # every program of each launch ran in a thread of its own, all at once
        assert threads == [grid[0] * grid[1]] * 2
    _assert_bitwise(got, want)


# ----------------------------------------------------------------------------
# Heads: programs meet only with those that share their heads, and not at all when each owns whole heads
# ----------------------------------------------------------------------------
HEADS_H = 64  # 4 blocks of 16 units per batch tile


def _head_layer(cell: int, head: int, directions: int, device) -> dict:
    """A layer whose W_hh is block-diagonal with heads ``head`` units wide, stored compact (D, G, head)."""
    layer = _layer(cell, 0, device, directions)
    G = K.GATES[cell] * HEADS_H
    torch.manual_seed(head)
    owned = K.OWNED[cell] if cell != K.GRU else 0
    layer.update(xp=torch.randn(T, B, directions * G, dtype=torch.float64, device=device),
                 w_hh=0.3 * torch.randn(directions, G, head, dtype=torch.float64, device=device),
                 b_hn=torch.randn(directions, HEADS_H, dtype=torch.float64, device=device) if cell == K.GRU else None,
                 h0=torch.randn(directions, B, HEADS_H, dtype=torch.float64, device=device),
                 c0=torch.rand(directions, B, owned * HEADS_H, dtype=torch.float64, device=device) if owned else None)
    return layer


def _recording_barriers(monkeypatch) -> list[bool]:
    """The BARRIER constexpr of every sequence kernel launch from now on."""
    seen, real_launch = [], K.launch

    def recording(kernel, grid, *args, **kwargs):
        seen.append(kwargs["BARRIER"])
        real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(K, "launch", recording)
    return seen


# (cell, head width, resident, directions): 32-wide heads span two programs of 16 units (they meet in pairs);
# 16-wide heads are one program each (no program meets another).
HEAD_CASES = [(K.LSTM, 32, True, 1), (K.GRU, 32, False, 2), (K.SLSTM, 32, False, 1), (K.SLSTM, 16, True, 2),
              (K.RNN_TANH, 16, False, 1)]


@pytest.mark.parametrize(("cell", "head", "resident", "directions"), HEAD_CASES,
                         ids=["lstm-32-resident", "gru-32-bi", "slstm-32", "slstm-16-resident-bi", "rnn-16"])
def test_heads_meet_only_within_a_head_and_whole_heads_never(cell, head, resident, directions, device, monkeypatch):
    """With heads, a plan's programs that share a head meet at a barrier with a counter per (direction, batch
    tile, head), and programs that each own whole heads never meet: the plan says so (``meeting``), the kernels
    launch with BARRIER off, once per layer even where the programs run one after another (the interpreter).
    The one launch with real barriers (threads, a slowed last program) gives the bits of one launch per step
    and phase, forward and backward."""
    monkeypatch.setattr(K, "SPIN_LIMIT", TEST_SPIN_LIMIT)
    if resident:
        forms = [resident_plan(B, HEADS_H, torch.float64, 132, concurrent=c, directions=directions, head_dim=head)
                 for c in (False, True)]
    else:
        forms = [make_plan(B, HEADS_H, torch.float64, 4, 132, concurrent=c, directions=directions, head_dim=head)
                 for c in (False, True)]
    stepped, persistent = forms
    grid = (directions * 2, 4)
    assert stepped.grid(B) == persistent.grid(B) == grid and persistent.columns(HEADS_H) == 16
    layer = _head_layer(cell, head, directions, device)
    barriers = _recording_barriers(monkeypatch)
    want, stepped_launches = _forward_and_backward(cell, 0, False, stepped, device, layer)
    with concurrent_programs(straggler_s=0.02) if device == "cpu" else contextlib.nullcontext():
        got, launches = _forward_and_backward(cell, 0, False, persistent, device, layer)
    if head == 16:  # each program owns a whole head
        assert persistent.meeting == stepped.meeting == 1 and not persistent.barrier and stepped.one_launch
        assert stepped_launches.by_kernel == launches.by_kernel == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1}
        assert barriers == [False] * 4
    else:  # two programs per head meet
        assert persistent.meeting == 2 and persistent.barrier and not stepped.one_launch
        assert stepped_launches.by_kernel == {"sequence_fwd_kernel": T, "sequence_bwd_kernel": 2 * T}
        assert launches.by_kernel == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1}
        assert barriers == [False] * 3 * T + [True] * 2
    _assert_bitwise(got, want)


def test_a_refused_cooperative_launch_runs_step_by_step(device, monkeypatch, caplog):
    """When the driver refuses the one-launch grid (more programs than the GPU holds at once, or SMs held by
    other kernels), the launcher logs why once and runs the same plan one launch per step and phase: the same
    bits. The refusal is Triton's own error for CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE."""
    stepped, persistent = _plans(True)
    want, _ = _forward_and_backward(K.LSTM, P, False, stepped, device)
    real_launch = K.launch

    def refusing(kernel, grid, *args, **kwargs):
        if kwargs.get("launch_cooperative_grid"):
            raise RuntimeError(f"Triton Error [CUDA]: {K.REFUSED}")
        real_launch(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(K, "launch", refusing)
    monkeypatch.setattr(K, "_refusals_logged", set())
    with caplog.at_level("WARNING", logger="fused_rnn"):
        got, launches = _forward_and_backward(K.LSTM, P, False, persistent, device)
    assert launches.by_kernel == {"sequence_fwd_kernel": T * 2, "sequence_bwd_kernel": T * 3}
    assert launches.grids == {"sequence_fwd_kernel": {GRID}, "sequence_bwd_kernel": {GRID}}
    assert sum("refused a one-launch" in r.message for r in caplog.records) == 2  # once per kernel
    _assert_bitwise(got, want)


def test_a_grid_that_cannot_meet_raises_instead_of_hanging(device, monkeypatch):
    """Programs that run one after another (the interpreter without threads) never meet at the barrier: each
    wait gives up after SPIN_LIMIT spins, the rest of the launch passes, and the launcher raises."""
    if device != "cpu":
        pytest.skip("needs programs that run one after another: Triton's interpreter")
    monkeypatch.setattr(K, "SPIN_LIMIT", 50)
    _, persistent = _plans(False)
    with pytest.raises(RuntimeError, match="barrier waited 50 spins"):
        _forward_and_backward(K.GRU, 0, False, persistent, device)


# ----------------------------------------------------------------------------
# Weight-stationary: W_hh read once per launch, whatever the length
# ----------------------------------------------------------------------------
def _w_hh_bytes_read(plan, steps: int, device) -> tuple[int, int]:
    """Bytes the forward and the backward launch load from W_hh's storage over ``steps`` steps (LSTM)."""
    layer = _layer(K.LSTM, 0, device)
    layer["xp"], layer["lengths"] = layer["xp"][:steps], layer["lengths"].clamp(max=steps)
    w_hh = layer["w_hh"]
    with concurrent_programs(straggler_s=0.0) if plan.barrier else contextlib.nullcontext():
        with bytes_loaded_from(w_hh) as forward:
            out = K.sequence_forward(layer["xp"], w_hh, None, None, layer["h0"], layer["c0"], layer["lengths"],
                                     K.LSTM, False, True, plan)
        y, h_n, c_n, ws, cs, *_ = out
        with bytes_loaded_from(w_hh) as backward:
            K.sequence_backward(torch.ones_like(y), torch.ones_like(h_n), torch.ones_like(c_n), w_hh, None,
                                layer["h0"], layer["c0"], layer["lengths"], y, ws, cs, K.LSTM, False, plan)
    return forward[0], backward[0]


def test_the_resident_form_reads_w_hh_once_per_launch(device, monkeypatch):
    """Counted by address in the interpreter: in one launch each program loads its slice of W_hh once (the
    programs of a batch tile cover W_hh exactly once, forward and backward), whatever the length; streaming,
    every program reads its slice every step."""
    if device != "cpu":
        pytest.skip("counts the loads of Triton's interpreter")
    monkeypatch.setattr(K, "SPIN_LIMIT", TEST_SPIN_LIMIT)
    tiles = GRID[0]
    once = tiles * 4 * H * H * 8  # every batch tile's programs hold all of W_hh (4H x H, fp64) between them
    _, resident = _plans(True)
    for steps in (1, T):
        assert _w_hh_bytes_read(resident, steps, device) == (once, once), steps
    stepped_streaming, _ = _plans(False)
    assert _w_hh_bytes_read(stepped_streaming, T, device) == (T * once, T * once)


def test_the_cooperative_launch_option_exists_in_this_triton():
    """The one-launch grid asks the driver for a cooperative launch through an option of Triton's NVIDIA and AMD
    backends (present in triton 3.6, the GPU machine's, and 3.9, CI's; ``make compat`` runs this with 3.6)."""
    from triton.backends.amd.compiler import HIPOptions
    from triton.backends.nvidia.compiler import CUDAOptions

    for options in (CUDAOptions, HIPOptions):
        assert options.__dataclass_fields__["launch_cooperative_grid"].default is False, options
