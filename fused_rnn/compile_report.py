"""Ahead-of-time compile report: every Triton kernel, for every configuration the launchers pick, on real GPU targets.

No GPU is needed. The configurations come from the launchers themselves: each
grid case calls the public launchers of ``fused_rnn.kernels`` on tensors of
device "meta" with the kernel launch replaced by a recorder, and Triton's own
argument binder turns each recorded launch into the signature, constexprs,
alignment attributes and options the JIT would compile on that target. Nothing
is copied by hand, so a new argument or block choice shows up here at once.
Identical configurations are compiled once per target with ``triton.compile``,
and the resources of each binary are read back: ``cuobjdump
--dump-resource-usage`` on the cubin for NVIDIA, the amdgcn metadata for AMD.

    python -m fused_rnn.compile_report [--quick] [--targets sm_80,sm_90,gfx942]
                                       [--markdown PATH] [--json PATH] [--jobs N]

Exits with status 1, naming each failing configuration under the table, when
any configuration fails to compile, spills registers, uses local (scratch)
memory, needs more shared memory than its target has, or is a one-launch grid
(with barriers) larger than its target holds at once; or when no case reaches
some kernel on some target.

Capture and compilation run in worker processes started without
TRITON_INTERPRET, so the kernels are real JIT functions there and no
interpreter-only choice (such as ``DOT_FP32``) leaks into the configurations.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import itertools
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.compiler.compiler import make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from .dispatch import resident_budget, sequence_plan
from .kernels import cell_kernels, sequence_kernels
from .ir_reads import w_placement
from .kernels.launch import interpreting

KERNEL_MODULES = (cell_kernels, sequence_kernels)

# ----------------------------------------------------------------------------
# Targets and the grid of cases
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A GPU to compile for: its shared memory (LDS) per program and per SM (CU) in bytes, its SMs (CUs), and
    the registers one SM (NVIDIA) or one SIMD lane (AMD: VGPRs and AGPRs together) has."""

    name: str
    backend: str
    arch: int | str
    warp_size: int
    shared_limit: int
    sms: int
    shared_per_sm: int
    registers: int

    @property
    def gpu(self) -> GPUTarget:
        return GPUTarget(self.backend, self.arch, self.warp_size)


TARGETS = {
    t.name: t
    for t in (
        Target("sm_80", "cuda", 80, 32, 163 * 1024, 108, 164 * 1024, 65536),  # A100 SXM
        Target("sm_90", "cuda", 90, 32, 227 * 1024, 132, 228 * 1024, 65536),  # H100 SXM
        Target("gfx942", "hip", "gfx942", 64, 64 * 1024, 304, 64 * 1024, 512),  # MI300X
    )
}

CELLS = ("LSTM", "LSTM_PROJ", "GRU", "RNN_TANH", "RNN_RELU", "SLSTM")


@dataclass(frozen=True)
class Case:
    """One layer the launchers are called for: cell, dtype, sizes, direction, biases and the TF32 switch."""

    cell: str  # one of CELLS; LSTM_PROJ is an LSTM with proj_size = hidden // 2
    dtype: str  # torch dtype name
    hidden: int
    batch: int
    reverse: bool  # one direction in reverse; else a bidirectional layer (both directions, the second in reverse)
    bias: bool
    tf32: bool  # torch.backends.cudnn.allow_tf32, which the sequence kernels follow
    heads: int = 1  # heads of a block-diagonal W_hh (the multi-head layers, FlashRNN's API; IndRNN: H heads)
    zoneout: bool = False  # haste's zoneout: training masks and the eval factor
    layer_norm: bool = False  # haste's LayerNorm LSTM / GRU: the recurrent products (and c) normalised

    def __str__(self) -> str:
        direction = "reverse" if self.reverse else "bidirectional"
        heads = [f"{self.heads}x{self.hidden // self.heads}"] if self.heads > 1 else []
        flags = [self.cell, self.dtype, f"H={self.hidden}", *heads, f"B={self.batch}", direction]
        flags += ["zoneout"] if self.zoneout else []
        flags += ["layer norm"] if self.layer_norm else []
        flags += [] if self.bias else ["no bias"]
        flags += [] if self.tf32 else ["no tf32"]
        return " ".join(flags)


@dataclass(frozen=True)
class Grid:
    """Axes of the cases: every combination is one Case."""

    cells: tuple[str, ...]
    dtypes: tuple[str, ...]
    hidden: tuple[int, ...]
    batch: tuple[int, ...]
    reverse: tuple[bool, ...]
    bias: tuple[bool, ...]
    tf32: tuple[bool, ...]

    def cases(self) -> list[Case]:
        axes = (self.cells, self.dtypes, self.hidden, self.batch, self.reverse, self.bias, self.tf32)
        return [Case(*values) for values in itertools.product(*axes)]

    def __str__(self) -> str:
        return "; ".join(f"{name}: {', '.join(map(str, values))}" for name, values in asdict(self).items())


# The documented grid; it holds the benchmark's (hidden 64 to 2048, batch 1 to 256) as far as the kernels are
# specialised. Hidden 16 takes the narrowest sequence-kernel blocks on tensor cores, 20 the widest blocks mostly
# masked (the most registers), 64 and 2048 the widest with sizes that are multiples of 16, 129 the widest without;
# weight-stationary plans specialise on the padded reduction width KP: 16, 20, 64, 100, 129, 512 and 768 give
# every KP from 16 to 1024 (tiles of 16 rows, the only height the plans give them);
# batch 1 and 4096 give strides without and with factors of 16 and the smallest and largest step-kernel tiles.
FULL = Grid(
    cells=CELLS,
    dtypes=("float32", "float16", "bfloat16", "float64"),
    hidden=(16, 20, 64, 100, 129, 512, 768, 2048),
    batch=(1, 4096),
    reverse=(False, True),
    bias=(True, False),
    tf32=(True, False),
)
# Heads (the multi-head layers and FlashRNN's API): FlashRNN's setup, total hidden 768 in heads of 16, 32, 64 and
# 128 (a head per program, and heads over 2, 4, 8 programs of 16 units), and heads 24 and 8 wide (blocks of 16
# units straddling two heads, and several heads a block). One direction and both, batch 16 (FlashRNN's) and 4096.
HEAD_SHAPES = ((768, 48), (768, 24), (768, 12), (768, 6), (96, 4), (64, 8))


def head_cases() -> list[Case]:
    """The heads grid: every multi-head cell, dtype and head shape (``HEAD_SHAPES``)."""
    return [Case(cell, dtype, hidden, batch, reverse, True, tf32, heads)
            for cell in ("LSTM", "GRU", "RNN_TANH", "SLSTM")
            for dtype in ("float32", "float16", "bfloat16", "float64")
            for hidden, heads in HEAD_SHAPES for batch in (16, 4096) for reverse in (False, True)
            for tf32 in ((True, False) if dtype == "float32" else (True,))]


def zoneout_cases() -> list[Case]:
    """haste's regularised cells: zoneout on the LSTM, GRU, RNN and IndRNN (one-unit heads), every dtype."""
    return [Case(cell, dtype, hidden, batch, reverse, True, True, hidden if indrnn else 1, zoneout=True)
            for cell, indrnn in (("LSTM", False), ("GRU", False), ("RNN_TANH", False), ("RNN_RELU", False),
                                 ("RNN_TANH", True))
            for dtype in ("float32", "float16", "bfloat16", "float64")
            for hidden in (40, 768) for batch in (16, 4096) for reverse in (False, True)]


def layer_norm_cases() -> list[Case]:
    """haste's LayerNorm LSTM and GRU: every dtype, the TF32 switch, with and without zoneout, a hidden size not a
    multiple of 16, the widest the LSTM's backward keeps on chip (512) and wider, one program and several, both
    directions."""
    return [Case(cell, dtype, hidden, batch, reverse, True, tf32, zoneout=zoneout, layer_norm=True)
            for cell in ("LSTM", "GRU")
            for dtype in ("float32", "float16", "bfloat16", "float64")
            for hidden in (40, 512, 768, 2048) for batch in (16, 4096) for reverse in (False, True)
            for tf32 in ((True, False) if dtype == "float32" else (True,)) for zoneout in (False, True)]


# Every kernel on every target, each cell's code path (CELL, HAS_PROJ, HAS_BHN, RELU) and accumulator type, both
# directions, products on tensor cores (TF32, bf16, fp16) and on FMA units (fp64, IEEE fp32), a hidden size that is
# not a multiple of 16 and the largest step-kernel tile (8 x 256). The LSTM with TF32 at hidden 20 (masked 32-wide
# blocks) is the heaviest in registers. Small enough for CI: the full grid covers the rest.
QUICK = (
    Case("LSTM", "float64", 1000, 8, reverse=True, bias=True, tf32=True),
    Case("LSTM", "float32", 20, 1, reverse=False, bias=True, tf32=True),
    Case("LSTM_PROJ", "bfloat16", 1000, 8, reverse=False, bias=True, tf32=True),
    Case("GRU", "float32", 1000, 8, reverse=True, bias=True, tf32=False),
    Case("RNN_RELU", "float16", 1000, 8, reverse=False, bias=False, tf32=True),
    Case("LSTM", "bfloat16", 768, 16, reverse=False, bias=True, tf32=True),  # weight-stationary (FlashRNN's setup)
    Case("GRU", "float16", 512, 64, reverse=True, bias=True, tf32=True),  # weight-stationary, 4 batch tiles
    Case("SLSTM", "bfloat16", 768, 16, reverse=True, bias=True, tf32=True, heads=48),  # a head per program
    Case("LSTM", "bfloat16", 768, 16, reverse=False, bias=True, tf32=True, heads=12),  # 4 programs a head
    Case("GRU", "float32", 96, 8, reverse=True, bias=True, tf32=False, heads=4),  # blocks straddling heads
    Case("LSTM", "float16", 768, 16, reverse=False, bias=True, tf32=True, zoneout=True),  # haste's zoneout
    Case("RNN_TANH", "float32", 40, 16, reverse=True, bias=True, tf32=True, heads=40, zoneout=True),  # IndRNN
    # haste's LayerNorm LSTM, weight-stationary both ways at the widest resident backward (KP 512), both directions
    Case("LSTM", "bfloat16", 512, 16, reverse=False, bias=True, tf32=True, layer_norm=True),
    Case("GRU", "float32", 40, 16, reverse=True, bias=True, tf32=False, zoneout=True, layer_norm=True),
)

# ----------------------------------------------------------------------------
# Capture: call the launchers with a recorder in place of the launch
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One compilation: a kernel specialised as Triton's JIT would for one launch, on one target."""

    kernel: str
    target: str
    signature: tuple[tuple[str, str], ...]  # (parameter, type): "*bf16", "i32", "constexpr", ...
    constexprs: tuple[tuple[str, object], ...]  # declared constexprs and specialised arguments (None, 1)
    attrs: tuple[tuple[str, str], ...]  # (parameter, specialisation): "D" divisible by 16, "S" 32-bit range (AMD)
    options: tuple[tuple[str, object], ...]  # num_warps, num_stages as the launcher passes them
    label: str = field(compare=False)  # the declared constexprs and options, for the table


@functools.cache
def _kernels() -> dict[str, JITFunction]:
    """Every public @triton.jit function defined in the kernel modules, by name."""
    kernels = {}
    for module in KERNEL_MODULES:
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and obj.fn.__module__ == module.__name__ and not name.startswith("_"):
                kernels[name] = obj
    return kernels


def _is_sequence_kernel(name: str) -> bool:
    return hasattr(sequence_kernels, name)


def kernel_names() -> list[str]:
    """Names of the project's kernels (call in a worker: needs kernels compiled by the JIT, not interpreted)."""
    return sorted(_kernels())


@contextlib.contextmanager
def _recorded_launches() -> Iterator[list[tuple]]:
    """Replace the launch in every kernel module by a recorder; yields the (kernel, grid, args, kwargs) it
    records."""
    launches: list[tuple] = []

    def record(kernel, grid, *args, **kwargs) -> None:
        launches.append((kernel, grid, args, kwargs))

    with contextlib.ExitStack() as stack:
        for module in KERNEL_MODULES:
            stack.enter_context(mock.patch.object(module, "launch", record))
        yield launches


@contextlib.contextmanager
def _cudnn_tf32(enabled: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


def _cell_id(case: Case) -> int:
    """The sequence kernels' CELL constant of the case's cell."""
    return sequence_kernels.CELLS[case.cell.removesuffix("_PROJ")]


def _call_cell_launchers(case: Case) -> None:
    """The step kernels' launchers, forward and backward, as the cell ops call them (N = batch)."""
    C, S, cell = cell_kernels, sequence_kernels, _cell_id(case)
    if cell == S.SLSTM:  # no step kernels: the sLSTM runs on the sequence kernels only
        return
    n, h, dtype = case.batch, case.hidden, getattr(torch, case.dtype)
    gates = S.GATES[cell] * h

    def meta(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    ig, hg, state = meta(n, gates), meta(n, gates), meta(n, h)
    b_ih, b_hh = (meta(gates), meta(gates)) if case.bias else (None, None)
    if cell == S.LSTM:
        C.lstm_cell_forward(ig, hg, b_ih, b_hh, state)
        for dh, dc in ((meta(n, h), meta(n, h)), (meta(n, h), None), (None, meta(n, h))):  # either may be None
            C.lstm_cell_backward(dh, dc, ig, hg, b_ih, b_hh, state)
    elif cell == S.GRU:
        C.gru_cell_forward(ig, hg, b_ih, b_hh, state)
        C.gru_cell_backward(meta(n, h), ig, hg, b_ih, b_hh, state)
    else:
        relu = cell == S.RNN_RELU
        hy = C.rnn_cell_forward(ig, hg, b_ih, b_hh, relu)
        C.rnn_cell_backward(meta(n, h), hy, relu)


SEQUENCE_STEPS = 8  # T is not specialised on; it only scales the tensors


def _call_sequence_launchers(case: Case, sms: int, shared: int) -> None:
    """The sequence kernels' launchers as the layers call them on a GPU of ``sms`` SMs whose weight-stationary
    programs may keep ``shared`` bytes on chip (``dispatch.resident_budget``): forward without saving
    (inference), forward saving the gates, then backward on its outputs; under the dispatcher's plan and, when that has several slices, also one launch per step and
    phase (the form for a grid the GPU cannot hold). A reverse case is one direction in reverse; a forward case
    is a bidirectional layer (both directions in one launch where the plan says so: its grid is the one whose
    fit is checked)."""
    S, cell = sequence_kernels, _cell_id(case)
    T, B, H = SEQUENCE_STEPS, case.batch, case.hidden
    R = H // 2 if case.cell == "LSTM_PROJ" else H
    D = 1 if case.reverse else 2
    dtype = getattr(torch, case.dtype)
    mode = ("LN_" if case.layer_norm else "") + case.cell.removesuffix("_PROJ")  # the op's plan is the LN mode's
    head = H // case.heads if case.heads > 1 else 0
    plan = sequence_plan(mode, B, H, R if R != H else 0, dtype, sms, concurrent=True, shared=shared, directions=D,
                         head_dim=head)
    plans = [plan] + ([dataclasses.replace(plan, one_launch=False)] if plan.barrier else [])

    def meta(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device="meta")

    G = S.GATES[cell] * H
    w_hh, w_hr = meta(D, G, head or R), (meta(D, R, H) if R != H else None)
    b_hn = meta(D, H) if cell == S.GRU and case.bias else None
    owned, carried = (S.OWNED[cell] if cell != S.GRU else 0), S.CARRIED[cell]
    h0, c0 = meta(D, B, R), (meta(D, B, owned * H) if owned else None)
    lengths = meta(B, dtype=torch.int64)
    xp = meta(T, B, D * G)
    for p in plans:
        S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, case.reverse, False, p)  # inference
        y, h_n, c_n, ws, cs, *_ = S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, case.reverse, True,
                                                     p)
        dc_n = meta(D, B, carried * H) if carried else None
        if case.layer_norm:  # inference, then training and its backward (with zoneout's masks when the case has it)
            ln = meta(D, G + (2 * H if cell == S.LSTM else 0))
            keep = meta(T, B, D * H) if case.zoneout else None
            S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, case.reverse, False, p, None, ln)
            y, h_n, c_n, ws, cs, _, ns = S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell,
                                                            case.reverse, True, p, keep, ln)
            S.sequence_backward(torch.empty_like(y), torch.empty_like(h_n), dc_n, w_hh, w_hr, h0, c0, lengths, y, ws,
                                cs, cell, case.reverse, p, None, keep, ln, ns)
            continue
        if case.zoneout:  # training masks, then the eval factor (forward only: eval has no backward)
            keep = meta(T, B, D * H)
            y, h_n, c_n, ws, cs, *_ = S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, case.reverse,
                                                         True, p, keep)
            S.sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell, case.reverse, False, p, meta(1))
            S.sequence_backward(torch.empty_like(y), torch.empty_like(h_n), dc_n, w_hh, w_hr, h0, c0, lengths, y, ws,
                                cs, cell, case.reverse, p, None, keep)
            continue
        # with the gradients of every step's c (and n) too, as FlashRNN's API asks (its states are outputs)
        for dcs in [None] + ([meta(D, T, B, carried * H)] if carried else []):
            S.sequence_backward(
                torch.empty_like(y), torch.empty_like(h_n), dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell,
                case.reverse, p, dcs,
            )


@functools.cache
def _binder(kernel: str, target: str):
    """Triton's argument binder for ``kernel`` on ``target``: args -> (bound, specialisation, options)."""
    fn = _kernels()[kernel]
    return create_function_from_signature(fn.signature, fn.params, make_backend(TARGETS[target].gpu))


def _specialise(kernel, args: tuple, kwargs: dict, target: str) -> Config:
    """The configuration the JIT compiles for this launch on ``target``."""
    name = kernel.fn.__name__
    bound, specialisation, options = _binder(name, target)(*args, **kwargs)
    params = [p.name for p in kernel.params]
    signature = tuple((p, spec[0]) for p, spec in zip(params, specialisation))
    constexprs = tuple((p, bound[p]) for p, (ty, _) in zip(params, specialisation) if ty == "constexpr")
    attrs = tuple((p, key) for p, (ty, key) in zip(params, specialisation) if ty != "constexpr" and key)
    declared = [f"{p.name}={_show(bound[p.name])}" for p in kernel.params if p.is_constexpr]
    label = " ".join(declared + [f"{k}={v}" for k, v in sorted(options.items())])
    return Config(name, target, signature, constexprs, attrs, tuple(sorted(options.items())), label)


def _show(value: object) -> str:
    return str(value) if isinstance(value, triton.language.dtype) else repr(value)


def capture(case: Case, targets: Sequence[str]) -> list[tuple[Config, int]]:
    """Every kernel configuration the launchers pick for ``case``, specialised for each target, with the
    programs of its grid when it is a one-launch sequence kernel with barriers (else 0): those must all be
    resident on the target at once.

    The launchers run once per backend (the sequence launchers once per
    target, whose SM count the plan follows), with ``torch.version.hip`` set as
    on a ROCm build for the AMD targets, since some launch options are NVIDIA-only.
    """
    configs = []
    for backend in sorted({TARGETS[t].backend for t in targets}):
        on_backend = [t for t in targets if TARGETS[t].backend == backend]
        hip = "rocm" if backend == "hip" else None
        with mock.patch.object(torch.version, "hip", hip), _cudnn_tf32(case.tf32):
            with _recorded_launches() as cell_launches:
                _call_cell_launchers(case)
            configs += [(_specialise(k, args, kw, t), 0) for k, _, args, kw in cell_launches for t in on_backend]
            for t in on_backend:  # every case: the dispatcher can send any layer to the sequence kernels
                with _recorded_launches() as sequence_launches:
                    budget = resident_budget(TARGETS[t].shared_limit, TARGETS[t].backend == "hip")
                    _call_sequence_launchers(case, TARGETS[t].sms, budget)
                configs += [
                    (_specialise(k, args, kw, t), grid[0] * grid[1] if kw["BARRIER"] else 0)
                    for k, grid, args, kw in sequence_launches
                ]
    return configs


# ----------------------------------------------------------------------------
# Compile and read the resources back
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Resources of one binary: per thread, except shared memory (per program, static + dynamic)."""

    regs: int  # NVIDIA REG; AMD .vgpr_count (VGPRs and AGPRs)
    spills: int  # bytes to memory: NVIDIA STACK (ptxas spills to the stack frame); AMD 4 per spilled VGPR
    local: int  # bytes: NVIDIA LOCAL; AMD scratch (.private_segment_fixed_size)
    shared: int
    detail: str  # the tool's own figures
    lane_spills: int = 0  # AMD: SGPRs spilled into VGPR lanes (v_writelane / v_readlane, no memory)


def _programs_per_sm(regs: int, shared: int, num_warps: int, props) -> int:
    """Programs of a compiled kernel one NVIDIA SM holds at once: its registers (allocated per warp in units of
    256), its shared memory and its threads against the SM's (``props``: fields as torch's device properties)."""
    warp = props.warp_size
    per_warp = triton.cdiv(max(regs, 1) * warp, 256) * 256
    by_regs = props.regs_per_multiprocessor // (per_warp * num_warps)
    by_shared = props.shared_memory_per_multiprocessor // shared if shared else by_regs
    by_threads = props.max_threads_per_multi_processor // (warp * num_warps)
    return min(by_regs, by_shared, by_threads)


@dataclass(frozen=True)
class Result:
    config: Config
    usage: Usage | None
    error: str | None
    seconds: float
    one_launch: int = 0  # programs of the largest one-launch grid (with barriers) the dispatcher gives it
    w_hh: str = ""  # sequence kernels: where W_hh lives, read from the TTGIR (``ir_reads.w_placement``)

    def programs_per_sm(self) -> int:
        """Programs one SM (CU) holds at once, from registers, shared memory (LDS) and threads (waves).

        NVIDIA: registers allocated per warp in units of 256, 2048 threads per
        SM. AMD CDNA3: 4 SIMDs per CU, at most 8 waves per SIMD, VGPRs in units
        of 8 out of 512 per lane; a program's waves spread over the SIMDs.
        """
        t, u = TARGETS[self.config.target], self.usage
        warps = dict(self.config.options).get("num_warps", 4)
        if t.backend == "cuda":
            props = SimpleNamespace(warp_size=t.warp_size, regs_per_multiprocessor=t.registers,
                                    shared_memory_per_multiprocessor=t.shared_per_sm, max_threads_per_multi_processor=2048)
            return _programs_per_sm(u.regs, u.shared, warps, props)
        waves_per_simd = min(8, t.registers // (triton.cdiv(max(u.regs, 1), 8) * 8))
        by_lds = t.shared_per_sm // u.shared if u.shared else waves_per_simd
        return min(4 * waves_per_simd // warps, by_lds)

    def held(self) -> int:
        """The largest grid the target holds at once: programs per SM times its SMs."""
        return self.programs_per_sm() * TARGETS[self.config.target].sms

    def problems(self) -> list[str]:
        """What makes this configuration fail the report (empty when it passes)."""
        if self.error is not None:
            return [f"compile error: {self.error}"]
        u, limit = self.usage, TARGETS[self.config.target].shared_limit
        found = [f"spills {u.spills} B"] if u.spills else []
        found += [f"local memory {u.local} B"] if u.local else []
        found += [f"shared {u.shared} B > {limit} B"] if u.shared > limit else []
        if dict(self.config.constexprs).get("KP") and self.w_hh not in ("", "not read") \
                and not self.w_hh.startswith("resident"):
            found += [f"planned weight-stationary but W_hh is {self.w_hh} in the compiled code"]
        if self.one_launch > self.held():
            found += [f"one-launch grid of {self.one_launch} programs > {self.held()} held at once"]
        return found


def _nvidia_usage(compiled) -> Usage:
    """REG, STACK, SHARED, LOCAL from cuobjdump --dump-resource-usage on the cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        command = [triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", f.name]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    line = re.search(r"REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:\d+", out).group(0)
    figures = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
    return Usage(figures["REG"], figures["STACK"], figures["LOCAL"], figures["SHARED"] + compiled.metadata.shared, line)


_AMD_FIELDS = ("vgpr_count", "agpr_count", "sgpr_count", "vgpr_spill_count", "sgpr_spill_count",
               "private_segment_fixed_size", "group_segment_fixed_size")


def _amd_usage(compiled) -> Usage:
    """Register, spill and segment sizes from the kernel metadata in the amdgcn text (absent AGPRs mean none).

    An SGPR spill goes to a lane of a VGPR (``v_writelane``; ``v_readlane`` to reload), not to memory: it is
    counted apart. Should one reach memory, it does so through scratch, which ``local`` counts."""
    found = {k: int(v) for k, v in re.findall(r"^\s+\.(\w+):\s+(\d+)\s*$", compiled.asm["amdgcn"], re.MULTILINE)}
    f = {k: found[k] if k != "agpr_count" else found.get(k, 0) for k in _AMD_FIELDS}
    detail = " ".join(f"{k.removesuffix('_count').removesuffix('_fixed_size')}:{v}" for k, v in f.items())
    return Usage(
        f["vgpr_count"], 4 * f["vgpr_spill_count"], f["private_segment_fixed_size"],
        f["group_segment_fixed_size"] + compiled.metadata.shared, detail, f["sgpr_spill_count"],
    )


def source(config: Config) -> ASTSource:
    """What ``triton.compile`` takes for one configuration."""
    fn, backend = _kernels()[config.kernel], make_backend(TARGETS[config.target].gpu)
    index = {name: (i,) for i, name in enumerate(fn.arg_names)}
    return ASTSource(
        fn, dict(config.signature), {index[p]: v for p, v in config.constexprs},
        {index[p]: backend.parse_attr(a) for p, a in config.attrs},
    )


def compile_config(config: Config) -> Result:
    """Compile one configuration for its target; a compile error is part of the result."""
    target, src = TARGETS[config.target], source(config)
    start = time.perf_counter()
    try:
        compiled = triton.compile(src, target=target.gpu, options=dict(config.options))
    except Exception as error:  # reported per configuration; it fails the report, not the run
        message = f"{type(error).__name__}: {str(error).strip().splitlines()[0]}"
        return Result(config, None, message, time.perf_counter() - start)
    usage = _nvidia_usage(compiled) if target.backend == "cuda" else _amd_usage(compiled)
    w_hh = str(w_placement(compiled.asm["ttgir"])) if _is_sequence_kernel(config.kernel) else ""
    return Result(config, usage, None, time.perf_counter() - start, w_hh=w_hh)


# ----------------------------------------------------------------------------
# The run: worker processes without the interpreter
# ----------------------------------------------------------------------------


def _worker_init() -> None:
    assert not interpreting(), "compile report workers must not run Triton's interpreter"


@contextlib.contextmanager
def _workers(jobs: int, cache_dir: Path | None) -> Iterator[Pool]:
    """A pool of fresh processes whose environment has no TRITON_INTERPRET (and TRITON_CACHE_DIR if given)."""
    saved = dict(os.environ)
    os.environ.pop("TRITON_INTERPRET", None)
    if cache_dir is not None:
        os.environ["TRITON_CACHE_DIR"] = str(cache_dir)
    try:
        pool = multiprocessing.get_context("spawn").Pool(jobs, initializer=_worker_init)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    with pool:
        yield pool


def _capture_case(job: tuple[Case, tuple[str, ...]]) -> tuple[Case, list[Config]]:
    case, targets = job
    return case, capture(case, targets)


@dataclass
class Report:
    """Every compiled configuration, the first case that picked each, and the kernels no case reached."""

    grid: str  # what the cases were
    targets: tuple[str, ...]
    results: list[Result]
    examples: dict[Config, Case]
    cases: int
    uncovered: list[str]
    seconds: float
    jobs: int

    @property
    def failed(self) -> bool:
        return bool(self.uncovered) or any(r.problems() for r in self.results)


def run(cases: Sequence[Case], grid: str, targets: Sequence[str], jobs: int, cache_dir: Path | None = None) -> Report:
    """Capture every case, dedupe, and compile each configuration for ``targets``; ``grid`` describes the cases."""
    start = time.perf_counter()
    targets = tuple(targets)
    with _workers(jobs, cache_dir) as pool:
        names = pool.apply(kernel_names)
        examples: dict[Config, Case] = {}
        one_launch: dict[Config, int] = {}
        for case, configs in pool.imap(_capture_case, [(c, targets) for c in cases], chunksize=16):
            for config, programs in configs:
                examples.setdefault(config, case)
                one_launch[config] = max(one_launch.get(config, 0), programs)
        # Longest first (sequence kernels), so the last workers do not wait on one slow compile.
        order = sorted(examples, key=lambda c: not _is_sequence_kernel(c.kernel))
        print(f"{len(cases)} cases -> {len(order)} configurations to compile", file=sys.stderr, flush=True)
        results = []
        for result in pool.imap_unordered(compile_config, order):
            results.append(dataclasses.replace(result, one_launch=one_launch[result.config]))
            if len(results) % 100 == 0:
                print(f"{len(results)} compiled, {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    reached = {(c.kernel, c.target) for c in examples}
    uncovered = [f"{k} on {t}" for k in names for t in targets if (k, t) not in reached]
    return Report(grid, targets, results, examples, len(cases), uncovered, time.perf_counter() - start, jobs)


# ----------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------


def _severity(result: Result) -> tuple:
    """Sort key, worst first: compile errors, then spills, local memory, shared memory use, registers."""
    if result.usage is None:
        return (0,)
    u, limit = result.usage, TARGETS[result.config.target].shared_limit
    return (1 if result.problems() else 2, -u.spills, -u.local, -u.shared / limit, -u.regs)


def _worst_per_kernel_and_target(results: Iterable[Result]) -> list[tuple[Result, int, int]]:
    """(worst result, configurations, failing configurations) per kernel and target, worst first."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.config.kernel, r.config.target), []).append(r)
    rows = [(min(g, key=_severity), len(g), sum(bool(r.problems()) for r in g)) for g in groups.values()]
    return sorted(rows, key=lambda row: (_severity(row[0]), row[0].config.kernel, row[0].config.target))


def summary_table(report: Report) -> str:
    """Markdown table: one row per kernel and target, showing its worst configuration."""
    lines = [
        "| kernel | target | configs | failing | regs | spill B | local B | shared B / limit | programs / SM "
        "| held at once | worst configuration |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for worst, n, failing in _worst_per_kernel_and_target(report.results):
        c, u = worst.config, worst.usage
        limit = TARGETS[c.target].shared_limit
        figures = "error | | | | | " if u is None else (
            f"{u.regs} | {u.spills} | {u.local} | {u.shared} / {limit} | {worst.programs_per_sm()} | {worst.held()}")
        config = f"{report.examples[c]}: {c.label}" + (f" ({worst.error})" if worst.error else "")
        lines.append(f"| {c.kernel} | {c.target} | {n} | {failing} | {figures} | {config} |")
    return "\n".join(lines)


def w_hh_tile(report: Report) -> list[str]:
    """Whether the sequence kernels' on-chip W_hh block fits: their largest shared memory on each target."""
    lines = []
    for target in report.targets:
        used = [r.usage.shared for r in report.results if r.usage and r.config.target == target
                and _is_sequence_kernel(r.config.kernel)]
        limit = TARGETS[target].shared_limit
        if used:
            verdict = "fits" if max(used) <= limit else "DOES NOT FIT"
            lines.append(f"- W_hh tile of the sequence kernels on {target}: up to {max(used)} of {limit} B, {verdict}")
    return lines


def w_hh_placements(report: Report) -> list[str]:
    """Per target and sequence kernel, where the compiled configurations keep W_hh (from their TTGIR): how many
    load it once before the time loop (resident, and in what memory) and how many read it every step."""
    lines = []
    for target in report.targets:
        for kernel in ("sequence_fwd_kernel", "sequence_bwd_kernel"):
            found = [r.w_hh for r in report.results if r.config.target == target and r.config.kernel == kernel
                     and r.w_hh]
            if found:
                counts = ", ".join(f"{found.count(p)} {p}" for p in sorted(set(found)))
                lines.append(f"- W_hh in the time loop of {kernel} on {target} (TTGIR): {counts}")
        tiles = [_h_tile_bytes(r.config) for r in report.results if r.config.target == target
                 and r.config.kernel == "sequence_fwd_kernel" and r.w_hh.startswith("resident")]
        if tiles:
            lines.append(f"- Weight-stationary forward on {target}: {min(tiles)} to {max(tiles)} B read per program "
                         f"and step (its h tile: BLOCK_B x KP in the storage dtype; W_hh not at all)")
    return lines


def _h_tile_bytes(config: Config) -> int:
    """Bytes of h a weight-stationary forward program reads each step: BLOCK_B rows x KP of hbuf's dtype."""
    constexprs, signature = dict(config.constexprs), dict(config.signature)
    bits = int(re.search(r"\d+", signature["hbuf"]).group(0))
    return constexprs["BLOCK_B"] * constexprs["KP"] * bits // 8


def one_launch_grids(report: Report) -> list[str]:
    """Per target, the largest one-launch grid (with barriers) the dispatcher gives a sequence kernel, against
    the grid the target holds at once for that configuration."""
    lines = []
    for target in report.targets:
        grids = [r for r in report.results if r.one_launch and r.usage and r.config.target == target]
        if grids:
            worst = max(grids, key=lambda r: r.one_launch / r.held() if r.held() else math.inf)
            verdict = "fits" if worst.one_launch <= worst.held() else "DOES NOT FIT"
            lines.append(
                f"- One-launch grids on {target} ({TARGETS[target].sms} SMs or CUs): {len(grids)} configurations, fullest "
                f"{worst.one_launch} programs of {worst.held()} held at once ({worst.programs_per_sm()} per SM, "
                f"{worst.config.kernel}, {report.examples[worst.config]}), {verdict}"
            )
    return lines


SHOWN_FAILURES = 20  # failing configurations named under the table; --json has them all


def lane_spills(report: Report) -> list[str]:
    """The most SGPRs each kernel spills into VGPR lanes on an AMD target (not a failure: no memory)."""
    most: dict[tuple[str, str], Result] = {}
    for r in report.results:
        key = (r.config.kernel, r.config.target)
        if r.usage and r.usage.lane_spills and (key not in most or r.usage.lane_spills > most[key].usage.lane_spills):
            most[key] = r
    return [f"- SGPRs in VGPR lanes, at most: {k} on {t}: {r.usage.lane_spills} ({report.examples[r.config]})"
            for (k, t), r in sorted(most.items())]


def failures(report: Report) -> list[str]:
    """One line per failing configuration, worst first: kernel, target, the case that picked it, what is wrong."""
    failing = sorted((r for r in report.results if r.problems()), key=_severity)
    lines = [f"- FAILING: {r.config.kernel} on {r.config.target} ({report.examples[r.config]}: {r.config.label}): "
             f"{'; '.join(r.problems())}" for r in failing[:SHOWN_FAILURES]]
    if len(failing) > SHOWN_FAILURES:
        lines.append(f"- ... and {len(failing) - SHOWN_FAILURES} more failing configurations (--json has them all)")
    return lines


def summary(report: Report) -> str:
    """The table, whether the W_hh tile fits, the one-launch grids, what failed and how long it took."""
    failing = sum(bool(r.problems()) for r in report.results)
    lines = [summary_table(report), "", *w_hh_tile(report), *w_hh_placements(report), *one_launch_grids(report),
             *lane_spills(report), *failures(report)]
    lines += [f"- NOT COVERED by any case: {u}" for u in report.uncovered]
    lines.append(
        f"- {report.cases} cases -> {len(report.results)} configurations on {', '.join(report.targets)}; "
        f"{failing} failing; {report.seconds:.0f} s with {report.jobs} processes; triton {triton.__version__}"
    )
    return "\n".join(lines)


def to_json(report: Report) -> list[dict]:
    """Every configuration with its example case, resources and problems."""
    return [
        {
            "kernel": r.config.kernel, "target": r.config.target, "case": str(report.examples[r.config]),
            "label": r.config.label, "signature": dict(r.config.signature),
            "constexprs": {k: _show(v) for k, v in r.config.constexprs}, "attrs": dict(r.config.attrs),
            "options": dict(r.config.options), "usage": asdict(r.usage) if r.usage else None, "error": r.error,
            "problems": r.problems(), "seconds": round(r.seconds, 2), "w_hh": r.w_hh,
        }
        for r in sorted(report.results, key=_severity)
    ]


MARKDOWN = """# Ahead-of-time compile report

Generated by `{command}` on {date} with triton {triton}, torch {torch}.
Regenerate it with `make compile-report` (the full grid, about 8,000 configurations: roughly 90 minutes on 2 cores with an
empty Triton cache) or
`make compile-report COMPILE_REPORT_ARGS=--quick` (the reduced grid of the CI test,
`tests/test_compile_report.py`, about two minutes). No GPU is needed.

`fused_rnn.compile_report` compiles every Triton kernel of the project (the public
kernels of `kernels/cell_kernels.py` and `kernels/sequence_kernels.py`) for NVIDIA
sm_80 (A100), sm_90 (H100) and AMD gfx942 (MI300). The configurations come from the
launchers themselves: each case of the grid calls the public launchers on tensors of
device "meta" with the launch replaced by a recorder, and Triton's own argument binder
gives the signature, constexprs, alignment attributes and options its JIT would
compile, so nothing is copied by hand. Identical configurations are compiled once per
target. Resources come from `cuobjdump --dump-resource-usage` on the cubin (NVIDIA)
and from the kernel metadata in the amdgcn text (AMD).

A configuration fails when it does not compile, spills registers to memory, uses local (scratch)
memory, or needs more shared memory than its target has (or is a one-launch grid larger than
the target holds, below); the command then exits with status 1 (after writing this file) and
names each failing configuration under the table. Columns:

- **configs / failing**: distinct configurations of the kernel on the target, and how many fail.
- **regs**: registers per thread (NVIDIA `REG`; AMD `.vgpr_count`, VGPRs and AGPRs).
- **spill B**: bytes per thread spilled to memory. NVIDIA: the stack frame (`STACK`; ptxas
  spills there). AMD: 4 per spilled VGPR (`.vgpr_spill_count`; VGPRs spill to scratch).
  SGPRs spill into VGPR lanes (`v_writelane`, reloaded with `v_readlane`: one vector
  instruction each, no memory traffic), so `.sgpr_spill_count` does not fail a configuration;
  it is in `--json PATH` and the lines under the table give the most per kernel.
- **local B**: NVIDIA `LOCAL`; AMD scratch (`.private_segment_fixed_size`).
- **shared B / limit**: shared memory (LDS) per program, static + dynamic, against the
  target's limit: 163 KB on sm_80, 227 KB on sm_90, 64 KB of LDS on gfx942. A streaming sequence
  kernel keeps one BLOCK_K x BLOCK_H block of W_hh on chip (with the compiler's pipeline buffers);
  a weight-stationary one (KP > 0) its whole slice of W_hh and its h tile: the lines under the table
  say whether they fit.
- **programs / SM**: programs of the configuration one SM (CU) holds at once, from its
  registers (NVIDIA: allocated per warp in units of 256 of 64K; AMD CDNA3: VGPRs in units of
  8 of 512 per lane, at most 8 waves per SIMD, 4 SIMDs), shared memory and threads.
- **held at once**: programs per SM times the target's SMs (108 on sm_80, 132 on sm_90, 304
  CUs on gfx942): the largest grid whose programs are all resident together.

The sequence kernels are captured under the dispatcher's plan for each target's SM count
(hidden slices per batch tile; one launch with barriers when the grid fits) and, for a
plan with several slices, also in the one-launch-per-step-and-phase form. A one-launch
configuration with barriers fails when its grid is larger than the target holds at once
(its programs would wait at the barrier for programs that cannot start); the lines under
the table give the fullest one-launch grid per target.

Where each sequence-kernel configuration keeps W_hh is read from its TTGIR, not assumed
(`fused_rnn.ir_reads`): a global load of W_hh inside the time loop means streamed, loads only
before it resident (in shared memory when the compiler allocates it there). A configuration the
plan made weight-stationary whose compiled code still reads W_hh in the loop fails the report.

Each row shows the worst configuration of one kernel on one target, worst rows first,
with the first grid case that picked it; `--json PATH` writes every configuration.
Sequence kernels are called with T = {steps} (T is not specialised on).

Grid ({grid}).

{summary}
"""


def markdown(report: Report, command: str) -> str:
    """The report as a document: what it does, how to regenerate it, the table."""
    return MARKDOWN.format(
        command=command, date=datetime.date.today().isoformat(), triton=triton.__version__,
        torch=torch.__version__.split("+")[0], steps=SEQUENCE_STEPS, grid=report.grid, summary=summary(report),
    )


# ----------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------


def _parse_targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown}; choose from {', '.join(TARGETS)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fused_rnn.compile_report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=_parse_targets, default=list(TARGETS), help="comma-separated, default: all")
    parser.add_argument("--quick", action="store_true", help="reduced grid: every kernel, cell and dtype, one shape")
    parser.add_argument("--markdown", type=Path, help="write the report as a markdown document")
    parser.add_argument("--json", type=Path, help="write every configuration and its resources as JSON")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    args = parser.parse_args(argv)
    if args.quick:
        report = run(QUICK, "quick: " + "; ".join(map(str, QUICK)), args.targets, args.jobs)
    else:
        report = run(FULL.cases() + head_cases() + zoneout_cases() + layer_norm_cases(),
                     f"full: {FULL}; heads {HEAD_SHAPES}; zoneout; layer norm", args.targets, args.jobs)
    print(summary(report))
    if args.markdown:
        command = " ".join(["python -m fused_rnn.compile_report", *(argv if argv is not None else sys.argv[1:])])
        args.markdown.write_text(markdown(report, command))
    if args.json:
        args.json.write_text(json.dumps(to_json(report), indent=1))
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
