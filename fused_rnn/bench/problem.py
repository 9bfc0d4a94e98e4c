"""One case made concrete: a torch.nn module, inputs, an output gradient and the float64 reference.

Every candidate runs the same inputs through its own copy of the module's
weights; its outputs and gradients are compared with the reference by
relative norm error, ``||out - ref|| / ||ref||``, against one tolerance per dtype.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .cases import Case

# Largest relative norm error a candidate may show against the float64 reference, per storage dtype.
# fp32 with TF32 products (a GPU's default for cuDNN RNNs, which fused_rnn follows) rounds
# operands to 10 mantissa bits, like fp16; bf16 keeps 7.
TOLERANCE = {"fp32": 1e-4, "fp32+tf32": 1e-2, "fp16": 1e-2, "bf16": 5e-2}

TORCH_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


def tf32_enabled(device: torch.device) -> bool:
    """True when fp32 recurrent products may use TF32 here (CUDA with torch.backends.cudnn.allow_tf32)."""
    return device.type == "cuda" and torch.backends.cudnn.allow_tf32


def tolerance(dtype: str, device: torch.device) -> float:
    """The relative norm error allowed for ``dtype`` on ``device`` (TOLERANCE)."""
    return TOLERANCE["fp32+tf32" if dtype == "fp32" and tf32_enabled(device) else dtype]


@dataclass
class Inputs:
    """x (T, B, I), h0 and c0 (layers * directions, B, H), c0 LSTM only; lengths (B,) int64 on the CPU, packed only."""

    x: Tensor
    h0: Tensor
    c0: Tensor | None
    lengths: Tensor | None

    def differentiable(self) -> list[Tensor]:
        """The inputs whose gradients are checked: x, h0 and c0."""
        return [self.x, self.h0] + ([self.c0] if self.c0 is not None else [])


@dataclass
class Problem:
    """A case's module (case dtype, on the device), inputs, output gradient dy (T, B, D * H) and reference.

    ``reference`` holds the float64 outputs (y, h_n[, c_n]) and, for
    forward+backward, the gradients of x, h0[, c0] and every parameter.
    """

    case: Case
    module: nn.RNNBase
    inputs: Inputs
    dy: Tensor
    reference: list[Tensor]


def new_module(cls: type[nn.RNNBase], case: Case) -> nn.RNNBase:
    """An untrained ``cls`` (torch.nn's or fused_rnn's) with the case's sizes, on the CPU in fp32."""
    extra = {"nonlinearity": case.cell[4:]} if case.cell.startswith("rnn") else {}
    return cls(case.input_size, case.hidden_size, case.num_layers, bidirectional=case.bidirectional, **extra)


def copy_module(problem: Problem, cls: type[nn.RNNBase]) -> nn.RNNBase:
    """A ``cls`` holding a copy of the problem's weights, in train mode for forward+backward, else eval."""
    module = new_module(cls, problem.case).to(problem.module.weight_ih_l0.device, problem.case.torch_dtype)
    module.load_state_dict(problem.module.state_dict())
    return module.train(problem.case.mode == "forward+backward")


def module_forward(module: nn.RNNBase, inputs: Inputs) -> tuple[Tensor, ...]:
    """torch.nn's calling convention: returns y (T, B, D * H, zero past each length), h_n[, c_n]."""
    x = inputs.x
    if inputs.lengths is not None:
        x = pack_padded_sequence(x, inputs.lengths, enforce_sorted=False)
    y, hidden = module(x, inputs.h0 if inputs.c0 is None else (inputs.h0, inputs.c0))
    if inputs.lengths is not None:
        y = pad_packed_sequence(y, total_length=inputs.x.shape[0])[0]
    return (y, *hidden) if isinstance(hidden, tuple) else (y, hidden)


def make_step(
    forward: Callable[[Inputs], tuple[Tensor, ...]], inputs: Inputs, params: list[Tensor], mode: str, dy: Tensor
) -> Callable[[], list[Tensor]]:
    """The timed call: forward (under no_grad), or forward then the gradients of inputs and ``params`` for dy."""
    if mode == "forward":

        def infer() -> list[Tensor]:
            with torch.no_grad():
                return list(forward(inputs))

        return infer
    wrt = inputs.differentiable() + list(params)

    def train() -> list[Tensor]:
        outs = forward(inputs)
        grads = torch.autograd.grad(outs[0], wrt, dy)
        return [o.detach() for o in outs] + list(grads)

    return train


def rel_err(out: Tensor, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; inf for a shape mismatch or a non-finite value."""
    if out.shape != ref.shape:
        return math.inf
    diff = (out.double() - ref).norm().item()
    scale = ref.norm().item()
    err = diff / scale if scale > 0 else diff
    return err if math.isfinite(err) else math.inf


def max_rel_err(outs: list[Tensor], refs: list[Tensor]) -> float:
    """The largest relative error over all outputs and gradients (inf if their counts differ)."""
    if len(outs) != len(refs):
        return math.inf
    return max(rel_err(o, r) for o, r in zip(outs, refs))


def _valid(case: Case, lengths: Tensor | None) -> Tensor:
    """(T, B, 1) 1.0 where a position is inside its sequence."""
    if lengths is None:
        return torch.ones(case.seq_len, case.batch, 1)
    return (torch.arange(case.seq_len)[:, None] < lengths[None, :]).unsqueeze(-1).float()


def make_problem(case: Case, device: torch.device, seed: int = 0) -> Problem:
    """Weights, inputs and dy drawn from ``seed`` in the case's dtype; the reference from the same values in float64.

    Packed cases draw lengths uniform in [ceil(T / 3), T]; dy is zero past each length.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    module = new_module(TORCH_CLASSES[case.cell], case).to(device, case.torch_dtype)
    grad = case.mode == "forward+backward"
    lengths = None
    if case.packed:
        lengths = torch.randint(-(-case.seq_len // 3), case.seq_len + 1, (case.batch,), generator=generator)
    dirs = 2 if case.bidirectional else 1
    state = (case.num_layers * dirs, case.batch, case.hidden_size)

    def draw(*shape: int) -> Tensor:
        return torch.randn(shape, generator=generator).to(device, case.torch_dtype)

    x, h0 = draw(case.seq_len, case.batch, case.input_size), draw(*state)
    c0 = draw(*state) if case.cell == "lstm" else None
    dy = draw(case.seq_len, case.batch, dirs * case.hidden_size) * _valid(case, lengths).to(device, case.torch_dtype)

    def leaves(dtype: torch.dtype) -> Inputs:
        tensors = (None if t is None else t.detach().to(dtype).requires_grad_(grad) for t in (x, h0, c0))
        return Inputs(*tensors, lengths)

    inputs, wide = leaves(case.torch_dtype), leaves(torch.float64)
    wide_module = copy.deepcopy(module).double().train(grad)
    reference = make_step(
        lambda inp: module_forward(wide_module, inp), wide, list(wide_module.parameters()), case.mode, dy.double()
    )()
    return Problem(case, module, inputs, dy, reference)
