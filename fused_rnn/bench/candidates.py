"""The implementations under test, each built from a Problem into a forward function over its own copy of the weights.

- ``sequence``, ``stepwise``: fused_rnn.LSTM/GRU/RNN on each path the dispatcher can take (``force_path``).
- ``cudnn``: torch.nn on cuDNN (MIOpen on ROCm); only where torch.nn really runs cuDNN for the case.
- ``native``: torch.nn with cuDNN disabled, PyTorch's native fused-cell path (on a CPU: torch.nn's CPU kernels).
- ``compile``: torch.compile of the reference cell loop (``loop.recurrent_loop``), its first call capped in time.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import fused_rnn
from fused_rnn.dispatch import device_shared, device_sms

from .loop import recurrent_loop
from .problem import TORCH_CLASSES, Inputs, Problem, copy_module, module_forward

# Every candidate's key, in the order of the results.
KEYS = ("sequence", "stepwise", "cudnn", "native", "compile")
FUSED_CLASSES = {"lstm": fused_rnn.LSTM, "gru": fused_rnn.GRU, "rnn_tanh": fused_rnn.RNN, "rnn_relu": fused_rnn.RNN}


class Unavailable(Exception):
    """The candidate does not apply to this case; the message says why."""


@dataclass
class Runner:
    """A built candidate: forward(inputs) -> (y, h_n[, c_n]), the parameters it differentiates, a time cap on its
    first call (the compilation) in seconds or None, and a note for its result row."""

    forward: Callable[[Inputs], tuple[Tensor, ...]]
    params: list[Tensor]
    first_call_cap_s: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Candidate:
    """An implementation: its command-line key, its label in the results, whether it is fused_rnn's, and its builder.

    ``build(problem, compile_cap_s)`` returns a Runner or raises Unavailable.
    """

    key: str
    label: str
    fused: bool
    build: Callable[[Problem, float], Runner]


def _fused(path: str) -> Callable[[Problem, float], Runner]:
    def build(problem: Problem, compile_cap_s: float) -> Runner:
        module = copy_module(problem, FUSED_CLASSES[problem.case.cell])

        def forward(inputs: Inputs) -> tuple[Tensor, ...]:
            with fused_rnn.force_path(path):
                return module_forward(module, inputs)

        device = next(module.parameters()).device
        case = problem.case
        chosen = fused_rnn.choose_path(module.mode, module.hidden_size, module.proj_size, case.torch_dtype,
                                       device_sms(device), device_shared(device))
        return Runner(forward, list(module.parameters()), note="dispatcher's choice" if chosen == path else "")

    return build


def _graph_has(tensor: Tensor, names: tuple[str, ...]) -> bool:
    """True when a node of ``tensor``'s autograd graph has a name starting with one of ``names``."""
    todo, seen = collections.deque([tensor.grad_fn]), set()
    while todo:
        node = todo.popleft()
        if node is None or node in seen:
            continue
        if type(node).__name__.startswith(names):
            return True
        seen.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return False


def _torch_nn(cudnn: bool) -> Callable[[Problem, float], Runner]:
    def build(problem: Problem, compile_cap_s: float) -> Runner:
        module = copy_module(problem, TORCH_CLASSES[problem.case.cell])

        def forward(inputs: Inputs) -> tuple[Tensor, ...]:
            with torch.backends.cudnn.flags(enabled=cudnn):
                return module_forward(module, inputs)

        if cudnn:
            with torch.enable_grad():
                y = forward(problem.inputs)[0]
            if not _graph_has(y, ("CudnnRnnBackward", "MiopenRnnBackward")):
                raise Unavailable(f"torch.nn runs its native path, not cuDNN, for {problem.case.dtype} here")
        return Runner(forward, list(module.parameters()))

    return build


def _compiled(problem: Problem, compile_cap_s: float) -> Runner:
    case = problem.case
    module = copy_module(problem, TORCH_CLASSES[case.cell])
    params = list(module.parameters())
    lengths = problem.inputs.lengths
    lengths = (torch.full((case.batch,), case.seq_len) if lengths is None else lengths).to(problem.inputs.x.device)
    torch._dynamo.reset()  # forget earlier cases' graphs: each case compiles afresh, within the cache limit
    loop = torch.compile(recurrent_loop, dynamic=False)

    def forward(inputs: Inputs) -> tuple[Tensor, ...]:
        return loop(case.cell, inputs.x, lengths, inputs.h0, inputs.c0, params, case.bidirectional)

    return Runner(forward, params, first_call_cap_s=compile_cap_s)


def candidates(device: torch.device) -> dict[str, Candidate]:
    """The candidates for ``device``, by key; cuDNN only on a GPU with cuDNN (or MIOpen)."""
    native = "torch.nn:native" if device.type == "cuda" else "torch.nn:cpu"
    found = [
        Candidate("sequence", "fused_rnn:sequence", True, _fused("sequence")),
        Candidate("stepwise", "fused_rnn:stepwise", True, _fused("stepwise")),
        Candidate("native", native, False, _torch_nn(cudnn=False)),
        Candidate("compile", "torch.compile:loop", False, _compiled),
    ]
    if device.type == "cuda" and torch.backends.cudnn.is_available():
        backend = "miopen" if torch.version.hip else "cudnn"
        found.insert(2, Candidate("cudnn", f"torch.nn:{backend}", False, _torch_nn(cudnn=True)))
    return {c.key: c for c in found}


def is_cudnn(label: str) -> bool:
    """True for the label of the cuDNN (MIOpen) candidate, the baseline of speedup_vs_cudnn."""
    return label in ("torch.nn:cudnn", "torch.nn:miopen")

