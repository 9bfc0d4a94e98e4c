"""haste's cells against the PyTorch loop a user would otherwise write: ``python -m fused_rnn.bench.loops``.

For each cell torch.nn lacks (IndRNN; LSTM and GRU with zoneout; haste's LayerNorm LSTM, GRU and IndRNN; the
sLSTM and a multi-head LSTM) it times fused-rnn's layer against the same layer computed by a Python loop over time of plain
torch ops (haste's own PyTorch fallback for IndRNN, LSTM, GRU and the LayerNorm cells, ``fused_rnn.reference``;
the reference loop for the others), and, where cuDNN has a close relative (the LSTM and GRU without zoneout or
layer normalisation), torch.nn on cuDNN: the cost of the regulariser or of the normalisations. Each row also records the structural facts: Triton launches per call and the barriers per step
of the plan. Forward and forward+backward, in the layer's dtype. Without a GPU it runs in Triton's interpreter
at sizes divided by 8: the timings mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..kernels.launch import interpreting
from .cli import restart_in_interpreter
from .timing import measure

CELLS = ("indrnn", "lstm_zoneout", "gru_zoneout", "layer_norm_lstm", "layer_norm_gru", "layer_norm_indrnn", "slstm",
         "multihead_lstm")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    cell: str
    mode: str
    candidate: str
    median_ms: float | None
    launches: int | None
    barriers_per_step: int | None
    note: str = ""


def _layer(cell: str, size: int, dtype: torch.dtype, device) -> torch.nn.Module:
    import fused_rnn

    make = {"indrnn": lambda: fused_rnn.IndRNN(size, size),
            "lstm_zoneout": lambda: fused_rnn.LSTM(size, size, zoneout=0.1),
            "gru_zoneout": lambda: fused_rnn.GRU(size, size, zoneout=0.1),
            "layer_norm_lstm": lambda: fused_rnn.LayerNormLSTM(size, size),
            "layer_norm_gru": lambda: fused_rnn.LayerNormGRU(size, size),
            "layer_norm_indrnn": lambda: fused_rnn.LayerNormIndRNN(size, size),
            "slstm": lambda: fused_rnn.sLSTM(size, size, num_heads=4),
            "multihead_lstm": lambda: fused_rnn.MultiHeadLSTM(size, size, num_heads=4)}[cell]
    return make().to(device, dtype)


def _loop(module: torch.nn.Module) -> Callable:
    """The layer as a Python loop over time of plain torch ops, as a user would write it: the input projection
    as one GEMM (normalised for the LayerNorm cells), then ``fused_rnn.reference.sequence`` (the reference cells;
    zoneout with a fresh mask; the recurrent products, and c, normalised at each step)."""
    from fused_rnn import reference, sequence_ops
    from fused_rnn.kernels.sequence_kernels import CELLS
    from fused_rnn.layers import normalised_inputs, zoneout_keep

    cell = CELLS[module.mode]
    norm = getattr(module, "layer_norm", False)

    def run(x):
        T, B, _ = x.shape
        biases = module.bias_ih_l0[None], module.bias_hh_l0[None]
        if norm:
            gain_ih, ln = module.layer_norm_weights(0)
            xp, b_hn = sequence_ops.project(normalised_inputs(x, module.weight_ih_l0[None], gain_ih[None]), None,
                                            *biases, cell)
        else:
            ln = None
            xp, b_hn = sequence_ops.project(x, module.weight_ih_l0[None], *biases, cell)
        owned = {"LSTM": 1, "SLSTM": 3}.get(module.mode, 0)
        h0 = x.new_zeros(B, module.hidden_size)
        c0 = x.new_zeros(B, owned * module.hidden_size) if owned else None
        lengths = torch.full((B,), T, dtype=torch.int64, device=x.device)
        return reference.sequence(module.mode, xp, module.weight_hh_l0, None if b_hn is None else b_hn[0], None, h0,
                                  c0, lengths, False, keep=zoneout_keep(module, T, B, x), ln=ln)
    return run


def _step(fn: Callable, x: torch.Tensor, params: list[torch.Tensor], mode: str) -> Callable:
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return fn(x)[0]
        return forward
    leaf = x.detach().requires_grad_()

    def train():
        y = fn(leaf)[0]
        return torch.autograd.grad(y.float().sum(), [leaf, *params])
    return train


def run(args: argparse.Namespace) -> list[Row]:
    import fused_rnn
    from fused_rnn.dispatch import meetings_per_step, sequence_plan
    from fused_rnn.path_report import planned_mode

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    divisor = 8 if device.type == "cpu" and not args.no_scale else 1
    seq, batch, size = (-(-v // divisor) for v in (args.seq, args.batch, args.hidden))
    dtype = DTYPES[args.dtype]
    warmup, rep = (5, 20) if args.quick else (25, 100)
    rows = []
    for cell in args.cell:
        module = _layer(cell, size, dtype, device)
        x = torch.randn(seq, batch, size, device=device, dtype=dtype)
        heads = getattr(module, "num_heads", 1)
        planned = planned_mode(module)
        plan = sequence_plan(planned, batch, size, 0, dtype, head_dim=size // heads if heads > 1 else 0)
        barriers = meetings_per_step(planned, 0) if plan.meeting > 1 else 0
        candidates = {"fused_rnn": module, "torch loop": _loop(module)}
        if cell in ("lstm_zoneout", "gru_zoneout", "layer_norm_lstm", "layer_norm_gru") and device.type == "cuda":
            relative = (torch.nn.GRU if "gru" in cell else torch.nn.LSTM)(size, size).to(device, dtype)
            what = "zoneout" if "zoneout" in cell else "layer norm"
            candidates[f"torch.nn:cudnn (no {what})"] = relative
        for mode in args.mode:
            for name, fn in candidates.items():
                params = list((fn if isinstance(fn, torch.nn.Module) else module).parameters())
                step = _step(fn, x, params, mode)
                with fused_rnn.count_launches() as launches:
                    step()
                timing = measure(step, device, warmup, rep)
                fused = name == "fused_rnn"
                rows.append(Row(cell, mode, name, timing.median_ms, launches.total if fused else None,
                                barriers if fused else None))
                print(f"{cell:15} {mode:17} {name:28} {timing.median_ms:9.3f} ms  launches "
                      f"{rows[-1].launches}  barriers/step {rows[-1].barriers_per_step}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fused_rnn.bench.loops", description=__doc__.split("\n\n")[0])
    p.add_argument("--cell", type=lambda s: s.split(","), default=list(CELLS))
    p.add_argument("--mode", type=lambda s: s.split(","), default=["forward", "forward+backward"])
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    p.add_argument("--seq", type=int, default=100)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--no-scale", action="store_true", help="in the interpreter, the sizes as given")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=pathlib.Path, help="directory for loops.json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not interpreting():
        restart_in_interpreter(argv, "fused_rnn.bench.loops")
    rows = run(args)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "loops.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
