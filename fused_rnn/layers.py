"""Drop-in torch.nn.LSTM, GRU and RNN running each layer and direction as one Triton sequence kernel.

The modules subclass torch.nn's: same constructor, parameters, state_dict,
validation (torch's own ``check_forward_args``), input kinds (batched,
batch_first, unbatched, PackedSequence) and outputs. Where the Triton kernels
cannot run (CPU tensors without the interpreter) the parent's forward runs.
torch.compile traces them with no Dynamo setting (``let_dynamo_trace_fused_layers``).

Per layer and direction: one ``fused_rnn::sequence`` op, which makes one GEMM
for the input projection of the whole sequence (biases folded in, except
GRU's b_hn) and one kernel launch for the time loop (or the stepwise path, see
``dispatch``: the same projection, ``sequence_ops.project``, then a loop). A
PackedSequence is scattered once into a padded (T, B) layout with a lengths
vector (``packing``); the kernels handle the lengths.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import autocast, cell_ops, packing, reference, sequence_ops
from .backend import triton_runs_on
from .dispatch import choose_path, device_shared, device_sms
from .kernels import sequence_kernels as K
from .path_report import log_call


def _cell_id(module: nn.RNNBase) -> int:
    return K.CELLS[module.mode]


# The layers' stepwise path: reference.sequence's time loop over the fused cell ops.
STEPWISE_CELLS = (cell_ops.lstm_cell, cell_ops.gru_cell, cell_ops.rnn_cell)


def _differentiated(*tensors: Tensor | None) -> bool:
    """Whether autograd will record an op on ``tensors``: grad mode is on and one of them requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _stacked(per_direction: list[Tensor]) -> Tensor:
    """One layer's parameters of every direction, stacked on a leading axis (a view for one direction)."""
    return per_direction[0][None] if len(per_direction) == 1 else torch.stack(per_direction)


def run_layers(module: nn.RNNBase, x: Tensor, h0: Tensor, c0: Tensor | None, lengths: Tensor):
    """All layers and directions over padded time-major x (T, B, I): on the sequence path one op per layer
    for both directions.

    h0 (L*D, B, H_out), c0 (L*D, B, H) or None. Returns y (T, B, D*H_out), h_n, c_n.
    """
    cell = _cell_id(module)
    dirs = 2 if module.bidirectional else 1
    weights = module._flat_weights
    per = len(weights) // (module.num_layers * dirs)
    proj = getattr(module, "proj_size", 0)
    norm = getattr(module, "layer_norm", False)  # haste's LayerNorm LSTM / GRU: the sequence kernels only
    if triton_runs_on(x):
        path = "sequence" if norm else choose_path(module.mode, module.hidden_size, proj, x.dtype,
                                                   device_sms(x.device), device_shared(x.device))
        cells = STEPWISE_CELLS
    else:  # what torch.nn cannot run (heads, the sLSTM, zoneout, DropConnect, LayerNorm) where no kernel runs
        path, cells = "reference", reference.CELLS
    h_n, c_n = [], []
    hidden = module.hidden_size
    for layer in range(module.num_layers):
        rows = slice(layer * dirs, (layer + 1) * dirs)  # this layer's directions in h0, c0 and h_n
        directions = [_dropconnect(module, weights[k * per : (k + 1) * per]) for k in range(rows.start, rows.stop)]
        keep = zoneout_keep(module, x.shape[0], x.shape[1], x)
        lns = [module.layer_norm_weights(k) for k in range(rows.start, rows.stop)] if norm else None
        if path != "sequence":
            outs = []
            for d, w in enumerate(directions):
                b_ih, b_hh = (w[2][None], w[3][None]) if module.bias else (None, None)
                if norm:  # the input product normalised (outside the time loop), then the biases
                    xp, b_hn = sequence_ops.project(normalised_inputs(x, w[0][None], lns[d][0][None]), None, b_ih,
                                                    b_hh, cell)
                else:
                    xp, b_hn = sequence_ops.project(x, w[0][None], b_ih, b_hh, cell)
                y, h, c = reference.sequence(
                    module.mode, xp, w[1], None if b_hn is None else b_hn[0], w[-1] if proj > 0 else None,
                    h0[rows.start + d], None if c0 is None else c0[rows.start + d], lengths, d == 1, cells,
                    keep=sequence_ops._keep_of(keep, d, hidden), ln=lns[d][1] if norm else None,
                )
                outs.append(y)
                h_n.append(h[None])
                c_n.append(None if c is None else c[None])
            x = outs[0] if dirs == 1 else torch.cat(outs, dim=-1)
        else:  # one op for the layer's directions; it projects x itself and keeps x, not the projection
            w_ih, w_hh = _stacked([w[0] for w in directions]), _stacked([w[1] for w in directions])
            b_ih = _stacked([w[2] for w in directions]) if module.bias else None
            b_hh = _stacked([w[3] for w in directions]) if module.bias else None
            w_hr = _stacked([w[-1] for w in directions]) if proj > 0 else None
            ln = None
            if norm:  # the op takes the normalised input products (the directions side by side) as its x
                x, w_ih = normalised_inputs(x, w_ih, _stacked([g[0] for g in lns])), None
                ln = _stacked([g[1] for g in lns]) if lns[0][1] is not None else None  # None: the input only
            inputs = (x, w_ih, b_ih, b_hh, w_hh, w_hr, h0[rows], None if c0 is None else c0[rows])
            save = _differentiated(*inputs, ln)  # else the gates are not written
            x, h, c, *_ = sequence_ops.sequence(*inputs, lengths, cell, False, save, False, keep, ln)
            h_n.append(h)
            c_n.append(c)
        if module.dropout > 0 and module.training and layer < module.num_layers - 1:
            x = F.dropout(x, module.dropout, training=True)
    return x, torch.cat(h_n), (torch.cat(c_n) if cell in (K.LSTM, K.SLSTM) else None)


def normalised_inputs(x: Tensor, w_ih: Tensor, gains: Tensor) -> Tensor:
    """haste's normalised input products LN(x W_ih^T) * gain of D directions, (T, B, I) -> (T, B, D*G), the
    directions side by side (as ``sequence_ops.project``'s xp): one GEMM for every direction, each direction's G
    values normalised on their own. w_ih (D, G, I), gains (D, G)."""
    directions, gates, _ = w_ih.shape
    product = F.linear(x, w_ih.reshape(directions * gates, -1)).unflatten(-1, (directions, gates))
    return (F.layer_norm(product, (gates,), eps=reference.LN_EPS) * gains).flatten(-2)


def zoneout_keep(module: nn.RNNBase, steps: int, batch: int, x: Tensor) -> Tensor | None:
    """One layer's zoneout factors (haste's zoneout of h): None without zoneout; in training a fresh mask
    (T, B, D*H) of x's dtype drawn from torch's RNG, 1 (probability 1 - zoneout) keeping the new h and 0 the
    previous one; in eval the one factor 1 - zoneout, (1,): h = zoneout h_prev + (1 - zoneout) h_new."""
    p = getattr(module, "zoneout", 0.0)
    if not p:
        return None
    if not module.training:
        return torch.full((1,), 1.0 - p, dtype=x.dtype, device=x.device)
    dirs = 2 if module.bidirectional else 1
    return torch.empty(steps, batch, dirs * module.hidden_size, dtype=x.dtype, device=x.device).bernoulli_(1.0 - p)


def _dropconnect(module: nn.RNNBase, weights: list[Tensor]) -> list[Tensor]:
    """A direction's weights with DropConnect on W_hh (dropout on its entries, drawn at each call) in training."""
    p = getattr(module, "dropconnect", 0.0)
    if not p or not module.training:
        return weights
    return [weights[0], F.dropout(weights[1], p, training=True), *weights[2:]]


def _check_attributes(x: Tensor, states: tuple[Tensor, ...], params: list[Tensor]) -> None:
    """ATen's RNN check_attributes, with its device messages: the states and parameters on the input's
    device, and in its dtype unless autocast casts them (torch's CPU and CUDA paths reject a mismatch
    with a RuntimeError from their matmuls; the kernels would silently convert)."""
    check_dtype = autocast.lower_dtype(x.device.type) is None
    for name, tensors in (("hidden", states), ("parameter", params)):
        for t in tensors:
            if t.device != x.device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor at {x.device} "
                    f"and {name} tensor at {t.device}"
                )
            if check_dtype and t.dtype != x.dtype:
                raise RuntimeError(
                    f"Input and {name} tensors are not the same dtype, found input tensor with {x.dtype} "
                    f"and {name} tensor with {t.dtype}"
                )


def fused_forward(module: nn.RNNBase, input, hx):
    """torch.nn.RNNBase.forward's contract on the fused kernels, autocast included."""
    output, hidden = _forward(module, input, hx)
    x = input.data if isinstance(input, PackedSequence) else input
    low = autocast.lower_dtype(x.device.type)
    if low is None:
        return output, hidden
    given = hx if hx is None or isinstance(hx, Tensor) else hx[0]
    packed = isinstance(output, PackedSequence)
    dtype = autocast.output_dtype(module.mode, x.device.type, low, (x if given is None else given).dtype, packed)
    if packed:
        output = output._replace(data=output.data.to(dtype))
    else:
        output = output.to(dtype)
    hidden = tuple(h.to(dtype) for h in hidden) if isinstance(hidden, tuple) else hidden.to(dtype)
    return output, hidden


# States of a layer's hx beside h, (L*D, batch, H) each: LSTM c; sLSTM c, n, m.
OTHER_STATES = {"LSTM": 1, "SLSTM": 3}


def _state_sizes(module: nn.RNNBase, batch: int) -> list[tuple[int, int, int]]:
    """The state sizes torch.nn expects: hidden (L*D, batch, H_out), then for LSTM the cell state (L*D, batch, H)
    (the sLSTM: c, n and m)."""
    rows = module.num_layers * (2 if module.bidirectional else 1)
    h_out = module.proj_size if module.proj_size > 0 else module.hidden_size
    return [(rows, batch, h_out)] + [(rows, batch, module.hidden_size)] * OTHER_STATES.get(module.mode, 0)


def _zero_states(module: nn.RNNBase, batch: int, x: Tensor):
    """Zero initial states in hx's structure (a tuple for LSTM and sLSTM), of x's dtype and device."""
    zeros = tuple(torch.zeros(size, dtype=x.dtype, device=x.device) for size in _state_sizes(module, batch))
    return zeros if module.mode in OTHER_STATES else zeros[0]


def _packed_batch(module: nn.RNNBase, input: PackedSequence, hx) -> int:
    """The batch size of packed input, batch_sizes[0].

    Under torch.compile, where it is data, it is the batch size the states will have when known (sorted_indices'
    length, else hx's; ``packing.unpack`` checks it against batch_sizes[0] when the graph runs), else an unbacked
    SymInt.
    """
    if not torch.compiler.is_compiling():
        return int(input.batch_sizes[0])
    if input.sorted_indices is not None:
        return input.sorted_indices.shape[0]
    state = hx[0] if hx is not None and module.mode in OTHER_STATES else hx
    if state is not None and state.dim() == 3:
        return state.shape[1]
    return packing.packed_batch(input.batch_sizes, torch.empty(0))  # a fresh token per call: see packed_batch


def _check_forward_args(module: nn.RNNBase, x: Tensor, hx, batch_sizes: Tensor | None, batch: int) -> None:
    """torch's check_forward_args. It reads packed input's batch size as ``int(batch_sizes[0])``, data under
    torch.compile: there the states are checked against ``batch`` (``_packed_batch``'s) instead."""
    if batch_sizes is None or not torch.compiler.is_compiling():
        module.check_forward_args(x, hx, batch_sizes)
        return
    module.check_input(x, batch_sizes)
    if module.mode in OTHER_STATES:  # torch.nn.LSTM's messages
        for i, (state, size) in enumerate(zip(hx, _state_sizes(module, batch), strict=True)):
            module.check_hidden_size(state, size, f"Expected hidden[{i}] size {{}}, got {{}}")
    else:
        module.check_hidden_size(hx, _state_sizes(module, batch)[0])


def _forward(module: nn.RNNBase, input, hx):
    """torch.nn.RNNBase.forward's contract on the fused kernels."""
    module._update_flat_weights()
    is_lstm = module.mode in OTHER_STATES  # hx is a tuple (LSTM: h, c; sLSTM: h, c, n, m)
    packed = isinstance(input, PackedSequence)
    if packed:
        data, batch_sizes, sorted_indices, unsorted_indices = input
        batch, is_batched = _packed_batch(module, input, hx), True
        x = data
    else:
        batch_sizes = sorted_indices = unsorted_indices = None
        if input.dim() not in (2, 3):
            raise ValueError(f"{type(module).__name__}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        x = input if is_batched else input.unsqueeze(0 if module.batch_first else 1)
        batch = x.size(0) if module.batch_first else x.size(1)
    if hx is None:
        hx = _zero_states(module, batch, x)
    elif not packed:
        states = hx if is_lstm else (hx,)
        want = 3 if is_batched else 2
        if any(s.dim() != want for s in states):
            kind = "batched 3-D" if is_batched else "unbatched 2-D"
            if is_lstm:  # torch.nn's messages, word for word
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got ({dims}) tensors")
            raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got {hx.dim()}-D tensor")
        if not is_batched:
            hx = tuple(s.unsqueeze(1) for s in hx) if is_lstm else hx.unsqueeze(1)
    if packed or hx is not None:
        hx = module.permute_hidden(hx, sorted_indices)
    _check_forward_args(module, x, hx, batch_sizes, batch)
    _check_attributes(x, hx if is_lstm else (hx,), module._flat_weights)
    if packed:
        padded, lengths, positions = packing.unpack(x, batch_sizes, batch)
    else:
        padded = x.transpose(0, 1) if module.batch_first else x
        if padded.shape[0] == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        lengths = torch.full((padded.shape[1],), padded.shape[0], dtype=torch.int64, device=x.device)
    if not is_lstm:
        h0, c0 = hx, None
    else:  # the LSTM's c as given (a view of hx, not a copy); the sLSTM's c, n, m side by side
        h0, c0 = hx[0], hx[1] if len(hx) == 2 else torch.cat(hx[1:], dim=-1)
    y, h_n, c_n = run_layers(module, padded, h0, c0, lengths)
    if packed:
        output = PackedSequence(packing.pack(y, positions), batch_sizes, sorted_indices, unsorted_indices)
    else:
        output = y.transpose(0, 1) if module.batch_first else y
        if not is_batched:
            output = output.squeeze(0 if module.batch_first else 1)
    hidden = (h_n, *c_n.chunk(len(hx) - 1, dim=-1)) if is_lstm else h_n
    if not packed and not is_batched:
        hidden = tuple(s.squeeze(1) for s in hidden) if is_lstm else hidden.squeeze(1)
    return output, module.permute_hidden(hidden, unsorted_indices)


def _forward_or_fallback(module: nn.RNNBase, torch_forward, input, hx):
    """The fused forward where the Triton kernels run on the input's device, else torch.nn's own (with zoneout or
    DropConnect, which torch.nn lacks, a plain-torch loop)."""
    log_call(module, input)
    if not triton_runs_on(input.data if isinstance(input, PackedSequence) else input) and not module.zoneout \
            and not module.dropconnect:
        return torch_forward(input, hx)
    return fused_forward(module, input, hx)


_dynamo_hook_installed = False


def _runs_fused(module: nn.RNNBase) -> bool:
    """Whether the Triton kernels run on the layer's weights' device (its inputs must be on it too)."""
    weight = next(module.parameters(), None)
    return weight is not None and triton_runs_on(weight)


def let_dynamo_trace_fused_layers() -> None:
    """Let torch.compile trace the fused layers without ``torch._dynamo.config.allow_rnn``; once per process.

    Dynamo refuses every instance of a torch.nn.RNN/GRU/LSTM subclass unless ``allow_rnn`` is set (a check on
    the class in ``VariableBuilder.wrap_module``, torch/_dynamo/variables/builder.py, before it looks at the
    forward), and torch offers no supported way for a subclass to opt out. Setting ``allow_rnn`` would also
    change how torch.nn's own layers compile (traced into the graph instead of refused), so instead this wraps
    that one Dynamo method: for an instance of fused_rnn's LSTM, GRU or RNN whose weights are where the Triton
    kernels run, it runs Dynamo's own code with ``allow_rnn`` patched on for the duration of that call (a
    context-local config patch); for every other value, torch.nn's layers and fused layers on the torch
    fallback (their forward is torch.nn's) included, it calls Dynamo's code unchanged. ``allow_rnn`` itself is
    never set. If this torch's Dynamo lacks that method, nothing is changed and ``allow_rnn = True`` remains
    the way.

    Called when a fused layer is created, unpickled or copied, and by ``fused_rnn.convert``: Dynamo is imported
    then (the first call of a custom op imports it anyway).
    """
    global _dynamo_hook_installed
    if _dynamo_hook_installed:
        return
    _dynamo_hook_installed = True
    try:
        from torch._dynamo import config
        from torch._dynamo.variables.builder import VariableBuilder
    except ImportError:  # a torch without Dynamo
        return
    refusing = getattr(VariableBuilder, "wrap_module", None)
    if refusing is None or getattr(refusing, "_fused_rnn_original", None) is not None:
        return

    @functools.wraps(refusing)
    def wrap_module(self, value):
        if isinstance(value, (LSTM, GRU, RNN)) and not config.allow_rnn and _runs_fused(value):
            with config.patch(allow_rnn=True):
                return refusing(self, value)
        return refusing(self, value)

    wrap_module._fused_rnn_original = refusing
    VariableBuilder.wrap_module = wrap_module


def _load_haste(module: nn.RNNBase, state: dict[str, Tensor], order: tuple[int, ...], names: dict[str, str]) -> None:
    """Copy a haste layer's parameters into a one-layer, one-direction fused layer: haste's (in, gates x H)
    matrices transposed, their gate blocks reordered to torch's (``order``: haste's block of each torch gate);
    a bias haste lacks is zero."""
    if module.num_layers != 1 or module.bidirectional or not module.bias or module.proj_size:
        raise ValueError("a haste layer is one layer, one direction, with biases and no projection")
    h = module.hidden_size

    def torch_order(t: Tensor) -> Tensor:
        blocks = t.reshape(*t.shape[:-1], len(order), h)
        return blocks[..., list(order), :].reshape(t.shape)

    with torch.no_grad():
        for ours, theirs in names.items():
            value = torch_order(state[theirs])
            getattr(module, ours).copy_(value.t() if value.dim() == 2 else value)
        if "bias_hh_l0" not in names:
            module.bias_hh_l0.zero_()


class _Compilable:
    """Mixin of the fused layers: creating one (or unpickling, copying) installs ``let_dynamo_trace_fused_layers``;
    haste's regularisers as keyword arguments beyond torch.nn's.

    ``zoneout`` (haste's zoneout of h: in training each unit keeps its previous h with probability ``zoneout``,
    masks drawn per call from torch's RNG; in eval h = zoneout h_prev + (1 - zoneout) h_new; not with
    ``proj_size``) and ``dropconnect`` (dropout on W_hh's entries, per call, in training). Both default to 0,
    class attributes, so ``fused_rnn.convert`` may still switch a torch.nn layer's class to a fused one."""

    zoneout: float = 0.0
    dropconnect: float = 0.0

    def __init__(self, *args, zoneout: float = 0.0, dropconnect: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        for name, p in (("zoneout", zoneout), ("dropconnect", dropconnect)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if zoneout and self.proj_size > 0:
            raise ValueError("zoneout with proj_size is not supported")
        self.zoneout, self.dropconnect = zoneout, dropconnect
        let_dynamo_trace_fused_layers()

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)}" for k in ("zoneout", "dropconnect") if getattr(self, k))
        return super().extra_repr() + extra

    def __setstate__(self, state):
        super().__setstate__(state)
        let_dynamo_trace_fused_layers()


class LSTM(_Compilable, nn.LSTM):
    """torch.nn.LSTM on Triton sequence kernels (one launch per layer and direction); ``forget_bias``: the forget
    gate's initial bias (haste's; b_ih's forget block set to it and b_hh's to 0 at initialisation)."""

    forget_bias: float | None = None

    def __init__(self, *args, forget_bias: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if forget_bias is not None:
            self.forget_bias = forget_bias
            self.reset_parameters()

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``LSTM``'s parameters (one layer, one direction): ``kernel`` (I, 4H),
        ``recurrent_kernel`` (H, 4H), ``bias`` (4H,), gates i, g, f, o (torch's are i, f, g, o); b_hh is set to 0."""
        _load_haste(self, state, (0, 2, 1, 3), {"weight_ih_l0": "kernel", "weight_hh_l0": "recurrent_kernel",
                                                "bias_ih_l0": "bias"})

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.forget_bias is not None and self.bias:
            h = self.hidden_size
            with torch.no_grad():
                for name, param in self.named_parameters():
                    if name.startswith("bias_"):
                        param[h : 2 * h] = self.forget_bias if name.startswith("bias_ih") else 0.0

    def forward(self, input, hx=None):
        return _forward_or_fallback(self, super().forward, input, hx)


class GRU(_Compilable, nn.GRU):
    """torch.nn.GRU on Triton sequence kernels (one launch per layer and direction)."""

    def load_haste_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load a haste ``GRU``'s parameters (one layer, one direction): ``kernel`` (I, 3H), ``recurrent_kernel``
        (H, 3H), ``bias`` and ``recurrent_bias`` (3H,), gates z, r, g (torch's: r, z, n; haste's recurrent bias
        sits inside r * (W_hg h + b_hg) as torch's b_hn does)."""
        _load_haste(self, state, (1, 0, 2), {"weight_ih_l0": "kernel", "weight_hh_l0": "recurrent_kernel",
                                             "bias_ih_l0": "bias", "bias_hh_l0": "recurrent_bias"})

    def forward(self, input, hx=None):
        return _forward_or_fallback(self, super().forward, input, hx)


class RNN(_Compilable, nn.RNN):
    """torch.nn.RNN (tanh or relu) on Triton sequence kernels (one launch per layer and direction)."""

    def forward(self, input, hx=None):
        return _forward_or_fallback(self, super().forward, input, hx)
