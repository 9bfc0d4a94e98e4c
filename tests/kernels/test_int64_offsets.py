"""Element offsets past 2^31 in every kernel launcher: no int32 overflow.

Each tensor argument is a view of one bf16 storage of 2^31 + 2^22 elements
(4 GiB of address space; only the few pages that hold data are touched, so
the resident memory stays small) whose first dimension has a stride that puts
its last index just past 2^31 elements. Index x stride then overflows if any
kernel computes that offset in int32. Each launcher's results on the views
must equal, bit for bit, its results on contiguous copies of the same values.

An int32 overflow there reads outside the storage and may kill the process, so
the launches run in a child process (this file run as a script) and the tests
read which cases completed. On a GPU the same cases run on the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch

from fused_rnn.dispatch import make_plan
from fused_rnn.kernels import cell_kernels as CK
from fused_rnn.kernels import sequence_kernels as SK
from fused_rnn.kernels.launch import interpreting

LIMIT = 2**31
DTYPE = torch.bfloat16
T, B, H, P = 3, 2, 3, 2  # P: LSTM projection size


class Strided:
    """Places tensors in a huge storage so that their last index along their first axis longer than 1 (past a
    leading direction axis of one) starts past 2^31 elements."""

    def __init__(self, storage: torch.Tensor) -> None:
        self.storage, self.placed = storage, []

    def __call__(self, data: torch.Tensor) -> torch.Tensor:
        axis = next(i for i, n in enumerate(data.shape) if n > 1)
        rows = data.shape[axis]
        stride = -(-(LIMIT + 2**20) // (rows - 1))  # (rows - 1) * stride >= 2^31 + 2^20
        start = (len(self.placed) + 1) * 4096
        strides = list(data.contiguous().stride())
        strides[axis] = stride
        view = self.storage.as_strided(data.shape, strides, start)
        assert (rows - 1) * stride + start >= LIMIT
        view.copy_(data)
        self.placed.append((view, data))
        return view

    def check_no_overlap(self) -> None:
        assert all(torch.equal(v, d) for v, d in self.placed), "two placed views overlap"


def _same(got: tuple, want: tuple) -> None:
    """Bitwise equal, NaN where NaN (positions a kernel does not write stay poisoned with NaN in both)."""
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _randn(*shape: int, device: str, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, device=device) * scale).to(DTYPE)


def _sequence_inputs(cell: int, proj: int, directions: int, device: str,
                     layer_norm: bool = False) -> dict[str, torch.Tensor | None]:
    """The launchers' inputs, stacked over ``directions`` (xp and dy side by side); ``layer_norm``: with the
    normalisation's gains (and the LSTM's c bias)."""
    R, D = proj or H, directions
    G = SK.GATES[cell] * H
    torch.manual_seed(cell)
    return dict(
        xp=_randn(T, B, D * G, device=device), w_hh=_randn(D, G, R, device=device, scale=0.5),
        b_hn=_randn(D, H, device=device) if cell == SK.GRU else None,
        w_hr=_randn(D, R, H, device=device, scale=0.5) if proj else None,
        h0=_randn(D, B, R, device=device), c0=_randn(D, B, H, device=device) if cell == SK.LSTM else None,
        dy=_randn(T, B, D * R, device=device), dh_n=_randn(D, B, R, device=device),
        dc_n=_randn(D, B, H, device=device) if cell == SK.LSTM else None,
        ln=_randn(D, G + (2 * H if cell == SK.LSTM else 0), device=device) if layer_norm else None,
    )


# (cell, projection size, reverse, directions, layer norm): every cell, the LSTM projection, each direction, both in
# one launch, haste's layer normalisation (its saved products, partials and gradients are the launcher's buffers).
SEQUENCE_CONFIGS = [(SK.LSTM, P, False, 1, False), (SK.GRU, 0, True, 1, False), (SK.RNN_TANH, 0, False, 2, False),
                    (SK.LSTM, 0, True, 2, True)]


def _sequence_case(place: Strided, strided: set[str], *, backward: bool) -> None:
    """Forward (and backward) of every cell with the named arguments placed past 2^31."""
    device = str(place.storage.device)
    lengths = torch.tensor([T, 2], device=device)
    for cell, proj, reverse, directions, layer_norm in SEQUENCE_CONFIGS:
        t = _sequence_inputs(cell, proj, directions, device, layer_norm)
        v = {k: place(x) if k in strided and x is not None else x for k, x in t.items()}
        place.check_no_overlap()
        args = ("xp", "w_hh", "b_hn", "w_hr", "h0", "c0")
        # One slice: the whole sequence in one launch on either kind of machine.
        plan = make_plan(B, H, DTYPE, 1, 1, concurrent=not interpreting(), directions=directions)
        want = SK.sequence_forward(*(t[k] for k in args), lengths, cell, reverse, True, plan, ln=t["ln"])
        _same(SK.sequence_forward(*(v[k] for k in args), lengths, cell, reverse, True, plan, ln=v["ln"]), want)
        if backward:
            y, h_n, c_n, ws, cs, ms, ns = want
            bargs = ("dy", "dh_n", "dc_n", "w_hh", "w_hr", "h0", "c0")
            saved = (lengths, y, ws, cs, cell, reverse, plan)
            _same(SK.sequence_backward(*(v[k] for k in bargs), *saved, ln=v["ln"], ns=ns),
                  SK.sequence_backward(*(t[k] for k in bargs), *saved, ln=t["ln"], ns=ns))
        place.placed.clear()


def _cells_case(place: Strided) -> None:
    """Forward and backward launchers of the three cells, every argument placed past 2^31."""
    device = str(place.storage.device)
    n = 3
    for gates in (4, 3, 1):
        torch.manual_seed(gates)
        t = dict(ig=_randn(n, gates * H, device=device), hg=_randn(n, gates * H, device=device),
                 b_ih=_randn(gates * H, device=device), b_hh=_randn(gates * H, device=device),
                 state=_randn(n, H, device=device), dh=_randn(n, H, device=device), dc=_randn(n, H, device=device))
        v = {k: place(x) for k, x in t.items()}
        place.check_no_overlap()
        if gates == 4:
            for d in (t, v):
                d["out"] = CK.lstm_cell_forward(d["ig"], d["hg"], d["b_ih"], d["b_hh"], d["state"])
                d["grad"] = CK.lstm_cell_backward(d["dh"], d["dc"], d["ig"], d["hg"], d["b_ih"], d["b_hh"], d["state"])
        elif gates == 3:
            for d in (t, v):
                d["out"] = (CK.gru_cell_forward(d["ig"], d["hg"], d["b_ih"], d["b_hh"], d["state"]),)
                d["grad"] = CK.gru_cell_backward(d["dh"], d["ig"], d["hg"], d["b_ih"], d["b_hh"], d["state"])
        else:
            for d in (t, v):
                d["out"] = (CK.rnn_cell_forward(d["ig"], d["hg"], d["b_ih"], d["b_hh"], False),)
                d["grad"] = (CK.rnn_cell_backward(d["dh"], d["state"], False),)
        _same(v["out"], t["out"])
        _same(v["grad"], t["grad"])
        place.placed.clear()


CASES: dict[str, Callable[[Strided], None]] = {
    "sequence_forward": lambda p: _sequence_case(p, {"xp", "w_hh", "b_hn", "w_hr", "h0", "c0", "ln"}, backward=False),
    "sequence_backward_states": lambda p: _sequence_case(p, {"xp", "h0", "c0", "dy", "dh_n", "dc_n"}, backward=True),
    "sequence_backward_weights": lambda p: _sequence_case(p, {"w_hh", "w_hr", "ln"}, backward=True),
    "cell_kernels": _cells_case,
}


def _run_child(names: list[str]) -> tuple[set[str], str]:
    """Run the cases in a child process; returns the names that completed and the child's stderr."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    proc = subprocess.run(
        [sys.executable, __file__, device, *names], capture_output=True, text=True, env=dict(os.environ), timeout=300
    )
    done = {json.loads(line) for line in proc.stdout.splitlines() if line.startswith('"')}
    return done, f"exit status {proc.returncode}\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def completed() -> tuple[set[str], str]:
    return _run_child(["sequence_forward", "sequence_backward_states", "cell_kernels"])


@pytest.mark.parametrize("case", ["sequence_forward", "sequence_backward_states", "cell_kernels"])
def test_offsets_past_2_31(case: str, completed: tuple[set[str], str]):
    done, log = completed
    assert case in done, log


def test_weight_offsets_past_2_31_in_sequence_backward():
    done, log = _run_child(["sequence_backward_weights"])
    assert "sequence_backward_weights" in done, log


if __name__ == "__main__":
    from fused_rnn.kernels.launch import poison_outputs

    device, *names = sys.argv[1:]
    storage = torch.empty(LIMIT + 2**22, dtype=DTYPE, device=device)
    with poison_outputs():
        for name in names:
            CASES[name](Strided(storage))
            print(json.dumps(name), flush=True)
