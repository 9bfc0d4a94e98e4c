"""FlashRNN as a peer: fused-rnn's and FlashRNN's kernels, and cuDNN, at FlashRNN's own setup, measured in one run.

``python -m fused_rnn.bench.peers`` (``make bench`` runs it after the main benchmark). FlashRNN's setup (its
paper and README): B = 16, T = 1024, total hidden 768, bf16, heads 48 x 16, 24 x 32, 12 x 64, 6 x 128 and
1 x 768, LSTM and sLSTM, forward and forward+backward, on FlashRNN's functional API (Wx given: no input GEMM).
Candidates, each on the same tensors:

- ``fused_rnn``: ``fused_rnn.flashrnn`` (the sequence kernels with heads);
- ``flashrnn:triton_fused`` and ``flashrnn:cuda_fused``: FlashRNN's Triton and fused CUDA kernels, where FlashRNN
  is installed and the backend runs here (its CUDA backend compiles with nvcc on first use);
- ``flashrnn:vanilla``: FlashRNN's PyTorch loop, the stand-in peer where no GPU runs the others (a rehearsal);
- ``torch.nn:cudnn``: torch.nn.LSTM on cuDNN at one head (its input projection from a 768-wide input included).

Each result records milliseconds per call (median, 20% and 80% quantiles; CUDA events on a GPU), and the
relative norm error of the outputs (and gradients) against FlashRNN's vanilla backend in float64. FlashRNN's
published figures (H100) are printed beside as published, not measured here. Without a GPU the kernels run in
Triton's interpreter at sizes divided by 8 (T, B, hidden; heads kept where they divide): timings mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from ..kernels.launch import interpreting
from .cli import restart_in_interpreter
from .timing import measure

HEADS = (48, 24, 12, 6, 1)
FUNCTIONS = ("lstm", "slstm")
MODES = ("forward", "forward+backward")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# FlashRNN's published H100 figures for LSTM (ms, its paper): forward by head dimension, forward+backward.
PUBLISHED = {"lstm": {"forward": {16: 1.97, 32: 1.44, 64: 1.99, 128: 3.23},
                      "forward+backward": {16: 3.47, 32: 4.10, 64: 18.9}},
             "cudnn": {"forward": 2.01, "forward+backward": 5.19}}


@dataclass
class Result:
    function: str
    heads: int
    head_dim: int
    mode: str
    candidate: str
    median_ms: float | None
    p20_ms: float | None
    p80_ms: float | None
    rel_err: float | None
    note: str = ""


def _flashrnn():
    """FlashRNN's functional API, or None when it is not installed."""
    try:
        from flashrnn import flashrnn
    except ImportError:
        return None
    return flashrnn


def _tensors(function: str, batch: int, seq: int, heads: int, head: int, dtype: torch.dtype, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    Wx = torch.randn(batch, seq, 4, heads, head, generator=g)
    R = torch.randn(4, heads, head, head, generator=g) / head ** 0.5
    b = torch.randn(4, heads, head, generator=g)
    states = torch.zeros(4 if function == "slstm" else 2, batch, 1, heads, head)
    return [t.to(device, dtype) for t in (Wx, R, b, states)]


def _step(call: Callable, tensors: list[torch.Tensor], mode: str) -> Callable[[], list[torch.Tensor]]:
    """The timed call: forward (no grad), or forward then the gradients of Wx, R and b."""
    if mode == "forward":
        def forward():
            with torch.no_grad():
                return [call(*tensors)[0]]
        return forward
    leaves = [t.detach().requires_grad_() for t in tensors[:3]]

    def train():
        every, _ = call(*leaves, tensors[3])
        grads = torch.autograd.grad(every[0].float().sum(), leaves, allow_unused=True)  # cuDNN's uses only Wx
        return [every.detach(), *(g for g in grads if g is not None)]
    return train


def _rel_err(outs: list[torch.Tensor], refs: list[torch.Tensor]) -> float:
    return max(((o.double() - r).norm() / r.norm().clamp_min(1e-30)).item() for o, r in zip(outs, refs))


def _candidates(function: str, heads: int, device, flashrnn) -> dict[str, Callable | str]:
    """Each candidate's call (Wx, R, b, states) -> FlashRNN's results, or why it does not run here."""
    import fused_rnn

    found: dict[str, Callable | str] = {"fused_rnn": lambda *t: fused_rnn.flashrnn(*t, function=function)}
    if flashrnn is None:
        reason = "FlashRNN is not installed (pip install flashrnn einops; benchmarks/gpu_run.sh: FLASHRNN_WHEELS)"
        found.update({"flashrnn:triton_fused": reason, "flashrnn:cuda_fused": reason})
    else:
        backends = ("triton_fused", "cuda_fused") if device.type == "cuda" else ("vanilla",)
        for backend in backends:
            found[f"flashrnn:{backend}"] = functools.partial(_flashrnn_call, flashrnn, function, backend)
    if function == "lstm" and heads == 1 and device.type == "cuda":
        found["torch.nn:cudnn"] = "cudnn"
    return found


DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def _flashrnn_call(flashrnn, function: str, backend: str, *tensors: torch.Tensor):
    """FlashRNN's ``backend`` on the tensors, its kernels in their dtype."""
    return flashrnn(*tensors, function=function, backend=backend, dtype=DTYPE_NAMES[tensors[0].dtype])


def _cudnn_call(hidden: int, dtype: torch.dtype, device) -> Callable:
    """torch.nn.LSTM(hidden, hidden) on cuDNN, taking Wx's first gate as its input (B, T, hidden): the same
    recurrence plus its own input GEMM."""
    lstm = torch.nn.LSTM(hidden, hidden, batch_first=True).to(device, dtype)

    def call(Wx, R, b, states):
        y, _ = lstm(Wx[:, :, 0].reshape(Wx.shape[0], Wx.shape[1], -1))
        return y.transpose(0, 1)[None].unsqueeze(-2), None
    return call


def run(args: argparse.Namespace) -> list[Result]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    interpreted = device.type == "cpu"
    divisor = 8 if interpreted and not args.no_scale else 1
    seq, batch, hidden = (-(-v // divisor) for v in (args.seq, args.batch, args.hidden))
    dtype = DTYPES[args.dtype]
    flashrnn = None if args.no_peer else _flashrnn()
    warmup, rep = (5, 20) if args.quick else (25, 100)
    results, start = [], time.perf_counter()
    for function in args.function:
        for heads in args.heads:
            if hidden % heads:
                continue
            head = hidden // heads
            tensors = _tensors(function, batch, seq, heads, head, dtype, device, args.seed)
            reference = None
            if flashrnn is not None:
                wide = [t.double() for t in tensors]
                exact = functools.partial(flashrnn, function=function, backend="vanilla_fwbw", dtype="float32")
                reference = {mode: _step(exact, wide, mode)() for mode in args.mode}
            for mode in args.mode:
                for name, call in _candidates(function, heads, device, flashrnn).items():
                    if time.perf_counter() - start > args.budget_s:
                        return results
                    if isinstance(call, str) and call != "cudnn":
                        results.append(Result(function, heads, head, mode, name, None, None, None, None, call))
                        continue
                    fn = _cudnn_call(hidden, dtype, device) if call == "cudnn" else call
                    step = _step(fn, tensors, mode)
                    try:
                        outs = step()
                        timing = measure(step, device, warmup, rep)
                    except Exception as error:  # a peer backend that does not run here is a result, not a crash
                        results.append(Result(function, heads, head, mode, name, None, None, None, None,
                                              f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))
                        continue
                    err = None if reference is None or call == "cudnn" else _rel_err(outs, reference[mode])
                    results.append(Result(function, heads, head, mode, name, timing.median_ms, timing.p20_ms,
                                          timing.p80_ms, err))
                    print(_row(results[-1]), flush=True)
    return results


def _row(r: Result) -> str:
    time_ = f"{r.median_ms:9.3f} ms" if r.median_ms is not None else "        -   "
    err = f"{r.rel_err:.1e}" if r.rel_err is not None else "-"
    return f"{r.function:6} {r.heads:3}x{r.head_dim:<4} {r.mode:17} {r.candidate:22} {time_}  err {err}  {r.note}"


def markdown(results: list[Result], env: dict) -> str:
    lines = [f"# FlashRNN's setup: {env['device']}, torch {env['torch']}, triton {env['triton']}", "",
             f"T={env['seq']} B={env['batch']} hidden={env['hidden']} {env['dtype']}"
             + (" (Triton's interpreter: timings mean nothing)" if env["interpreted"] else ""), "",
             "| cell | heads | mode | candidate | ms (median) | p20-p80 | rel err vs FlashRNN fp64 | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        ms = f"{r.median_ms:.3f}" if r.median_ms is not None else "-"
        spread = f"{r.p20_ms:.3f}-{r.p80_ms:.3f}" if r.p20_ms is not None else "-"
        err = f"{r.rel_err:.1e}" if r.rel_err is not None else "-"
        lines.append(f"| {r.function} | {r.heads}x{r.head_dim} | {r.mode} | {r.candidate} | {ms} | {spread} | {err} "
                     f"| {r.note} |")
    lines += ["", "FlashRNN's published H100 figures (its paper; not measured here), LSTM, ms: "
              + json.dumps(PUBLISHED)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fused_rnn.bench.peers", description=__doc__.split("\n\n")[0])
    p.add_argument("--function", type=lambda s: s.split(","), default=list(FUNCTIONS))
    p.add_argument("--heads", type=lambda s: [int(v) for v in s.split(",")], default=list(HEADS))
    p.add_argument("--mode", type=lambda s: s.split(","), default=list(MODES))
    p.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--no-scale", action="store_true", help="in the interpreter, the sizes as given")
    p.add_argument("--no-peer", action="store_true", help="leave FlashRNN out even where it is installed")
    p.add_argument("--quick", action="store_true", help="short timing")
    p.add_argument("--budget-s", type=float, default=float("inf"), help="start no new measurement after this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=pathlib.Path, help="directory for peers.json and peers.md")
    args = p.parse_args(argv)
    if not torch.cuda.is_available() and not interpreting():
        restart_in_interpreter(argv, "fused_rnn.bench.peers")
    results = run(args)
    import triton

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    env = dict(device=device, torch=torch.__version__, triton=triton.__version__, seq=args.seq, batch=args.batch,
               hidden=args.hidden, dtype=args.dtype, interpreted=not torch.cuda.is_available())
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "peers.json").write_text(json.dumps({"env": env, "results": [asdict(r) for r in results]},
                                                        indent=1))
        (args.out / "peers.md").write_text(markdown(results, env))
    return 0 if any(r.median_ms is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
