"""Step kernels of the fused cells: one pointwise pass per cell step, forward and backward.

Each kernel takes the gate pre-activation matrices from two torch matmuls,
x W_ih^T and h W_hh^T, both (N, G) with G = 4H (LSTM), 3H (GRU) or H (RNN),
adds the biases, applies the cell math of ``cell_math`` and writes the new
state. Backward recomputes the activated gates from the same pre-activations
(a few exps, no extra memory), so the forward saves nothing but its inputs. Every tensor comes with explicit strides; rows
are int64 so offsets cannot overflow. Programs tile (BLOCK_N rows, BLOCK_H
hidden units); the batch size N is not specialised on.
"""

import torch
import triton
import triton.language as tl

from .cell_math import gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward
from .launch import cell_blocks, launch, new_output


@triton.jit
def _tile(N, H, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr):
    """Row and column indices (int64) of this program's tile, and its mask."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    return rows, cols, mask


@triton.jit
def _load(ptr, rows, s_row, cols, s_col, mask, ACC: tl.constexpr):
    """Load a (rows, cols) block and upcast it to the compute dtype."""
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0).to(ACC)


@triton.jit
def _store(ptr, rows, s_row, cols, s_col, mask, value):
    """Store a (rows, cols) block, cast to the pointer's element type."""
    tl.store(ptr + rows[:, None] * s_row + cols[None, :] * s_col, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_bias(ptr, s, cols, col_mask, ACC: tl.constexpr):
    """Load a bias slice as a (1, BLOCK_H) row."""
    return tl.load(ptr + cols * s, mask=col_mask, other=0.0).to(ACC)[None, :]


@triton.jit
def _pre(g, s_g_n, s_g_g, b, s_b, gate, rows, cols, H, mask, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Pre-activation of one gate from one side: gates[:, gate*H + cols] (+ bias)."""
    c = gate * H + cols
    v = _load(g, rows, s_g_n, c, s_g_g, mask, ACC)
    if HAS_BIAS:
        v += _load_bias(b, s_b, c, cols < H, ACC)
    return v


# ----------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------
@triton.jit
def _lstm_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh, cx, s_cx_n, s_cx_h,
                rows, cols, H, mask, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Load the four pre-activations and c_prev, and run the LSTM forward math."""
    pre_i = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_i += _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_f = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 1, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_f += _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 1, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_g = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 2, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_g += _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 2, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_o = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 3, rows, cols, H, mask, HAS_BIAS, ACC)
    pre_o += _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 3, rows, cols, H, mask, HAS_BIAS, ACC)
    c_prev = _load(cx, rows, s_cx_n, cols, s_cx_h, mask, ACC)
    h, c, i, f, g, o = lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev)
    return h, c, i, f, g, o, c_prev


@triton.jit(do_not_specialize=["N"])
def lstm_cell_fwd_kernel(
    ig, s_ig_n, s_ig_g,  # (N, 4H) x W_ih^T, gates i, f, g, o
    hg, s_hg_n, s_hg_g,  # (N, 4H) h W_hh^T
    b_ih, s_bih,  # (4H,) input bias, read when HAS_BIAS
    b_hh, s_bhh,  # (4H,) hidden bias, read when HAS_BIAS
    cx, s_cx_n, s_cx_h,  # (N, H) previous cell state
    hy, s_hy_n, s_hy_h,  # out (N, H) new hidden state
    cy, s_cy_n, s_cy_h,  # out (N, H) new cell state
    N, H,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    h, c, i, f, g, o, c_prev = _lstm_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh,
                                           cx, s_cx_n, s_cx_h, rows, cols, H, mask, HAS_BIAS, ACC)
    _store(hy, rows, s_hy_n, cols, s_hy_h, mask, h)
    _store(cy, rows, s_cy_n, cols, s_cy_h, mask, c)


@triton.jit(do_not_specialize=["N"])
def lstm_cell_bwd_kernel(
    dhy, s_dhy_n, s_dhy_h,  # (N, H) gradient of h', read when HAS_DH
    dcy, s_dcy_n, s_dcy_h,  # (N, H) gradient of c', read when HAS_DC
    ig, s_ig_n, s_ig_g,  # (N, 4H) x W_ih^T from the forward
    hg, s_hg_n, s_hg_g,  # (N, 4H) h W_hh^T from the forward
    b_ih, s_bih,  # (4H,) input bias, read when HAS_BIAS
    b_hh, s_bhh,  # (4H,) hidden bias, read when HAS_BIAS
    cx, s_cx_n, s_cx_h,  # (N, H) previous cell state
    dg, s_dg_n, s_dg_g,  # out (N, 4H) gate pre-activation gradients (both sides)
    dcx, s_dcx_n, s_dcx_h,  # out (N, H) gradient of the previous cell state
    N, H,
    HAS_DH: tl.constexpr, HAS_DC: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    h, c, i, f, g, o, c_prev = _lstm_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh,
                                           cx, s_cx_n, s_cx_h, rows, cols, H, mask, HAS_BIAS, ACC)
    zero = tl.zeros((BLOCK_N, BLOCK_H), ACC)
    dh = _load(dhy, rows, s_dhy_n, cols, s_dhy_h, mask, ACC) if HAS_DH else zero
    dc = _load(dcy, rows, s_dcy_n, cols, s_dcy_h, mask, ACC) if HAS_DC else zero
    d_i, d_f, d_g, d_o, dc_prev = lstm_backward(dh, dc, c_prev, c, i, f, g, o)
    _store(dg, rows, s_dg_n, cols, s_dg_g, mask, d_i)
    _store(dg, rows, s_dg_n, H + cols, s_dg_g, mask, d_f)
    _store(dg, rows, s_dg_n, 2 * H + cols, s_dg_g, mask, d_g)
    _store(dg, rows, s_dg_n, 3 * H + cols, s_dg_g, mask, d_o)
    _store(dcx, rows, s_dcx_n, cols, s_dcx_h, mask, dc_prev)


# ----------------------------------------------------------------------------
# GRU
# ----------------------------------------------------------------------------
@triton.jit
def _gru_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh, hx, s_hx_n, s_hx_h,
               rows, cols, H, mask, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """Load the six pre-activations and h_prev, and run the GRU forward math."""
    x_r = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    x_z = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 1, rows, cols, H, mask, HAS_BIAS, ACC)
    x_n = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 2, rows, cols, H, mask, HAS_BIAS, ACC)
    h_r = _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    h_z = _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 1, rows, cols, H, mask, HAS_BIAS, ACC)
    h_n = _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 2, rows, cols, H, mask, HAS_BIAS, ACC)
    h_prev = _load(hx, rows, s_hx_n, cols, s_hx_h, mask, ACC)
    h, r, z, n = gru_forward(x_r, x_z, x_n, h_r, h_z, h_n, h_prev)
    return h, r, z, n, h_n, h_prev


@triton.jit(do_not_specialize=["N"])
def gru_cell_fwd_kernel(
    ig, s_ig_n, s_ig_g,  # (N, 3H) x W_ih^T, gates r, z, n
    hg, s_hg_n, s_hg_g,  # (N, 3H) h W_hh^T
    b_ih, s_bih,  # (3H,) input bias, read when HAS_BIAS
    b_hh, s_bhh,  # (3H,) hidden bias, read when HAS_BIAS
    hx, s_hx_n, s_hx_h,  # (N, H) previous hidden state
    hy, s_hy_n, s_hy_h,  # out (N, H) new hidden state
    N, H,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    h, r, z, n, h_n, h_prev = _gru_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh,
                                         hx, s_hx_n, s_hx_h, rows, cols, H, mask, HAS_BIAS, ACC)
    _store(hy, rows, s_hy_n, cols, s_hy_h, mask, h)


@triton.jit(do_not_specialize=["N"])
def gru_cell_bwd_kernel(
    dhy, s_dhy_n, s_dhy_h,  # (N, H) gradient of h'
    ig, s_ig_n, s_ig_g,  # (N, 3H) x W_ih^T from the forward
    hg, s_hg_n, s_hg_g,  # (N, 3H) h W_hh^T from the forward
    b_ih, s_bih,  # (3H,) input bias, read when HAS_BIAS
    b_hh, s_bhh,  # (3H,) hidden bias, read when HAS_BIAS
    hx, s_hx_n, s_hx_h,  # (N, H) previous hidden state
    dig, s_dig_n, s_dig_g,  # out (N, 3H) gradient of x W_ih^T (+ b_ih)
    dhg, s_dhg_n, s_dhg_g,  # out (N, 3H) gradient of h W_hh^T (+ b_hh)
    dhx, s_dhx_n, s_dhx_h,  # out (N, H) gradient reaching h_prev directly (not through W_hh)
    N, H,
    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    h, r, z, n, h_n, h_prev = _gru_gates(ig, s_ig_n, s_ig_g, hg, s_hg_n, s_hg_g, b_ih, s_bih, b_hh, s_bhh,
                                         hx, s_hx_n, s_hx_h, rows, cols, H, mask, HAS_BIAS, ACC)
    dh = _load(dhy, rows, s_dhy_n, cols, s_dhy_h, mask, ACC)
    d_r, d_z, d_xn, d_hn, dh_prev = gru_backward(dh, h_prev, r, z, n, h_n)
    _store(dig, rows, s_dig_n, cols, s_dig_g, mask, d_r)
    _store(dig, rows, s_dig_n, H + cols, s_dig_g, mask, d_z)
    _store(dig, rows, s_dig_n, 2 * H + cols, s_dig_g, mask, d_xn)
    _store(dhg, rows, s_dhg_n, cols, s_dhg_g, mask, d_r)
    _store(dhg, rows, s_dhg_n, H + cols, s_dhg_g, mask, d_z)
    _store(dhg, rows, s_dhg_n, 2 * H + cols, s_dhg_g, mask, d_hn)
    _store(dhx, rows, s_dhx_n, cols, s_dhx_h, mask, dh_prev)


# ----------------------------------------------------------------------------
# Vanilla RNN
# ----------------------------------------------------------------------------
@triton.jit(do_not_specialize=["N"])
def rnn_cell_fwd_kernel(
    ig, s_ig_n, s_ig_g,  # (N, H) x W_ih^T
    hg, s_hg_n, s_hg_g,  # (N, H) h W_hh^T
    b_ih, s_bih,  # (H,) input bias, read when HAS_BIAS
    b_hh, s_bhh,  # (H,) hidden bias, read when HAS_BIAS
    hy, s_hy_n, s_hy_h,  # out (N, H) new hidden state, also all that backward needs
    N, H,
    RELU: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    pre = _pre(ig, s_ig_n, s_ig_g, b_ih, s_bih, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    pre += _pre(hg, s_hg_n, s_hg_g, b_hh, s_bhh, 0, rows, cols, H, mask, HAS_BIAS, ACC)
    _store(hy, rows, s_hy_n, cols, s_hy_h, mask, rnn_forward(pre, RELU))


@triton.jit(do_not_specialize=["N"])
def rnn_cell_bwd_kernel(
    dhy, s_dhy_n, s_dhy_h,  # (N, H) gradient of h'
    hy, s_hy_n, s_hy_h,  # (N, H) h' from the forward
    dpre, s_dp_n, s_dp_h,  # out (N, H) pre-activation gradient
    N, H,
    RELU: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr,
):
    rows, cols, mask = _tile(N, H, BLOCK_N, BLOCK_H)
    dh = _load(dhy, rows, s_dhy_n, cols, s_dhy_h, mask, ACC)
    h = _load(hy, rows, s_hy_n, cols, s_hy_h, mask, ACC)
    _store(dpre, rows, s_dp_n, cols, s_dp_h, mask, rnn_backward(dh, h, RELU))


# ----------------------------------------------------------------------------
# Launchers: allocate outputs, pick the tile, launch. Shapes in the docstrings.
# ----------------------------------------------------------------------------
def compute_dtype(dtype: torch.dtype):
    """Triton compute dtype for a storage dtype: fp64 stays fp64, everything else is fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def _grid_and_meta(n: int, hidden: int, dtype: torch.dtype) -> tuple[tuple[int, int], dict]:
    blocks = cell_blocks(n, hidden, dtype)
    grid = (triton.cdiv(n, blocks.block_n), triton.cdiv(hidden, blocks.block_h))
    meta = dict(BLOCK_N=blocks.block_n, BLOCK_H=blocks.block_h, num_warps=blocks.num_warps)
    if torch.version.hip is None:  # ptxas caps 256-thread kernels at 128 registers unless told (NVIDIA only)
        meta["maxnreg"] = 255
    return grid, meta


def _matrix(t: torch.Tensor | None, like: torch.Tensor) -> tuple:
    """Pointer and strides of an optional (N, K) tensor (``like`` with zero strides when absent)."""
    return (t, *t.stride()) if t is not None else (like, 0, 0)


def _biases(b_ih: torch.Tensor | None, b_hh: torch.Tensor | None, like: torch.Tensor) -> tuple:
    """Pointers and strides of the optional biases (both present or both None)."""
    if b_ih is None:
        return (like, 0, like, 0)
    return (b_ih, b_ih.stride(0), b_hh, b_hh.stride(0))


def lstm_cell_forward(ig, hg, b_ih, b_hh, cx):
    """ig, hg (N, 4H), biases (4H,) or None, cx (N, H) -> hy, cy (N, H)."""
    n, hidden = cx.shape
    hy, cy = new_output(ig, (n, hidden)), new_output(ig, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, cx.dtype)
    launch(
        lstm_cell_fwd_kernel, grid,
        *_matrix(ig, ig), *_matrix(hg, ig), *_biases(b_ih, b_hh, ig), *_matrix(cx, ig),
        *_matrix(hy, ig), *_matrix(cy, ig), n, hidden,
        HAS_BIAS=b_ih is not None, ACC=compute_dtype(ig.dtype), **meta,
    )
    return hy, cy


def lstm_cell_backward(dhy, dcy, ig, hg, b_ih, b_hh, cx):
    """Gradients of hy and cy (N, H), either may be None -> d_gates (N, 4H), dcx (N, H)."""
    n, hidden = cx.shape
    dg, dcx = new_output(ig, (n, 4 * hidden)), new_output(ig, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, cx.dtype)
    launch(
        lstm_cell_bwd_kernel, grid,
        *_matrix(dhy, ig), *_matrix(dcy, ig), *_matrix(ig, ig), *_matrix(hg, ig), *_biases(b_ih, b_hh, ig),
        *_matrix(cx, ig), *_matrix(dg, ig), *_matrix(dcx, ig), n, hidden,
        HAS_DH=dhy is not None, HAS_DC=dcy is not None, HAS_BIAS=b_ih is not None,
        ACC=compute_dtype(ig.dtype), **meta,
    )
    return dg, dcx


def gru_cell_forward(ig, hg, b_ih, b_hh, hx):
    """ig, hg (N, 3H), biases (3H,) or None, hx (N, H) -> hy (N, H)."""
    n, hidden = hx.shape
    hy = new_output(ig, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, hx.dtype)
    launch(
        gru_cell_fwd_kernel, grid,
        *_matrix(ig, ig), *_matrix(hg, ig), *_biases(b_ih, b_hh, ig), *_matrix(hx, ig), *_matrix(hy, ig),
        n, hidden, HAS_BIAS=b_ih is not None, ACC=compute_dtype(ig.dtype), **meta,
    )
    return hy


def gru_cell_backward(dhy, ig, hg, b_ih, b_hh, hx):
    """Gradient of hy (N, H) -> d_ig (N, 3H), d_hg (N, 3H), direct part of dhx (N, H)."""
    n, hidden = hx.shape
    dig, dhg, dhx = new_output(ig, (n, 3 * hidden)), new_output(ig, (n, 3 * hidden)), new_output(ig, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, hx.dtype)
    launch(
        gru_cell_bwd_kernel, grid,
        *_matrix(dhy, ig), *_matrix(ig, ig), *_matrix(hg, ig), *_biases(b_ih, b_hh, ig), *_matrix(hx, ig),
        *_matrix(dig, ig), *_matrix(dhg, ig), *_matrix(dhx, ig), n, hidden,
        HAS_BIAS=b_ih is not None, ACC=compute_dtype(ig.dtype), **meta,
    )
    return dig, dhg, dhx


def rnn_cell_forward(ig, hg, b_ih, b_hh, relu: bool):
    """ig, hg (N, H), biases (H,) or None -> hy (N, H)."""
    n, hidden = ig.shape
    hy = new_output(ig, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, ig.dtype)
    launch(
        rnn_cell_fwd_kernel, grid,
        *_matrix(ig, ig), *_matrix(hg, ig), *_biases(b_ih, b_hh, ig), *_matrix(hy, ig), n, hidden,
        RELU=relu, HAS_BIAS=b_ih is not None, ACC=compute_dtype(ig.dtype), **meta,
    )
    return hy


def rnn_cell_backward(dhy, hy, relu: bool):
    """Gradient of hy (N, H) and hy -> pre-activation gradient (N, H)."""
    n, hidden = hy.shape
    dpre = new_output(hy, (n, hidden))
    grid, meta = _grid_and_meta(n, hidden, hy.dtype)
    launch(
        rnn_cell_bwd_kernel, grid,
        *_matrix(dhy, hy), *_matrix(hy, hy), *_matrix(dpre, hy), n, hidden,
        RELU=relu, ACC=compute_dtype(hy.dtype), **meta,
    )
    return dpre
