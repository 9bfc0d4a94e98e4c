"""fused_rnn.LSTM/GRU/RNN against torch.nn over the contract's grid, in Triton's interpreter on CPU."""

from __future__ import annotations

import pytest
import torch
import triton
from conftest import fused_path_only
from helpers import assert_all_close, assert_close, assert_kernels, kernels_of
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pack_sequence

import fused_rnn
from fused_rnn import dispatch, sequence_ops
from fused_rnn.kernels import sequence_kernels as K
from fused_rnn.dispatch import make_plan
from fused_rnn.kernels.launch import sequence_blocks

CELLS = ["LSTM", "GRU", "RNN_TANH", "RNN_RELU"]
# (bias, batch_first, bidirectional, num_layers, h0 given): every value of each option appears.
CONFIGS = [
    (True, False, False, 1, False),
    (False, True, True, 2, True),
    (True, True, False, 3, True),
    (True, False, True, 1, True),
]
KINDS = ["batched", "unbatched", "packed_sorted", "packed_unsorted", "pack_sequence"]
I, H, T, B = 5, 6, 5, 3


def module_kwargs(cell: str, **kwargs) -> tuple[type, type, dict]:
    """The fused class, torch.nn's class and the constructor arguments of one cell kind."""
    if cell.startswith("RNN"):
        return fused_rnn.RNN, torch.nn.RNN, kwargs | {"nonlinearity": cell[4:].lower()}
    return getattr(fused_rnn, cell), getattr(torch.nn, cell), kwargs


def make_pair(cell: str, dtype=torch.float64, device="cpu", input_size=I, hidden=H, **kwargs):
    """A fused module in ``dtype`` and torch.nn's in float64 with the same (rounded) weights."""
    fused_cls, torch_cls, kwargs = module_kwargs(cell, **kwargs)
    torch.manual_seed(0)
    fused = fused_cls(input_size, hidden, **kwargs).to(device, dtype)
    ref = torch_cls(input_size, hidden, **kwargs).to(device, torch.float64)
    ref.load_state_dict({k: v.double() for k, v in fused.state_dict().items()})
    return fused, ref


def same_dtype_torch(ref: torch.nn.Module, dtype) -> torch.nn.Module:
    """torch.nn's module with ``ref``'s weights in ``dtype``: the error torch.nn itself makes sets the bound."""
    module = type(ref)(ref.input_size, ref.hidden_size, **_torch_kwargs(ref)).to(ref.weight_hh_l0.device, dtype)
    module.load_state_dict({k: v.to(dtype) for k, v in ref.state_dict().items()})
    return module


def _torch_kwargs(module: torch.nn.RNNBase) -> dict:
    kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                  bidirectional=module.bidirectional, dropout=module.dropout)
    if module.mode == "LSTM":
        kwargs["proj_size"] = module.proj_size
    elif module.mode.startswith("RNN"):
        kwargs["nonlinearity"] = module.nonlinearity
    return kwargs


class Inputs:
    """One input kind's tensors in float64 (values representable in every dtype used), made again in any dtype."""

    def __init__(self, kind: str, batch_first: bool, device, seq_len: int = T, batch: int = B,
                 input_size: int = I, lengths: list[int] | None = None, round_to=torch.bfloat16):
        self.kind, self.batch_first = kind, batch_first

        def randn(*shape):  # rounded to bf16 then fp16: exact in all four dtypes
            return torch.randn(*shape, dtype=torch.float64, device=device).to(round_to).to(torch.float16).double()

        if kind == "unbatched":
            self.x, self.batch = randn(seq_len, input_size), 1
        else:
            shape = (batch, seq_len, input_size) if batch_first else (seq_len, batch, input_size)
            self.x, self.batch = randn(*shape), batch
        self.lengths = lengths or {"packed_sorted": [seq_len, 3, 1], "packed_unsorted": [2, seq_len, 1],
                                   "pack_sequence": [1, seq_len, 3]}.get(kind)
        if kind == "pack_sequence":
            self.seqs = [randn(n, input_size) for n in self.lengths]
        self.length = max(self.lengths) if self.lengths else seq_len  # the steps the kernels run

    def make(self, dtype) -> tuple[object, torch.Tensor]:
        """The module's input in ``dtype`` and the leaf tensor whose gradient is compared."""
        if self.kind == "pack_sequence":
            seqs = [s.to(dtype).requires_grad_() for s in self.seqs]
            return pack_sequence(seqs, enforce_sorted=False), seqs[1]
        x = self.x.to(dtype).requires_grad_()
        if self.kind in ("batched", "unbatched"):
            return x, x
        sorted_ = self.kind == "packed_sorted"
        return pack_padded_sequence(x, torch.tensor(self.lengths), batch_first=self.batch_first,
                                    enforce_sorted=sorted_), x


def outputs(out) -> list[torch.Tensor]:
    y, hidden = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def forward_backward(module, inp, leaf, hx, seed_grads):
    """Outputs, and gradients of (input, h0[, c0], every parameter) for the given output gradients."""
    out = outputs(module(inp, hx))
    leaves = [leaf] + ([*hx] if isinstance(hx, tuple) else [hx] if hx is not None else [])
    seeds = [g.to(o.dtype) for o, g in zip(out, seed_grads)]
    grads = torch.autograd.grad(out, leaves + list(module.parameters()), seeds)
    return [o.detach() for o in out], list(grads)


def initial_states(cell, module, batch, unbatched, device, proj=0) -> list[torch.Tensor]:
    """Random h0 (and c0) in float64, rounded to bf16 values."""
    dirs = 2 if module.bidirectional else 1
    shape = (module.num_layers * dirs,) + (() if unbatched else (batch,))
    sizes = [proj or module.hidden_size] + ([module.hidden_size] if cell == "LSTM" else [])
    return [torch.randn(*shape, n, dtype=torch.float64, device=device).bfloat16().double() for n in sizes]


def as_hx(cell: str, states: list[torch.Tensor], dtype) -> object:
    states = [s.to(dtype).requires_grad_() for s in states]
    return None if not states else tuple(states) if cell == "LSTM" else states[0]


def sequence_kernels(layers: int, launches: int, steps: tuple[int, int] = (1, 1)) -> dict[str, int]:
    """The launches of one forward and backward on the sequence path: ``launches`` per layer (1: both directions
    of a bidirectional layer in one launch) of one each, or ``steps`` (forward, backward) when the kernels run
    one step and phase per launch."""
    return {"sequence_fwd_kernel": layers * launches * steps[0], "sequence_bwd_kernel": layers * launches * steps[1]}


def stepped_launches(slices: int, length: int, proj: bool, device) -> tuple[int, int]:
    """(forward, backward) launches per layer and direction with ``slices`` hidden slices: one each where the
    programs run at once (a GPU), else one per step and phase (1 or 2 forward, 2 or 3 backward)."""
    if slices == 1 or device != "cpu":
        return 1, 1
    return length * (1 + proj), length * (2 + proj)


def check_against_torch(cell, inputs: Inputs, dtype, device, with_h0=True, path="sequence", slices=None,
                        resident=False, rows=None, **kwargs):
    """Forward and every gradient of the fused module in ``dtype`` against torch.nn in float64 (bounded as
    tests/helpers.py states: for fp32 and half types by torch.nn's own error in ``dtype``). Asserts the kernels
    of ``path`` ran, by name (and with ``slices`` forced, on a grid of that many slices per batch tile; with
    ``resident``, the weight-stationary plan with batch tiles of ``rows`` rows, on its grid).
    Returns the launch counter."""
    fused, ref = make_pair(cell, dtype, device, input_size=inputs.x.shape[-1], **kwargs)
    proj = kwargs.get("proj_size", 0)
    states = initial_states(cell, fused, inputs.batch, inputs.kind == "unbatched", device, proj) if with_h0 else []
    torch.manual_seed(1)
    with torch.no_grad():
        seeds = [torch.randn_like(o) for o in outputs(ref(inputs.make(torch.float64)[0], as_hx(cell, states,
                                                                                              torch.float64)))]
    expected = forward_backward(ref, *inputs.make(torch.float64), as_hx(cell, states, torch.float64), seeds)
    same = None
    if dtype != torch.float64:
        torch_module = same_dtype_torch(ref, dtype)
        same = forward_backward(torch_module, *inputs.make(dtype), as_hx(cell, states, dtype), seeds)
    with fused_rnn.force_path(path, slices, resident, rows), fused_path_only() as launches:
        got = forward_backward(fused, *inputs.make(dtype), as_hx(cell, states, dtype), seeds)
    if path == "sequence":
        dirs = 2 if fused.bidirectional else 1
        gate_rows = K.GATES[K.CELLS[fused.mode]] * fused.hidden_size
        w_hh = torch.empty(dirs, gate_rows, kwargs.get("proj_size") or fused.hidden_size, device="meta")
        w_hr = torch.empty(dirs, 1, fused.hidden_size, device="meta") if kwargs.get("proj_size") else None
        with fused_rnn.force_path(path, slices, resident, rows):  # the plan the layer ran under
            plan = sequence_ops.plan_for(K.CELLS[fused.mode], inputs.batch, w_hh, w_hr, dtype, torch.device(device))
        if resident:  # forced: both directions in one launch, 16-unit slices, tiles of ``rows``
            tiles = triton.cdiv(inputs.batch, rows or dispatch.RESIDENT_ROWS[0])
            grid = (dirs * tiles, triton.cdiv(kwargs["hidden"], dispatch.RESIDENT_BLOCK_H))
            assert plan.resident and {g for grids in launches.grids.values() for g in grids} == {grid}
        steps = stepped_launches(plan.slices if resident else slices or 1, inputs.length,
                                 bool(kwargs.get("proj_size")), device)
        assert launches.by_kernel == sequence_kernels(fused.num_layers, dirs // plan.directions, steps)
        if slices is not None:
            assert {grid[1] for grids in launches.grids.values() for grid in grids} == {slices}
    else:
        assert_kernels(launches, kernels_of(fused, "stepwise"))
    assert all(o.dtype == dtype for o in got[0])
    names = ["output", "h_n", "c_n"][: len(got[0])] + ["d input"] + ["d h0", "d c0"][: len(states)]
    names += [f"d {n}" for n, _ in fused.named_parameters()]
    assert_all_close(names, got[0] + got[1], expected[0] + expected[1], dtype,
                     None if same is None else same[0] + same[1])
    return launches


def config_kwargs(config) -> tuple[dict, bool, bool]:
    bias, batch_first, bidirectional, num_layers, with_h0 = config
    return dict(bias=bias, batch_first=batch_first, bidirectional=bidirectional, num_layers=num_layers), \
        batch_first, with_h0


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "bias{}-bf{}-bi{}-L{}-h0{}".format(*map(int, c)))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_fp64(cell, kind, config, device):
    kwargs, batch_first, with_h0 = config_kwargs(config)
    check_against_torch(cell, Inputs(kind, batch_first, device), torch.float64, device, with_h0, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["batched", "packed_unsorted"])
@pytest.mark.parametrize("cell", CELLS)
def test_matches_torch_in_lower_precision(cell, kind, dtype, device):
    """fp32 and half types (fp32 state and math inside) against float64, every gradient included, bounded by
    the error torch.nn makes in the same dtype on the same inputs."""
    kwargs, batch_first, with_h0 = config_kwargs(CONFIGS[1])
    check_against_torch(cell, Inputs(kind, batch_first, device), dtype, device, with_h0, **kwargs)


@pytest.mark.parametrize("kind", ["batched", "unbatched", "packed_unsorted"])
@pytest.mark.parametrize("config", CONFIGS[:2], ids=["uni", "bi2"])
def test_lstm_proj_size(kind, config, device):
    kwargs, batch_first, with_h0 = config_kwargs(config)
    check_against_torch("LSTM", Inputs(kind, batch_first, device), torch.float64, device, with_h0, proj_size=3,
                        **kwargs)


# ----------------------------------------------------------------------------
# Tile-crossing shapes: every sequence kernel runs several batch programs and several column and reduction
# blocks, in each dtype whose plans differ (fp64 and IEEE fp32: FMA products, streamed; TF32 fp32: tensor-core
# products, which a plan may keep on chip). All three take 16-wide blocks (32 only for half types).
# ----------------------------------------------------------------------------
TILE_DTYPES = [(torch.float64, False), (torch.float32, False), (torch.float32, True)]
TILE_CELLS = ["LSTM", "LSTM_proj", "GRU", "RNN_TANH", "RNN_RELU"]


def tile_crossing_sizes(dtype, proj: bool) -> tuple[int, int, int]:
    """(batch, hidden, proj_size or 0) giving >= 2 batch programs and >= 3 column blocks (and reduction blocks)
    over both H and the projection, the last block of each partly masked, from ``sequence_blocks``."""
    widest = sequence_blocks(4096, 4096, dtype)
    batch = widest.block_b + 3
    width = 2 * widest.block_h + 1
    hidden, proj_size = (width + 4, width) if proj else (width, 0)
    tile = sequence_blocks(batch, hidden, dtype)
    assert triton.cdiv(batch, tile.block_b) >= 2
    assert min(hidden, proj_size or hidden) > 2 * tile.block_h and tile.block_k == tile.block_h
    return batch, hidden, proj_size


@pytest.mark.parametrize("dtype,tf32", TILE_DTYPES, ids=["fp64", "fp32-ieee", "fp32-tf32"])
@pytest.mark.parametrize("cell", TILE_CELLS)
def test_tile_crossing_shapes(cell, dtype, tf32, device, monkeypatch):
    """Packed unsorted lengths (spread over both batch programs), two bidirectional layers, h0/c0: the output,
    final states and every gradient against float64 torch.nn."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    check_packed_bidirectional(cell, tile_crossing_sizes(dtype, cell == "LSTM_proj"), dtype, device)


def check_packed_bidirectional(cell: str, sizes: tuple[int, int, int], dtype, device, slices=None,
                               resident=False, rows=None) -> None:
    """``check_against_torch`` for two bidirectional layers of (batch, hidden, proj_size) on packed unsorted
    input of 3 steps whose lengths spread over every batch tile (``cell`` may be "LSTM_proj")."""
    batch, hidden, proj_size = sizes
    lengths = [3, 1, 2, 3, 2] * (batch // 5) + [1, 3, 2, 1][: batch % 5]
    inputs = Inputs("packed_unsorted", False, device, seq_len=3, batch=batch, input_size=4, lengths=lengths)
    kwargs = dict(num_layers=2, bidirectional=True, hidden=hidden) | ({"proj_size": proj_size} if proj_size else {})
    check_against_torch(cell.removesuffix("_proj"), inputs, dtype, device, slices=slices, resident=resident,
                        rows=rows, **kwargs)


# ----------------------------------------------------------------------------
# Hidden-split shapes: each batch tile's hidden units split over 3 programs, each owning 2 column blocks (the
# last partly masked), 2 batch tiles; in the interpreter one launch per step and phase, on a GPU one launch.
# ----------------------------------------------------------------------------
SLICES = 3


def hidden_split_sizes(dtype, proj: bool) -> tuple[int, int, int]:
    """(batch, hidden, proj_size or 0): 2 batch tiles, and H (and the projection) over SLICES programs of 2
    column blocks each, the last block partly masked; from ``sequence_blocks`` and the plan's slice width."""
    tile = sequence_blocks(4096, 4096, dtype)
    batch = tile.block_b + 3
    width = (2 * SLICES - 1) * tile.block_h + 1
    # With a projection, H and P as far apart as the slices allow: code that walks one's slice in place of the
    # other's leaves columns out.
    hidden, proj_size = (2 * SLICES * tile.block_h - 1, width - tile.block_h) if proj else (width, 0)
    plan = make_plan(batch, hidden, dtype, SLICES, 132, concurrent=False)
    for units in (hidden, proj_size or hidden):
        per = plan.columns(units)
        assert per == 2 * tile.block_h and (SLICES - 1) * per < units < SLICES * per
    return batch, hidden, proj_size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell", TILE_CELLS)
def test_hidden_split_shapes(cell, dtype, device, monkeypatch):
    """The hidden-split sequence kernels (forced: SLICES programs per batch tile) against float64 torch.nn:
    packed unsorted lengths over both batch tiles, two bidirectional layers, h0/c0, output, final states and
    every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    sizes = hidden_split_sizes(dtype, cell == "LSTM_proj")
    check_packed_bidirectional(cell, sizes, dtype, device, slices=SLICES)


# ----------------------------------------------------------------------------
# Weight-stationary shapes: programs of RESIDENT_BLOCK_H units holding their slice of W_hh for the whole launch,
# 3 slices (the last partly masked), 2 batch tiles of the plan's height, a reduction width that is not a power of
# two (padded and masked), both directions and two layers.
# ----------------------------------------------------------------------------
def resident_sizes(rows: int, proj: bool) -> tuple[int, int, int]:
    """(batch, hidden, proj_size or 0): 2 batch tiles of ``rows``, 3 slices of RESIDENT_BLOCK_H units the last
    partly masked, H (and the projection) not powers of two."""
    unit = dispatch.RESIDENT_BLOCK_H
    batch, hidden = rows + 3, 2 * unit + 8
    proj_size = unit + 5 if proj else 0
    plan = dispatch.resident_plan(batch, hidden, torch.float64, 132, concurrent=False, rows=rows)
    assert plan.grid(batch) == (2, 3) and plan.columns(hidden) == unit and plan.resident
    assert hidden & (hidden - 1) and (proj_size & (proj_size - 1) if proj else True)
    return batch, hidden, proj_size


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("cell", TILE_CELLS)
def test_weight_stationary_shapes(cell, dtype, device, monkeypatch):
    """The weight-stationary sequence kernels (forced) against float64 torch.nn: packed unsorted lengths over
    both batch tiles, two bidirectional layers, h0/c0, output, final states and every gradient."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    check_packed_bidirectional(cell, resident_sizes(16, cell == "LSTM_proj"), dtype, device, resident=True)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_weight_stationary_taller_batch_tiles(cell, device, monkeypatch):
    """A weight-stationary plan with batch tiles of 32 rows (one resident copy of W per slice for 32 rows)."""
    check_packed_bidirectional(cell, resident_sizes(32, False), torch.float64, device, resident=True, rows=32)


def test_module_db_bidirectional_rnn_weight_gradients(device):
    """PyTorch's module_db case nn.RNN(2, 2, num_layers=2, bidirectional=True) in fp32 on unbatched input in
    [-9, 9] (saturated tanh units): the error of weight_ih_l0's gradient against float64 is torch.nn's own in
    the median over seeds (it was 1.7x, 8.8x at worst, before cell_math's tanh rounded once near +-1; single
    seeds still reach a few times torch's error where torch's own happens to be tiny)."""
    ratios = []
    for seed in range(12):
        torch.manual_seed(seed)
        ref = torch.nn.RNN(2, 2, num_layers=2, bidirectional=True).double().to(device)
        x = torch.rand(3, 2, dtype=torch.float64, device=device) * 18 - 9
        errors = []
        for module in (torch.nn.RNN(2, 2, num_layers=2, bidirectional=True),
                       fused_rnn.RNN(2, 2, num_layers=2, bidirectional=True)):
            module.to(device).load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
            out, h_n = module(x.float())
            (out.sum() + h_n.sum()).backward()
            errors.append(module.weight_ih_l0.grad.double())
        ref_out, ref_h = ref(x)
        (ref_out.sum() + ref_h.sum()).backward()
        torch_err, fused_err = ((e - ref.weight_ih_l0.grad).abs().max().item() for e in errors)
        ratios.append(fused_err / max(torch_err, 1e-12))
    assert sorted(ratios)[len(ratios) // 2] <= 1.3, ratios


@pytest.mark.parametrize("cell", CELLS)
def test_stepwise_path_matches_torch(cell, device):
    kwargs, batch_first, with_h0 = config_kwargs(CONFIGS[1])
    check_against_torch(cell, Inputs("packed_unsorted", batch_first, device), torch.float64, device, with_h0,
                        path="stepwise", **kwargs)


def test_stepwise_path_with_projection(device):
    kwargs, batch_first, with_h0 = config_kwargs(CONFIGS[1])
    check_against_torch("LSTM", Inputs("packed_unsorted", batch_first, device), torch.float64, device, with_h0,
                        path="stepwise", proj_size=3, **kwargs)


@pytest.mark.parametrize("cell", CELLS)
def test_double_backward_on_the_stepwise_path(cell, device):
    """create_graph=True through a layer: the stepwise path's fused cells are twice differentiable."""
    fused, ref = make_pair(cell, torch.float64, device)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)

    def second_order(module):
        y = outputs(module(x))[0]
        (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
        return torch.autograd.grad(gx.pow(2).sum(), [x, *module.parameters()])

    expected = second_order(ref)
    with fused_rnn.force_path("stepwise"), fused_path_only() as launches:
        got = second_order(fused)
    assert_kernels(launches, kernels_of(fused, "stepwise")), launches.by_kernel
    names = ["d input"] + [f"d {n}" for n, _ in fused.named_parameters()]
    assert_all_close(names, list(got), list(expected), torch.float64)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN_TANH"])
def test_launches_do_not_grow_with_sequence_length(cell, device):
    for length in (4, 64):
        fused, _ = make_pair(cell, torch.float32, device)
        x = torch.randn(length, 2, I, device=device, requires_grad=True)
        with fused_path_only() as launches:
            y, _ = fused(x)
            y.sum().backward()
        assert launches.by_kernel == sequence_kernels(1, 1), (length, launches.by_kernel)


def test_long_sequence(device):
    """T = 256 in fp32 against float64 torch.nn: the error (norm: the relative RMS) stays within a small factor
    of torch.nn's own fp32 error."""
    fused, ref = make_pair("LSTM", torch.float32, device)
    x = torch.randn(256, 2, I, device=device)
    with fused_path_only() as launches:
        y, _ = fused(x)
    assert launches.by_kernel == {"sequence_fwd_kernel": 1}
    y_ref, _ = ref(x.double())
    assert_close(y, y_ref, torch.float32, "output", torch_out=same_dtype_torch(ref, torch.float32)(x)[0])


def test_dropout_between_layers_matches_torch(device):
    """Three layers with dropout 0.5 between them, from the same seed as torch.nn: the same masks (both draw
    them with torch's dropout after layers 0 and 1), so the same outputs and gradients."""
    fused, ref = make_pair("LSTM", torch.float64, device, num_layers=3, dropout=0.5)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    results = []
    for module in (ref, fused):
        xi = x.clone().requires_grad_()
        torch.manual_seed(7)
        with fused_path_only() if module is fused else torch.enable_grad():
            y, _ = module(xi)
            grads = torch.autograd.grad(y, [xi, *module.parameters()], torch.ones_like(y))
        results.append([y.detach(), *grads])
    names = ["output", "d input"] + [f"d {n}" for n, _ in fused.named_parameters()]
    assert_all_close(names, results[1], results[0], torch.float64)
    fused.eval()
    with fused_path_only():
        no_dropout = fused(x)[0]
    assert_close(no_dropout, ref.eval()(x)[0], torch.float64, "eval mode: no dropout")
    assert (no_dropout - results[1][0]).abs().max() > 1e-3, "dropout changed the output in training mode"


@pytest.mark.parametrize("cell", CELLS)
def test_same_contract_as_torch(cell):
    fused, ref = make_pair(cell, torch.float32, "cpu", num_layers=2, bidirectional=True)
    ref = same_dtype_torch(ref, torch.float32)
    assert isinstance(fused, type(ref))
    assert list(fused.state_dict()) == list(ref.state_dict())
    ref.load_state_dict(fused.state_dict())
    fused.load_state_dict(ref.state_dict())
    fused.flatten_parameters()


@pytest.mark.parametrize(
    "case", ["4d_input", "input_size", "hidden_shape", "hidden_dims", "dtype", "empty_sequence"]
)
def test_errors_match_torch(case, device):
    fused, ref = make_pair("LSTM", torch.float32, device)
    ref = same_dtype_torch(ref, torch.float32)
    x = torch.randn(T, B, I, device=device)
    hx = (torch.zeros(1, B, H, device=device), torch.zeros(1, B, H, device=device))
    if case == "4d_input":
        x = x[None]
    elif case == "input_size":
        x = torch.randn(T, B, I + 1, device=device)
    elif case == "hidden_shape":
        hx = (torch.zeros(1, B + 1, H, device=device), hx[1])
    elif case == "hidden_dims":
        hx = (hx[0][0], hx[1][0])
    elif case == "dtype":
        x = x.double()
    elif case == "empty_sequence":
        x = x[:0]
    with pytest.raises(Exception) as expected:
        ref(x, hx)
    before = [p.clone() for p in fused.parameters()]
    with pytest.raises(expected.type):
        fused(x, hx)
    assert all(torch.equal(a, b) for a, b in zip(before, fused.parameters()))


def test_tied_and_noncontiguous_weights(device):
    fused, ref = make_pair("GRU", torch.float64, device, bidirectional=True)
    for m in (fused, ref):
        m.bias_ih_l0_reverse = m.bias_ih_l0
        m.weight_hh_l0 = torch.nn.Parameter(m.weight_hh_l0.detach().t().contiguous().t())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    with fused_path_only() as launches:
        y, h = fused(x)
    assert launches.by_kernel == {"sequence_fwd_kernel": 1}  # both directions in one launch
    y_ref, h_ref = ref(x)
    assert_all_close(["output", "h_n"], [y, h], [y_ref, h_ref], torch.float64)


# The classic size (T=100, B=64, input = hidden = 512) on a GPU, and a scaled-down copy of the same structure
# (several batch programs, several column and reduction blocks, several steps) that runs in the interpreter.
SIZES = {
    "classic": dict(seq_len=100, batch=64, input_size=512, hidden=512),
    "scaled": dict(seq_len=4, batch=19, input_size=8, hidden=37),
}


@pytest.mark.parametrize("dtype,tf32", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)],
                         ids=["fp32-ieee", "fp32-tf32", "bf16"])  # TF32 applies to fp32 products only
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("size", [
    pytest.param("classic", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="GPU-only: the classic size takes minutes in the interpreter")]),
    "scaled",
])
def test_classic_size(size, cell, dtype, tf32, device, monkeypatch):
    """Forward and every gradient against float64 torch.nn, bounded by torch.nn's own error in the same dtype and
    TF32 mode (cuDNN follows torch.backends.cudnn.allow_tf32, and so do the kernels)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    sz = SIZES[size]
    tile = sequence_blocks(sz["batch"], sz["hidden"], dtype)
    assert triton.cdiv(sz["batch"], tile.block_b) >= 2 and triton.cdiv(sz["hidden"], tile.block_h) >= 2
    inputs = Inputs("batched", False, device, seq_len=sz["seq_len"], batch=sz["batch"], input_size=sz["input_size"])
    check_against_torch(cell, inputs, dtype, device, hidden=sz["hidden"])


def test_weight_norm_and_reassigned_weights(device):
    fused, ref = make_pair("LSTM", torch.float64, device)
    for m in (fused, ref):
        torch.nn.utils.parametrizations.weight_norm(m, "weight_hh_l0")
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64, device=device)
    with fused_path_only() as launches:
        y, _ = fused(x)
    assert launches.by_kernel == {"sequence_fwd_kernel": 1}
    assert_close(y, ref(x)[0], torch.float64, "output")
    for m in (fused, ref):
        m.weight_ih_l0 = torch.nn.Parameter(torch.ones_like(m.weight_ih_l0) * 0.1)
    with fused_path_only():
        y, _ = fused(x)
    assert_close(y, ref(x)[0], torch.float64, "output with a reassigned weight")
