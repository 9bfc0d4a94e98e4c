"""Demo until the throughput benchmark lands: each fused cell against torch.nn's, forward + backward.

Prints the time per step and the largest relative error of the outputs and gradients.
Without a GPU the fused kernels run in Triton's CPU interpreter: those timings are
interpreter timings, not performance.
"""

from __future__ import annotations

import os
import time

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import fused_rnn  # noqa: E402

CELLS = {
    "LSTMCell": (fused_rnn.LSTMCell, torch.nn.LSTMCell, {}),
    "GRUCell": (fused_rnn.GRUCell, torch.nn.GRUCell, {}),
    "RNNCell(tanh)": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "tanh"}),
    "RNNCell(relu)": (fused_rnn.RNNCell, torch.nn.RNNCell, {"nonlinearity": "relu"}),
}


def step(cell: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """One forward and backward; returns the output and the gradients of x and every parameter."""
    out = cell(x)
    out = out[0] if isinstance(out, tuple) else out
    grads = torch.autograd.grad(out.square().sum(), [x, *cell.parameters()])
    return [out.detach(), *grads]


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch, size, repeats = (64, 512, 50) if device == "cuda" else (8, 64, 5)
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU, Triton interpreter (not performance)"
    print(f"fused-rnn cell demo: batch {batch}, input = hidden = {size}, fp32, forward + backward on {where}")
    print(f"{'cell':<14} {'torch.nn ms':>12} {'fused ms':>10} {'speedup':>8} {'max rel err':>12}")
    for name, (fused_cls, torch_cls, kwargs) in CELLS.items():
        torch.manual_seed(0)
        fused = fused_cls(size, size, **kwargs).to(device)
        ref = torch_cls(size, size, **kwargs).to(device)
        ref.load_state_dict(fused.state_dict())
        x = torch.randn(batch, size, device=device, requires_grad=True)
        err = max(
            ((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(step(fused, x), step(ref, x))
        )
        t_ref, t_fused = timed(lambda: step(ref, x), repeats), timed(lambda: step(fused, x), repeats)
        print(f"{name:<14} {t_ref * 1e3:>12.3f} {t_fused * 1e3:>10.3f} {t_ref / t_fused:>7.2f}x {err:>12.2e}")


if __name__ == "__main__":
    main()
