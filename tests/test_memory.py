"""No leaks: memory stays flat over repeated calls, saved tensors die with their graph, no_grad saves nothing;
a training forward keeps no more than each layer's input and what the kernels' backward reads.

Tensors are tracked by a TorchDispatchMode that keeps a weak reference to
every tensor an op returns inside the call (the custom ops' outputs, the
saved gates among them). With the garbage collector off, a tensor that
outlives its last reference is held by a reference cycle or a global.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import weakref
from collections.abc import Callable, Iterator

import pytest
import torch
from conftest import fused_path_only
from fused_rnn.kernels import sequence_kernels as K
from helpers import assert_kernels, kernels_of
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fused_rnn


class Recorder(TorchDispatchMode):
    """Weak references to every tensor returned by an op dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, int, weakref.ref]] = []  # (op, index among its outputs, tensor)
        self.numels: list[int] = []  # of each tensor of refs, when it was returned

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for i, t in enumerate(tree_flatten(out)[0]):
            if isinstance(t, torch.Tensor):
                self.refs.append((str(func), i, weakref.ref(t)))
                self.numels.append(t.numel())
        return out

    def alive(self) -> list[torch.Tensor]:
        return [t for _, _, r in self.refs if (t := r()) is not None]

    def outputs_of(self, op: str, indices: range) -> list[weakref.ref]:
        return [r for name, i, r in self.refs if name == op and i in indices]

    def numels_of(self, op: str, indices: range) -> list[int]:
        return [n for (name, i, _), n in zip(self.refs, self.numels) if name == op and i in indices]


@contextlib.contextmanager
def gc_off() -> Iterator[None]:
    """Reference counting only: what a cycle holds stays alive."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


MODULES: dict[str, Callable[[str], nn.Module]] = {
    "LSTM_proj": lambda d: fused_rnn.LSTM(3, 4, proj_size=2, bidirectional=True).to(d),
    "GRU": lambda d: fused_rnn.GRU(3, 4).to(d),
    "RNN": lambda d: fused_rnn.RNN(3, 4).to(d),
    "LSTMCell": lambda d: fused_rnn.LSTMCell(3, 4).to(d),
    "GRUCell": lambda d: fused_rnn.GRUCell(3, 4).to(d),
}
SEQUENCE_OP = "fused_rnn.sequence.default"
SAVED_BUFFERS = range(3, 6)  # the op's outputs saved only for backward: gates, cell states, pre-projection outputs
GATE_BUFFERS = range(3, 5)  # the gates and cell states, which only backward reads


def _input(name: str, device: str) -> torch.Tensor:
    return torch.randn(2, 3, device=device) if name.endswith("Cell") else torch.randn(2, 2, 3, device=device)


def _outputs(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    out = module(x)
    if isinstance(module, nn.RNNBase):
        y, hidden = out
        return [y, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    return list(out) if isinstance(out, tuple) else [out]


PATHS = [(name, path) for name in MODULES for path in (["cell"] if name.endswith("Cell") else ["sequence", "stepwise"])]


@pytest.mark.parametrize("name,path", PATHS, ids=[f"{n}-{p}" for n, p in PATHS])
def test_saved_tensors_die_with_the_graph(name: str, path: str, device: str):
    """Tensors saved for backward are freed by backward, and everything by dropping the outputs, without gc."""
    module = MODULES[name](device)
    x = _input(name, device).requires_grad_()
    with fused_rnn.force_path(None if path == "cell" else path):
        _outputs(module, x)[0].sum().backward()  # warm-up: first calls populate Triton's caches
        with gc_off():
            recorder = Recorder()
            with recorder, fused_path_only():
                outs = _outputs(module, x)
            assert outs[0].grad_fn is not None
            assert len(recorder.alive()) > len(outs), "the graph holds its saved tensors"
            saved = recorder.outputs_of(SEQUENCE_OP, SAVED_BUFFERS)
            assert len(saved) == (3 if path == "sequence" else 0)  # one op for both directions
            assert all(r() is not None for r in saved), "held by the graph until backward"
            sum(o.sum() for o in outs).backward()
            assert all(r() is None for r in saved), "backward frees the saved buffers while the outputs live"
            del outs
            assert recorder.alive() == [], "a reference cycle or a global keeps tensors of the call alive"


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize("name", MODULES)
def test_no_grad_and_inference_mode_save_nothing(name: str, mode, device: str):
    """No autograd graph, nothing of the call outlives it but the outputs, and the sequence kernel writes no
    gates or cell states for backward (the op returns them empty)."""
    module = MODULES[name](device)
    x = _input(name, device).requires_grad_()
    with mode():
        _outputs(module, x)  # warm-up
    with gc_off():
        recorder = Recorder()
        with mode(), recorder, fused_path_only() as launches:
            outs = _outputs(module, x)
        assert_kernels(launches, kernels_of(module, backward=False))
        assert all(o.grad_fn is None and not o.requires_grad for o in outs)
        storages = {o.untyped_storage().data_ptr() for o in outs}
        extra = [t for t in recorder.alive() if t.untyped_storage().data_ptr() not in storages]
        assert extra == [], f"tensors kept alive beyond the outputs: {[tuple(t.shape) for t in extra]}"
        gates = recorder.numels_of(SEQUENCE_OP, GATE_BUFFERS)
        assert len(gates) == (0 if name.endswith("Cell") else 2)
        assert not any(gates), f"gate buffers written without autograd: {gates}"


SAVING = {
    "LSTM": lambda d: fused_rnn.LSTM(3, 4).to(d),
    "LSTM_proj": MODULES["LSTM_proj"],
    "GRU": MODULES["GRU"],
    "RNN": MODULES["RNN"],
    "GRU_2_layers_bidirectional": lambda d: fused_rnn.GRU(3, 4, num_layers=2, bidirectional=True).to(d),
    "RNN_2_layers": lambda d: fused_rnn.RNN(3, 4, num_layers=2).to(d),
}


def _expected_saved_bytes(module: nn.RNNBase, T: int, B: int, I: int) -> dict[str, int]:
    """What a float32 training forward keeps for backward besides the parameters, per kind, in bytes.

    The layer inputs: the module's x (deeper layers' inputs are the previous op's output y, both directions
    side by side); per layer and direction the op's outputs that backward reads: y (R), the gates (K.SAVED H),
    c (H, LSTM) and m (H, with a projection); the initial states; lengths; and for a bidirectional layer its
    parameters stacked over the two directions (the op takes them so; one direction's are views). That is the
    memory of before the input projection's output xp (T, B, G) was kept: F.linear's autograd kept x, not xp.
    """
    H, L = module.hidden_size, module.num_layers
    R, D = module.proj_size or H, 2 if module.bidirectional else 1
    lstm, cell = module.mode == "LSTM", K.CELLS[module.mode]
    per_op = R + K.SAVED[cell] * H + (H if lstm else 0) + (H if module.proj_size else 0)
    tokens = T * B
    expected = {
        "layer inputs": 4 * tokens * I,
        "op outputs": 4 * tokens * L * D * per_op,
        "states": 4 * L * D * B * (R + (H if lstm else 0)),
        "lengths": 8 * B,
    }
    if D == 2:
        expected["stacked parameters"] = 4 * sum(p.numel() for p in module.parameters())
    return expected


@pytest.mark.parametrize("name", SAVING)
def test_training_keeps_the_layer_input_not_its_projection(name: str, device: str):
    """The activations a training forward on the sequence path keeps for backward (every tensor autograd saves,
    through saved-tensor hooks, by distinct storage, parameters aside) are each layer's input x, the op's own
    outputs that its backward reads (y, gates, cell states, pre-projection outputs, as the Recorder sees them
    returned by the op), the initial states and lengths, and their bytes are exactly those: no buffer of the input
    projection xp (T, B, G values per token: 4H LSTM, 3H GRU, H RNN), which the op computes and drops. The op's
    double backward recomputes it from x."""
    module = SAVING[name](device)
    T, B, I = 5, 2, 3
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    saved: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params and t.untyped_storage().nbytes():
            saved[t.untyped_storage().data_ptr()] = t
        return t

    with fused_rnn.force_path("sequence"):
        _outputs(module, x)  # warm-up
        recorder = Recorder()
        with recorder, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), fused_path_only() as launches:
            outs = _outputs(module, x)
    layers = module.num_layers * (2 if module.bidirectional else 1)  # rows of the initial states
    assert launches.by_kernel == {"sequence_fwd_kernel": module.num_layers}  # both directions in one launch
    op_outputs = {r().untyped_storage().data_ptr() for r in recorder.outputs_of(SEQUENCE_OP, range(6))
                  if r() is not None}
    layer_inputs = {x.untyped_storage().data_ptr()} | {
        r().untyped_storage().data_ptr() for r in recorder.outputs_of("aten.cat.default", range(1)) if r() is not None
    }
    kinds: dict[str, int] = {}
    for ptr, t in saved.items():
        if ptr in layer_inputs:
            kind = "layer inputs" if ptr not in op_outputs else "op outputs"
        elif ptr in op_outputs:
            kind = "op outputs"
        elif t.dtype == torch.int64 and t.shape == (B,):
            kind = "lengths"
        elif module.bidirectional and t.shape[0] == 2 and any(torch.equal(t[0], p) for p in module.parameters()):
            kind = "stacked parameters"  # the op's W_ih, W_hh, b_ih, b_hh (W_hr) of both directions
        elif t.dim() == 3 and t.shape[1] == B and t.untyped_storage().nbytes() == 4 * layers * B * t.shape[2]:
            kind = "states"  # a layer's rows of the (L*D, B, .) initial states, views
        else:
            kind = f"other {tuple(t.shape)} {t.dtype}"
        kinds[kind] = kinds.get(kind, 0) + t.untyped_storage().nbytes()
    assert kinds == _expected_saved_bytes(module, T, B, I), "saved for backward: x and the kernels' buffers only"
    sum(o.sum() for o in outs).backward()


def _glibc_in_use() -> Callable[[], int] | None:
    """Bytes the C allocator has handed out and not taken back (glibc's mallinfo2), or None elsewhere."""
    path = ctypes.util.find_library("c")
    if path is None:
        return None
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "mallinfo2"):
        return None

    class MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                     "keepcost")]

    libc.mallinfo2.restype = MallInfo2

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


FLAT = {"LSTM": lambda d: fused_rnn.LSTM(1024, 4).to(d), "LSTMCell": lambda d: fused_rnn.LSTMCell(1024, 4).to(d)}


@pytest.mark.parametrize("name", FLAT)
def test_memory_stays_flat_over_repeated_training_steps(name: str, device: str):
    """Forward and backward repeated: allocated memory does not grow.

    On a GPU: 1,000 steps, and torch.cuda.memory_allocated back to its value
    after the warm-up, to the byte. In Triton's interpreter a step costs about
    70 ms, so 1,000 would take over a minute per module: 50 steps after 25
    of warm-up, measured with glibc's allocator statistics (every tensor and
    Python object in the process). They drift by about 8 KB over those 50
    steps (the interpreter's caches), while keeping each step's graph alive
    adds about 600 KB: the allowance is 32 KB.
    """
    module = FLAT[name](device)
    x = torch.randn(1, 1024, device=device) if name.endswith("Cell") else torch.randn(1, 1, 1024, device=device)
    x.requires_grad_()

    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        sum(o.sum() for o in _outputs(module, x)).backward()

    if device == "cuda":
        for _ in range(5):
            step()
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        for _ in range(1000):
            step()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == before
        return
    in_use = _glibc_in_use()
    if in_use is None:
        pytest.skip("allocator statistics need glibc's mallinfo2 (Linux)")
    for _ in range(25):  # the interpreter's and autograd's caches settle within ~20 steps
        step()
    gc.collect()
    before = in_use()
    for _ in range(50):
        step()
    gc.collect()
    growth = in_use() - before
    assert growth < 32 * 1024, f"{growth} bytes more after 50 steps"
