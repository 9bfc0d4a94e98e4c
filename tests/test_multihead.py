"""The multi-head layers and the sLSTM module (fused_rnn/multihead.py).

Oracles: torch.nn's own LSTM, GRU and RNN with the dense block-diagonal W_hh
(the same function; a compact W_hh's gradient is the diagonal blocks of the
dense one's), and FlashRNN's own sLSTM (its "vanilla_fwbw" backend) for the
sLSTM, layer by layer and direction by direction. Shapes cross the tiles: 17
rows (two batch tiles), 48 units in 3 heads of 16, two layers, both
directions, packed input of unequal lengths.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import fused_path_only
from helpers import assert_close
from torch.nn.utils.rnn import pack_padded_sequence

import fused_rnn
from fused_rnn import reference
from fused_rnn.reference import block_diagonal

T, B, I, H, HEADS = 5, 17, 6, 48, 3
LENGTHS = torch.tensor([5, 1, 3, 2] * 4 + [4])


def diagonal_blocks(dense: torch.Tensor, head: int) -> torch.Tensor:
    """The compact (G, head) form of a block-diagonal (G, H) matrix: each row's block of its own head."""
    rows, hidden = dense.shape
    heads = hidden // head
    return torch.einsum("gkdkp->gkdp", dense.reshape(rows // hidden, heads, head, heads, head)).reshape(rows, head)


NN = {"LSTM": (fused_rnn.MultiHeadLSTM, torch.nn.LSTM), "GRU": (fused_rnn.MultiHeadGRU, torch.nn.GRU),
      "RNN": (fused_rnn.MultiHeadRNN, torch.nn.RNN)}


def _states(cell: str, device, dtype=torch.float64):
    g = torch.Generator().manual_seed(2)
    h0 = torch.randn(4, B, H, generator=g, dtype=dtype).to(device).requires_grad_()
    c0 = torch.randn(4, B, H, generator=g, dtype=dtype).to(device).requires_grad_()
    return (h0, c0) if cell == "LSTM" else h0


@pytest.mark.parametrize("plan", [{}, {"resident": True}], ids=["planned", "resident"])
@pytest.mark.parametrize("cell", list(NN))
def test_multihead_layers_equal_torch_nn_with_a_block_diagonal_w_hh(cell, plan, device):
    """Two bidirectional layers, batch_first, packed input of unequal lengths, given states: every output and
    every gradient (input, each parameter, states) within the fp64 bound of torch.nn's, run by the sequence
    kernels."""
    ours_cls, nn_cls = NN[cell]
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=torch.float64, device=device)
    ours = ours_cls(I, H, num_heads=HEADS, **kwargs)
    theirs = nn_cls(I, H, **kwargs)
    head = H // HEADS
    assert ours.weight_hh_l1_reverse.shape == (theirs.weight_hh_l1_reverse.shape[0], head)
    theirs.load_state_dict({k: block_diagonal(v, H) if k.startswith("weight_hh") else v
                            for k, v in ours.state_dict().items()})
    x = torch.randn(B, T, I, dtype=torch.float64, device=device, requires_grad=True)
    hx = _states(cell, device)
    results, launched = [], []
    for module, context in ((ours, fused_path_only()), (theirs, contextlib.nullcontext())):
        with context as launches, fused_rnn.force_path("sequence", **plan) if module is ours else contextlib.nullcontext():
            out, h = module(pack_padded_sequence(x, LENGTHS, batch_first=True, enforce_sorted=False), hx)
            flat = [out.data, *(h if isinstance(h, tuple) else (h,))]
            loss = sum((o * torch.cos(o)).sum() for o in flat)
            inputs = [x, *(hx if isinstance(hx, tuple) else (hx,)), *module.parameters()]
            results.append(flat + list(torch.autograd.grad(loss, inputs)))
        launched.append(launches)
    assert launched[0].by_kernel.keys() == {"sequence_fwd_kernel", "sequence_bwd_kernel"}
    names = [n for n, _ in ours.named_parameters()]
    got, want = results
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        name = names[k - (len(got) - len(names))] if k >= len(got) - len(names) else f"result {k}"
        if name.startswith("weight_hh"):
            w = diagonal_blocks(w, head)
        assert_close(g, w, torch.float64, f"{cell} {name}")


@pytest.mark.parametrize("cls", [fused_rnn.MultiHeadLSTM, fused_rnn.MultiHeadGRU, fused_rnn.MultiHeadRNN])
def test_one_head_is_the_torch_nn_layer(cls, device):
    """num_heads=1: the parameters, their initialisation and the results of fused_rnn's (torch.nn's) layer."""
    base = {fused_rnn.MultiHeadLSTM: fused_rnn.LSTM, fused_rnn.MultiHeadGRU: fused_rnn.GRU,
            fused_rnn.MultiHeadRNN: fused_rnn.RNN}[cls]
    torch.manual_seed(5)
    ours = cls(I, 20, num_layers=2, device=device)
    torch.manual_seed(5)
    plain = base(I, 20, num_layers=2, device=device)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), plain.state_dict().values(), strict=True))
    x = torch.randn(T, 3, I, device=device)
    assert torch.equal(ours(x)[0], plain(x)[0])


# ----------------------------------------------------------------------------
# sLSTM against FlashRNN, layer by layer
# ----------------------------------------------------------------------------
flashrnn = pytest.importorskip("flashrnn", reason="FlashRNN (test dependency) is not installed").flashrnn


def flashrnn_slstm(module: fused_rnn.sLSTM, x: torch.Tensor, hx: tuple[torch.Tensor, ...]):
    """The module's function (time-major x, full lengths) composed from FlashRNN's sLSTM, one call per layer and
    direction: Wx = x W_ih^T + b_ih + b_hh, R = W_hh viewed (4, heads, D, D), the reverse direction on the
    time-flipped input. Returns y and the four states (L*D, B, H)."""
    heads, head = module.num_heads, module.hidden_size // module.num_heads
    dirs = 2 if module.bidirectional else 1
    finals = [[] for _ in range(4)]
    for layer in range(module.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{layer}" + ("_reverse" if d else "")
            w_ih, w_hh = getattr(module, "weight_ih" + sfx), getattr(module, "weight_hh" + sfx)
            xp = x @ w_ih.t() + getattr(module, "bias_ih" + sfx) + getattr(module, "bias_hh" + sfx)
            xp = xp.flip(0) if d else xp
            Wx = xp.transpose(0, 1).reshape(x.shape[1], x.shape[0], 4, heads, head)
            states = torch.stack([s[layer * dirs + d] for s in hx]).reshape(4, x.shape[1], 1, heads, head)
            every, last = flashrnn(Wx, w_hh.reshape(4, heads, head, head), torch.zeros_like(Wx[0, 0]), states,
                                   function="slstm", backend="vanilla_fwbw", dtype="float32")
            y = every[0].reshape(x.shape[1], x.shape[0], -1).transpose(0, 1)
            outs.append(y.flip(0) if d else y)
            for k in range(4):
                finals[k].append(last[k].reshape(x.shape[1], -1))
        x = torch.cat(outs, dim=-1)
    return x, tuple(torch.stack(f) for f in finals)


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)], ids=["one-layer", "two-layers-bi"])
def test_slstm_module_equals_flashrnn_layer_by_layer(layers, bidirectional, device):
    """Outputs, the four final states and the gradients of the input, every parameter and the initial h, c and
    n within the fp64 bound of FlashRNN's sLSTM composed layer by layer (FlashRNN's backward gives m none)."""
    torch.manual_seed(1)
    module = fused_rnn.sLSTM(I, H, num_heads=HEADS, num_layers=layers, bidirectional=bidirectional,
                             dtype=torch.float64, device=device)
    rows = layers * (2 if bidirectional else 1)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    g = torch.Generator().manual_seed(3)
    hx = [torch.randn(rows, B, H, generator=g, dtype=torch.float64).to(device) for _ in range(4)]
    hx[2] = hx[2].abs() + 0.5  # n > 0
    hx = tuple(s.requires_grad_() for s in hx)
    results = []
    for run in (lambda: module(x, hx), lambda: flashrnn_slstm(module, x, hx)):
        y, states = run()
        loss = (y * torch.cos(y)).sum() + sum((s * s).sum() for s in states[:3])
        results.append([y, *states, *torch.autograd.grad(loss, [x, *hx[:3], *module.parameters()])])
    for k, (got, want) in enumerate(zip(*results, strict=True)):
        assert_close(got, want, torch.float64, f"sLSTM result {k}")


def test_packed_input_equals_each_sequence_alone(device):
    """sLSTM and MultiHeadGRU on packed sequences of unequal lengths: each sequence's outputs and final states
    are those of running it alone (no padding), both directions."""
    torch.manual_seed(4)
    for module in (fused_rnn.sLSTM(I, H, num_heads=HEADS, bidirectional=True, dtype=torch.float64, device=device),
                   fused_rnn.MultiHeadGRU(I, H, num_heads=HEADS, bidirectional=True, dtype=torch.float64,
                                          device=device)):
        x = torch.randn(T, B, I, dtype=torch.float64, device=device)
        out, h = module(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
        padded, _ = torch.nn.utils.rnn.pad_packed_sequence(out)
        h = h if isinstance(h, tuple) else (h,)
        for b in (0, 1, 16):
            n = int(LENGTHS[b])
            alone, h_alone = module(x[:n, b : b + 1])
            h_alone = h_alone if isinstance(h_alone, tuple) else (h_alone,)
            assert_close(padded[:n, b : b + 1], alone, torch.float64, f"{type(module).__name__} row {b}")
            for s, s_alone in zip(h, h_alone, strict=True):
                assert_close(s[:, b : b + 1], s_alone, torch.float64, f"{type(module).__name__} row {b} state")


def test_compiles_as_one_graph_and_matches_eager(device):
    """torch.compile(fullgraph=True) of an sLSTM and a MultiHeadLSTM: the same outputs as eager."""
    torch.manual_seed(6)
    slstm = fused_rnn.sLSTM(I, 32, num_heads=2, device=device)
    mh = fused_rnn.MultiHeadLSTM(32, 32, num_heads=2, batch_first=True, device=device)

    def model(x):
        y, (h, c, n, m) = slstm(x)
        z, (hz, cz) = mh(y.transpose(0, 1))
        return z, h, n, hz

    x = torch.randn(T, 3, I, device=device)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)(x)
    for e, c in zip(eager, compiled, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)


def test_autocast_runs_the_kernels_in_the_lower_dtype(device):
    """Under autocast the sLSTM returns the autocast dtype, within the bf16 bound of its fp32 result."""
    torch.manual_seed(7)
    module = fused_rnn.sLSTM(I, 32, num_heads=2, device=device)
    x = torch.randn(T, 3, I, device=device)
    want, _ = module(x)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        got, states = module(x)
    assert got.dtype == torch.bfloat16 and all(s.dtype == torch.bfloat16 for s in states)
    assert_close(got.float(), want.double(), torch.bfloat16, "sLSTM under autocast")


def test_state_dict_round_trip_and_the_layout_of_a_flashrnn_matrix(device):
    """A state_dict loads into a fresh module with the same results; W_hh is FlashRNN's R viewed (G*H, D)."""
    torch.manual_seed(8)
    a = fused_rnn.sLSTM(I, 32, num_heads=4, device=device)
    b = fused_rnn.sLSTM(I, 32, num_heads=4, device=device)
    b.load_state_dict(a.state_dict())
    x = torch.randn(T, 2, I, device=device)
    assert torch.equal(a(x)[0], b(x)[0])
    assert a.weight_hh_l0.shape == (4 * 32, 8) and a.weight_hh_l0.view(4, 4, 8, 8).shape == (4, 4, 8, 8)


def test_rejects_what_it_cannot_run():
    with pytest.raises(ValueError, match="must divide"):
        fused_rnn.MultiHeadLSTM(4, 10, num_heads=3)
    with pytest.raises(ValueError, match="proj_size"):
        fused_rnn.MultiHeadLSTM(4, 8, num_heads=2, proj_size=2)
    with pytest.raises(ValueError, match="projection"):
        fused_rnn.sLSTM(4, 8, proj_size=2)
    module = fused_rnn.sLSTM(4, 8)
    x = torch.randn(3, 2, 4)
    with pytest.raises(RuntimeError, match=r"hx = \(h, c, n, m\)"):
        module(x, (torch.zeros(1, 2, 8), torch.zeros(1, 2, 8)))


def test_double_backward_with_heads_equals_torch_nn(device):
    """create_graph=True through a MultiHeadGRU: the gradient of a function of the first gradients equals
    torch.nn's with the dense block-diagonal W_hh (the op's backward recomputes the layer in plain torch)."""
    torch.manual_seed(9)
    ours = fused_rnn.MultiHeadGRU(3, 8, num_heads=2, dtype=torch.float64, device=device)
    theirs = torch.nn.GRU(3, 8, dtype=torch.float64, device=device)
    theirs.load_state_dict({k: block_diagonal(v, 8) if k.startswith("weight_hh") else v
                            for k, v in ours.state_dict().items()})
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for module in (ours, theirs):
        y, _ = module(x)
        (dx,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        results.append(torch.autograd.grad((dx * dx).sum(), [x, module.weight_ih_l0, module.weight_hh_l0]))
    (gx, gw, gr), (tx, tw, tr) = results
    assert_close(gx, tx, torch.float64, "d2 x")
    assert_close(gw, tw, torch.float64, "d2 W_ih")
    assert_close(gr, diagonal_blocks(tr, 4), torch.float64, "d2 W_hh")


def test_slstm_recomputed_gradients_are_the_kernels(device):
    """The sLSTM's double-backward path (autograd through the reference sLSTM, m detached, the clamp straight
    through) gives the first-order gradients the kernels give: the same rule, so its second order is that
    rule's derivative."""
    torch.manual_seed(10)
    module = fused_rnn.sLSTM(3, 16, num_heads=2, dtype=torch.float64, device=device)
    x = torch.randn(5, 2, 3, dtype=torch.float64, device=device, requires_grad=True)
    grads = []
    for create_graph in (False, True):
        y, (h, c, n, m) = module(x)
        grads.append(torch.autograd.grad((y * torch.cos(y)).sum() + (c * n).sum(), [x, *module.parameters()],
                                         create_graph=create_graph))
    for k, (kernel, recomputed) in enumerate(zip(*grads, strict=True)):
        assert_close(recomputed, kernel, torch.float64, f"sLSTM gradient {k}")


def test_where_no_kernel_runs_a_plain_torch_loop_gives_the_same_results(monkeypatch):
    """On the CPU without Triton's interpreter torch.nn cannot run these layers: a plain-torch loop over the
    reference cells runs instead (no Triton launch), with the kernels' results and gradients."""
    from fused_rnn.kernels.launch import count_launches

    from fused_rnn import backend

    torch.manual_seed(11)
    for module in (fused_rnn.sLSTM(I, 32, num_heads=2, num_layers=2, bidirectional=True, dtype=torch.float64),
                   fused_rnn.MultiHeadGRU(I, 32, num_heads=4, dtype=torch.float64)):
        x = torch.randn(T, 3, I, dtype=torch.float64, requires_grad=True)
        results = []
        for kernels in (True, False):
            with monkeypatch.context() as m, count_launches() as launches:
                if not kernels:
                    m.setattr(backend, "interpreting", lambda: False)
                y, _ = module(x)
                results.append([y, *torch.autograd.grad((y * torch.cos(y)).sum(), [x, *module.parameters()])])
            assert (launches.total > 0) == kernels
        for k, (ref, kernel) in enumerate(zip(results[1], results[0], strict=True)):
            assert_close(kernel, ref, torch.float64, f"{type(module).__name__} result {k}")


# ----------------------------------------------------------------------------
# IndRNN (haste's): one-unit heads
# ----------------------------------------------------------------------------
def test_haste_indrnn_reference_on_a_hand_computed_step():
    """The reference written from haste's IndRNNScript, on one step computed by hand: h = tanh(x k + b + u h0);
    with zoneout 0.25 in eval, 0.25 h0 + 0.75 h; in training the mask picks h where 1, h0 where 0."""
    x, h0 = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[0.5, -1.0]])
    kernel, u, b = torch.tensor([[0.1, 0.2], [0.3, -0.4]]), torch.tensor([2.0, 0.5]), torch.tensor([0.0, 0.1])
    pre = torch.tensor([[0.1 + 0.6 + 0.0 + 1.0, 0.2 - 0.8 + 0.1 - 0.5]])
    h = torch.tanh(pre)
    torch.testing.assert_close(reference.haste_indrnn(x, h0, kernel, u, b)[1], h)
    torch.testing.assert_close(reference.haste_indrnn(x, h0, kernel, u, b, zoneout=0.25)[1], 0.25 * h0 + 0.75 * h)
    mask = torch.tensor([[[1.0, 0.0]]])
    got = reference.haste_indrnn(x, h0, kernel, u, b, zoneout=0.25, zoneout_mask=mask, training=True)[1]
    torch.testing.assert_close(got, torch.stack([h[0, 0], h0[0, 1]])[None])


def test_indrnn_equals_haste_with_its_weights_and_never_meets(device, monkeypatch):
    """fused_rnn.IndRNN with a haste IndRNN's parameters (load_haste_state_dict) gives haste's outputs, final
    state and every gradient (fp64); its plans never make programs meet: the kernels launch once per layer with
    BARRIER off, even in Triton's interpreter."""
    from fused_rnn.kernels import sequence_kernels as K

    torch.manual_seed(12)
    hidden = 40  # 3 blocks of 16 units, the last partial
    haste = {"kernel": torch.randn(I, hidden, dtype=torch.float64), "bias": torch.randn(hidden, dtype=torch.float64),
             "recurrent_scale": torch.rand(hidden, dtype=torch.float64) * 2 - 1}
    module = fused_rnn.IndRNN(I, hidden, dtype=torch.float64, device=device)
    module.load_haste_state_dict({k: v.to(device) for k, v in haste.items()})
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    h0 = torch.randn(1, B, hidden, dtype=torch.float64, device=device, requires_grad=True)
    barriers, real_launch = [], K.launch
    monkeypatch.setattr(K, "launch", lambda kernel, grid, *a, **kw: (barriers.append(kw["BARRIER"]),
                                                                    real_launch(kernel, grid, *a, **kw)))
    with fused_path_only() as launches:
        y, h_n = module(x, h0)
        got = [y, h_n, *torch.autograd.grad((y * torch.cos(y)).sum(), [x, h0, module.weight_ih_l0,
                                                                        module.weight_hh_l0, module.bias_ih_l0])]
    assert launches.by_kernel == {"sequence_fwd_kernel": 1, "sequence_bwd_kernel": 1} and barriers == [False] * 2
    leaves = {k: v.to(device).requires_grad_() for k, v in haste.items()}
    states = reference.haste_indrnn(x, h0[0], leaves["kernel"], leaves["recurrent_scale"], leaves["bias"])
    want_y = states[1:]
    dx, dh0, dk, du, db = torch.autograd.grad((want_y * torch.cos(want_y)).sum(),
                                              [x, h0, leaves["kernel"], leaves["recurrent_scale"], leaves["bias"]])
    for g, w, name in zip(got, [want_y, states[-1][None], dx, dh0, dk.t(), du[:, None], db], ["y", "h_n", "dx", "dh0",
                                                                                               "dW_ih", "du", "db"],
                          strict=True):
        assert_close(g, w, torch.float64, f"IndRNN {name}")


def test_indrnn_layers_directions_packed_against_the_reference_loop(device):
    """Two bidirectional layers, relu, packed input: the kernels against the plain-torch loop (reference cells
    over a diagonal W_hh) that runs where no kernel does."""
    from fused_rnn import backend

    torch.manual_seed(13)
    module = fused_rnn.IndRNN(I, 24, num_layers=2, bidirectional=True, nonlinearity="relu", dtype=torch.float64,
                              device=device)
    assert module.weight_hh_l1_reverse.shape == (24, 1)
    x = torch.randn(T, B, I, dtype=torch.float64, device=device, requires_grad=True)
    results = []
    for kernels in (True, False):
        with pytest.MonkeyPatch.context() as m:
            if not kernels:
                if device != "cpu":
                    pytest.skip("the plain-torch loop runs where no kernel does: the CPU")
                m.setattr(backend, "interpreting", lambda: False)
            out, h = module(pack_padded_sequence(x, LENGTHS, enforce_sorted=False))
            results.append([out.data, h, *torch.autograd.grad((out.data ** 2).sum() + h.sum(),
                                                              [x, *module.parameters()])])
    for k, (got, want) in enumerate(zip(*results, strict=True)):
        assert_close(got, want, torch.float64, f"IndRNN result {k}")
