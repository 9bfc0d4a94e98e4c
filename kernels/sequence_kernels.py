"""Sequence kernels: a whole layer and direction in one launch, looping over time on the GPU.

Each program owns BLOCK_B rows of the batch and the whole hidden state of
those rows. Per time step it computes the recurrent product h_{t-1} W_hh^T
with ``tl.dot`` (fp32 accumulation, fp64 for fp64), streaming W_hh by
(BLOCK_K x BLOCK_H) blocks from L2, adds the precomputed input projection and
applies the cell math of ``cell_math``. The state is exchanged between column
blocks through a small ping-pong scratch buffer with a program-level barrier
between steps; nothing is shared between programs, so the interpreter runs it.

Variable lengths come from a per-row ``lengths`` vector: at step s row b is
active while s < lengths[b]; the forward direction reads time s, the reverse
direction time lengths[b] - 1 - s. An inactive row keeps its state and writes
zeros at time s (which is then padding), so every padded output is zero and
h_n is each row's state at its last valid step. T and B are runtime values
(not specialised on).

CELL: 0 LSTM (gates i, f, g, o), 1 GRU (r, z, n), 2 RNN tanh, 3 RNN relu.
"""

import torch
import triton
import triton.language as tl

from .cell_math import gru_backward, gru_forward, lstm_backward, lstm_forward, rnn_backward, rnn_forward
from .launch import interpreting, launch, new_output, sequence_blocks

LSTM, GRU, RNN_TANH, RNN_RELU = 0, 1, 2, 3
CELLS = {"LSTM": LSTM, "GRU": GRU, "RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU}
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1, RNN_RELU: 1}
# Gate values saved per step for backward (LSTM i, f, g, o; GRU r, z, n and W_hn h + b_hn).
SAVED = {LSTM: 4, GRU: 4, RNN_TANH: 0, RNN_RELU: 0}


@triton.jit
def _program_rows(lengths, B, BLOCK_B: tl.constexpr):
    """This program's batch rows (int64), their mask, their lengths and a zero per row (a time index of 0)."""
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    lens = tl.load(lengths + rows, mask=rmask, other=0)
    return rows, rmask, lens, tl.zeros_like(lens)


@triton.jit
def _step_rows(s, lengths, REVERSE: tl.constexpr):
    """Time index of each row at step s and whether the row is active (s < its length).

    Inactive rows point at time s, a padding position, where they write zeros.
    """
    active = s < lengths
    if REVERSE:
        t = tl.where(active, lengths - 1 - s, s)
    else:
        t = tl.zeros_like(lengths) + s
    return t, active


@triton.jit
def _matmul_block(a, s_at, s_ar, s_ak, t, a_col0, rows, rmask, K, w, s_wr, s_wk, w_row0, cols, ncols,
                  ACC: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_H) block of A[t, rows, a_col0 : a_col0 + K] @ W[w_row0 + cols, :K]^T, streaming K.

    ``t`` is a per-row time index into A (zeros for a 2-D A); ``cols`` run over
    0..BLOCK_H and only the first ``ncols`` are real.

    ``w`` is addressed as W[r, k] = w + r * s_wr + k * s_wk, so the same code
    multiplies by W_hh^T (forward) or, with the strides swapped, by W_hh (backward).
    """
    acc = tl.zeros((BLOCK_B, BLOCK_H), ACC)
    for k0 in range(0, K, BLOCK_K):
        kk = tl.arange(0, BLOCK_K)
        ks = k0 + kk
        kmask = ks < K
        x = tl.load(a + t[:, None] * s_at + rows[:, None] * s_ar + (a_col0 + ks)[None, :] * s_ak,
                    mask=rmask[:, None] & kmask[None, :], other=0.0)
        # In backward k0 counts rows of W (up to 4H) times its row stride: the block's base offset is int64.
        w_k = w + tl.cast(k0, tl.int64) * s_wk
        wt = tl.load(w_k + (w_row0 + cols)[None, :] * s_wr + kk[:, None] * s_wk,
                     mask=kmask[:, None] & (cols < ncols)[None, :], other=0.0)
        x = x.to(wt.dtype)  # a state kept in fp32 enters the product in the weights' dtype
        if DOT_FP32:  # Triton's interpreter gets bf16 tl.dot wrong: multiply in fp32 there.
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=DOT_PREC, out_dtype=ACC)  # Triton 3.6 wants out_dtype for fp64
    return acc


@triton.jit
def _at(ptr, s_t, s_b, s_c, t, rows, col0, cols):
    """Pointers of ptr[t[row], row, col0 + col] for a (BLOCK_B, BLOCK_H) block (per-row time index)."""
    return ptr + t[:, None] * s_t + rows[:, None] * s_b + (col0 + cols)[None, :] * s_c


@triton.jit
def _copy_rows(src, s_sb, s_sh, dst, s_db, s_dh, rows, rmask, H, BLOCK_H: tl.constexpr):
    """dst[rows, :H] = src[rows, :H] (cast to dst's dtype), by BLOCK_H columns: seeds a scratch state."""
    for j in range(0, H, BLOCK_H):
        cols = j + tl.arange(0, BLOCK_H).to(tl.int64)
        m = rmask[:, None] & (cols < H)[None, :]
        v = tl.load(src + rows[:, None] * s_sb + cols[None, :] * s_sh, mask=m)
        tl.store(dst + rows[:, None] * s_db + cols[None, :] * s_dh, v, mask=m)


@triton.jit(do_not_specialize=["T", "B"])
def sequence_fwd_kernel(
    xp, s_xt, s_xb, s_xg,  # (T, B, G) input projection x W_ih^T with the foldable biases added
    w, s_wg, s_wk,  # (G, R) W_hh
    b_hn, s_bhn,  # (H,) GRU's b_hn (inside r * (W_hn h + b_hn)), read when HAS_BHN
    w_hr, s_wrp, s_wrh,  # (R, H) LSTM projection W_hr, read when HAS_PROJ
    h0, s_h0b, s_h0h,  # (B, R) initial hidden state
    c0, s_c0b, s_c0h,  # (B, H) initial cell state (LSTM)
    lengths,  # (B,) int64 valid length of each row
    y, s_yt, s_yb, s_yh,  # out (T, B, R) outputs, zero past each row's length
    hbuf, s_hbp, s_hbb, s_hbh,  # scratch (2, B, R) h ping-pong in the compute dtype; after T steps hbuf[T % 2] is h_n
    cbuf, s_cbb, s_cbh,  # scratch (B, H) cell state in the compute dtype; c_n at the end (LSTM)
    ws, s_wst, s_wsb, s_wsg,  # out (T, B, 4H) gate values for backward, compute dtype (LSTM, GRU; when SAVE)
    cs, s_cst, s_csb, s_csh,  # out (T, B, H) cell state of every step, compute dtype (LSTM; when SAVE)
    ms, s_mst, s_msb, s_msh,  # out (T, B, H) o * tanh(c) before the projection (HAS_PROJ); zero past lengths
    T, B, H, R,  # R: width of h, the projection size with HAS_PROJ, else H
    CELL: tl.constexpr, REVERSE: tl.constexpr, HAS_BHN: tl.constexpr, HAS_PROJ: tl.constexpr, SAVE: tl.constexpr,
    ACC: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, rmask, lens, zero_b = _program_rows(lengths, B, BLOCK_B)
    _copy_rows(h0, s_h0b, s_h0h, hbuf, s_hbb, s_hbh, rows, rmask, R, BLOCK_H)
    if CELL == 0:
        _copy_rows(c0, s_c0b, s_c0h, cbuf, s_cbb, s_cbh, rows, rmask, H, BLOCK_H)
    tl.debug_barrier()
    for s in range(T):
        h_cur = hbuf + (s % 2) * s_hbp
        h_nxt = hbuf + ((s + 1) % 2) * s_hbp
        t, active = _step_rows(s, lens, REVERSE)
        for j in range(0, H, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < H)[None, :]
            am = m & active[:, None]
            if not HAS_PROJ:  # h has H columns
                h_prev = tl.load(_at(h_cur, 0, s_hbb, s_hbh, zero_b, rows, j, cols), mask=m, other=0.0).to(ACC)
            if CELL == 0:
                pre_i = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, j, cols, H - j,
                                      ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                pre_f = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, H + j, cols, H - j,
                                      ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                pre_g = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, 2 * H + j, cols, H - j,
                                      ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                pre_o = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, 3 * H + j, cols, H - j,
                                      ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                pre_i += tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                pre_f += tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, H + j, cols), mask=am, other=0.0).to(ACC)
                pre_g += tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, 2 * H + j, cols), mask=am, other=0.0).to(ACC)
                pre_o += tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, 3 * H + j, cols), mask=am, other=0.0).to(ACC)
                c_prev = tl.load(_at(cbuf, 0, s_cbb, s_cbh, zero_b, rows, j, cols), mask=m, other=0.0).to(ACC)
                h, c, i, f, g, o = lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev)
                tl.store(_at(cbuf, 0, s_cbb, s_cbh, zero_b, rows, j, cols), tl.where(active[:, None], c, c_prev), mask=m)
                if SAVE:
                    tl.store(_at(cs, s_cst, s_csb, s_csh, t, rows, j, cols), c, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, j, cols), i, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, H + j, cols), f, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 2 * H + j, cols), g, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 3 * H + j, cols), o, mask=am)
            elif CELL == 1:
                h_r = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                h_z = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, H + j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                h_n = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, 2 * H + j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                if HAS_BHN:
                    h_n += tl.load(b_hn + (j + cols) * s_bhn, mask=(j + cols) < H, other=0.0).to(ACC)[None, :]
                x_r = tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                x_z = tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, H + j, cols), mask=am, other=0.0).to(ACC)
                x_n = tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, 2 * H + j, cols), mask=am, other=0.0).to(ACC)
                h, r, z, n = gru_forward(x_r, x_z, x_n, h_r, h_z, h_n, h_prev)
                if SAVE:
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, j, cols), r, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, H + j, cols), z, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 2 * H + j, cols), n, mask=am)
                    tl.store(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 3 * H + j, cols), h_n, mask=am)
            else:
                pre = _matmul_block(h_cur, 0, s_hbb, s_hbh, zero_b, 0, rows, rmask, R, w, s_wg, s_wk, j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                pre += tl.load(_at(xp, s_xt, s_xb, s_xg, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                h = rnn_forward(pre, CELL == 3)
            if HAS_PROJ:  # h = W_hr m comes after every column of m is written
                tl.store(_at(ms, s_mst, s_msb, s_msh, t, rows, j, cols), tl.where(active[:, None], h, 0.0), mask=m)
            else:
                tl.store(_at(h_nxt, 0, s_hbb, s_hbh, zero_b, rows, j, cols), tl.where(active[:, None], h, h_prev), mask=m)
                tl.store(_at(y, s_yt, s_yb, s_yh, t, rows, j, cols), tl.where(active[:, None], h, 0.0), mask=m)
        if HAS_PROJ:
            tl.debug_barrier()
            for j in range(0, R, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < R)[None, :]
                h = _matmul_block(ms, s_mst, s_msb, s_msh, t, 0, rows, rmask, H, w_hr, s_wrp, s_wrh, j, cols, R - j,
                                  ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                h_prev = tl.load(_at(h_cur, 0, s_hbb, s_hbh, zero_b, rows, j, cols), mask=m, other=0.0)
                tl.store(_at(h_nxt, 0, s_hbb, s_hbh, zero_b, rows, j, cols), tl.where(active[:, None], h, h_prev), mask=m)
                tl.store(_at(y, s_yt, s_yb, s_yh, t, rows, j, cols), tl.where(active[:, None], h, 0.0), mask=m)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["T", "B"])
def sequence_bwd_kernel(
    dy, s_dyt, s_dyb, s_dyh,  # (T, B, R) gradient of the outputs
    dhn, s_dhnb, s_dhnh,  # (B, R) gradient of h_n
    dcn, s_dcnb, s_dcnh,  # (B, H) gradient of c_n (LSTM)
    w, s_wg, s_wk,  # (G, R) W_hh
    w_hr, s_wrp, s_wrh,  # (R, H) LSTM projection W_hr, read when HAS_PROJ
    h0, s_h0b, s_h0h,  # (B, R) initial hidden state (GRU needs h_prev)
    c0, s_c0b, s_c0h,  # (B, H) initial cell state (LSTM)
    lengths,  # (B,) int64
    y, s_yt, s_yb, s_yh,  # (T, B, R) forward outputs
    ws, s_wst, s_wsb, s_wsg,  # (T, B, 4H) saved gate values
    cs, s_cst, s_csb, s_csh,  # (T, B, H) saved cell states (LSTM)
    dg, s_dgt, s_dgb, s_dgg,  # out (T, B, GS) gate gradients (GRU: r, z, input-side n, hidden-side n); zero past lengths
    dhs, s_dht, s_dhsb, s_dhsp,  # out (T, B, R) gradient of each step's h (HAS_PROJ), zero past lengths
    dhbuf, s_dhp, s_dhb, s_dhh,  # scratch (2, B, R) dh carry (compute dtype) ping-pong; dh0 in dhbuf[T % 2] at the end
    dcbuf, s_dcb, s_dch,  # scratch (B, H) dc carry (compute dtype); dc0 at the end (LSTM)
    T, B, H, R,  # R: width of h, the projection size with HAS_PROJ, else H
    CELL: tl.constexpr, REVERSE: tl.constexpr, HAS_PROJ: tl.constexpr, ACC: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows, rmask, lens, zero_b = _program_rows(lengths, B, BLOCK_B)
    _copy_rows(dhn, s_dhnb, s_dhnh, dhbuf, s_dhb, s_dhh, rows, rmask, R, BLOCK_H)
    if CELL == 0:
        _copy_rows(dcn, s_dcnb, s_dcnh, dcbuf, s_dcb, s_dch, rows, rmask, H, BLOCK_H)
    tl.debug_barrier()
    for r_step in range(T):
        s = T - 1 - r_step
        d_cur = dhbuf + (r_step % 2) * s_dhp
        d_nxt = dhbuf + ((r_step + 1) % 2) * s_dhp
        t, active = _step_rows(s, lens, REVERSE)
        if REVERSE:
            tp = t + 1
        else:
            tp = t - 1
        first = ((zero_b + s) == 0)[:, None]  # the previous state is h0 / c0
        if HAS_PROJ:
            # Phase P: the gradient of this step's h (R columns); the carry of an inactive row passes through.
            for j in range(0, R, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < R)[None, :]
                carry = tl.load(_at(d_cur, 0, s_dhb, s_dhh, zero_b, rows, j, cols), mask=m, other=0.0)
                dh = carry + tl.load(_at(dy, s_dyt, s_dyb, s_dyh, t, rows, j, cols), mask=m & active[:, None], other=0.0)
                tl.store(_at(dhs, s_dht, s_dhsb, s_dhsp, t, rows, j, cols), tl.where(active[:, None], dh, 0.0), mask=m)
                tl.store(_at(d_nxt, 0, s_dhb, s_dhh, zero_b, rows, j, cols), tl.where(active[:, None], 0.0, carry), mask=m)
            tl.debug_barrier()
        # Phase A: gate gradients of this step, column block by column block.
        for j in range(0, H, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < H)[None, :]
            am = m & active[:, None]
            if HAS_PROJ:  # the gradient of m = o * tanh(c) is dh W_hr
                dh = _matmul_block(dhs, s_dht, s_dhsb, s_dhsp, t, 0, rows, rmask, R, w_hr, s_wrh, s_wrp, j, cols, H - j,
                                   ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            else:
                carry = tl.load(_at(d_cur, 0, s_dhb, s_dhh, zero_b, rows, j, cols), mask=m, other=0.0)
                dh = carry + tl.load(_at(dy, s_dyt, s_dyb, s_dyh, t, rows, j, cols), mask=am, other=0.0).to(ACC)
            direct = tl.zeros((BLOCK_B, BLOCK_H), ACC)
            if CELL == 0:
                dc = tl.load(_at(dcbuf, 0, s_dcb, s_dch, zero_b, rows, j, cols), mask=m, other=0.0).to(ACC)
                i = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                f = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, H + j, cols), mask=am, other=0.0).to(ACC)
                g = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 2 * H + j, cols), mask=am, other=0.0).to(ACC)
                o = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 3 * H + j, cols), mask=am, other=0.0).to(ACC)
                c = tl.load(_at(cs, s_cst, s_csb, s_csh, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                c_prev = tl.load(_at(cs, s_cst, s_csb, s_csh, tp, rows, j, cols), mask=am & ~first, other=0.0)
                c_prev += tl.load(_at(c0, 0, s_c0b, s_c0h, zero_b, rows, j, cols), mask=am & first, other=0.0)
                d_i, d_f, d_g, d_o, dc_prev = lstm_backward(dh, dc, c_prev.to(ACC), c, i, f, g, o)
                tl.store(_at(dcbuf, 0, s_dcb, s_dch, zero_b, rows, j, cols), tl.where(active[:, None], dc_prev, dc), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, j, cols), tl.where(active[:, None], d_i, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, H + j, cols), tl.where(active[:, None], d_f, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, 2 * H + j, cols), tl.where(active[:, None], d_g, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, 3 * H + j, cols), tl.where(active[:, None], d_o, 0.0), mask=m)
            elif CELL == 1:
                r = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                z = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, H + j, cols), mask=am, other=0.0).to(ACC)
                n = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 2 * H + j, cols), mask=am, other=0.0).to(ACC)
                h_n = tl.load(_at(ws, s_wst, s_wsb, s_wsg, t, rows, 3 * H + j, cols), mask=am, other=0.0).to(ACC)
                h_prev = tl.load(_at(y, s_yt, s_yb, s_yh, tp, rows, j, cols), mask=am & ~first, other=0.0)
                h_prev += tl.load(_at(h0, 0, s_h0b, s_h0h, zero_b, rows, j, cols), mask=am & first, other=0.0)
                d_r, d_z, d_xn, d_hn, direct = gru_backward(dh, h_prev.to(ACC), r, z, n, h_n)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, j, cols), tl.where(active[:, None], d_r, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, H + j, cols), tl.where(active[:, None], d_z, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, 2 * H + j, cols), tl.where(active[:, None], d_xn, 0.0), mask=m)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, 3 * H + j, cols), tl.where(active[:, None], d_hn, 0.0), mask=m)
            else:
                h = tl.load(_at(y, s_yt, s_yb, s_yh, t, rows, j, cols), mask=am, other=0.0).to(ACC)
                d_pre = rnn_backward(dh, h, CELL == 3)
                tl.store(_at(dg, s_dgt, s_dgb, s_dgg, t, rows, j, cols), tl.where(active[:, None], d_pre, 0.0), mask=m)
            if not HAS_PROJ:  # the carry of an inactive row passes through unchanged
                nxt = tl.where(active[:, None], direct, carry)
                tl.store(_at(d_nxt, 0, s_dhb, s_dhh, zero_b, rows, j, cols), nxt, mask=m)
        tl.debug_barrier()
        # Phase B: the recurrent part of the carry, d_gates_h @ W_hh, column block by column block.
        for j in range(0, R, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < R)[None, :]
            # W_hh^T addressed as rows = hidden units (stride s_wk), k = gate units (stride s_wg).
            if CELL == 0:
                acc = _matmul_block(dg, s_dgt, s_dgb, s_dgg, t, 0, rows, rmask, 4 * H, w, s_wk, s_wg, j, cols, R - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            elif CELL == 1:
                acc = _matmul_block(dg, s_dgt, s_dgb, s_dgg, t, 0, rows, rmask, 2 * H, w, s_wk, s_wg, j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                acc += _matmul_block(dg, s_dgt, s_dgb, s_dgg, t, 3 * H, rows, rmask, H, w + (2 * H).to(tl.int64) * s_wg, s_wk, s_wg,
                                     j, cols, H - j, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            else:
                acc = _matmul_block(dg, s_dgt, s_dgb, s_dgg, t, 0, rows, rmask, H, w, s_wk, s_wg, j, cols, H - j,
                                    ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            p = _at(d_nxt, 0, s_dhb, s_dhh, zero_b, rows, j, cols)
            old = tl.load(p, mask=m, other=0.0)
            tl.store(p, old + tl.where(active[:, None], acc, 0.0), mask=m)
        tl.debug_barrier()


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _meta(cell: int, reverse: bool, dtype: torch.dtype, batch: int, hidden: int) -> tuple[tuple[int], dict]:
    # fp32 products follow cuDNN's RNN switch, as torch.nn.LSTM does on a GPU.
    tf32 = dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    blocks = sequence_blocks(batch, hidden, dtype, tf32)
    meta = dict(
        CELL=cell, REVERSE=reverse, ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        DOT_FP32=interpreting() and dtype == torch.bfloat16, DOT_PREC="tf32" if tf32 else "ieee",
        BLOCK_B=blocks.block_b, BLOCK_H=blocks.block_h, BLOCK_K=blocks.block_k, num_warps=blocks.num_warps,
    )
    if torch.version.hip is None:  # an option of Triton's NVIDIA backend only (the AMD one rejects it)
        meta["maxnreg"] = blocks.max_registers
    else:  # AMD: software-pipelining the K loop costs scalar registers (SGPRs) that the fp64 kernels lack
        meta["num_stages"] = 1
    return (triton.cdiv(batch, blocks.block_b),), meta


def _in_block_offsets_fit(w: torch.Tensor | None, block_k: int) -> torch.Tensor | None:
    """``w``, or a contiguous copy when BLOCK_K times one of its strides passes int32.

    ``_matmul_block`` offsets a block's base in int64 but the rows inside a block
    in int32 (64-bit offsets there spill registers); a weight view with a huge
    stride is copied rather than read out of bounds.
    """
    if w is None or max(w.stride()) * block_k < 2**31:
        return w
    return w.contiguous()


def _or_dummy(t: torch.Tensor | None, like: torch.Tensor, ndim: int) -> tuple:
    """A tensor argument and its strides, or a placeholder with zero strides for an unused one."""
    return (t, *t.stride()) if t is not None and t.numel() else (like, *([0] * ndim))


def sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell: int, reverse: bool, save: bool):
    """One layer and direction over the whole sequence.

    xp (T, B, G) input projection with biases folded, w_hh (G, R), b_hn (H,) or
    None (GRU), w_hr (R, H) or None (LSTM projection; R = H without it), h0
    (B, R) and c0 (B, H) (c0 only for LSTM), lengths (B,) int64.
    Returns y (T, B, R), h_n (B, R), c_n (B, H), the saved gates (T, B, 4H)
    and cell states (T, B, H) when ``save`` (what backward reads), and the
    pre-projection outputs m (T, B, H); unused ones are empty.
    """
    T, B, _ = xp.shape
    R = w_hh.shape[1]
    H = w_hr.shape[1] if w_hr is not None else R
    acc = _compute_dtype(xp.dtype)
    y = new_output(xp, (T, B, R))
    hbuf = new_output(xp.new_empty(0, dtype=acc), (2, B, R))
    is_lstm = cell == LSTM
    cbuf = new_output(hbuf, (B, H) if is_lstm else (0,))
    save = save and SAVED[cell] > 0
    ws = new_output(cbuf, (T, B, SAVED[cell] * H) if save else (0,))
    cs = new_output(cbuf, (T, B, H) if save and is_lstm else (0,))
    ms = new_output(xp, (T, B, H) if w_hr is not None else (0,))
    grid, meta = _meta(cell, reverse, xp.dtype, B, H)
    w_hh, w_hr = (_in_block_offsets_fit(w, meta["BLOCK_K"]) for w in (w_hh, w_hr))
    launch(
        sequence_fwd_kernel, grid,
        xp, *xp.stride(), w_hh, *w_hh.stride(), *_or_dummy(b_hn, xp, 1), *_or_dummy(w_hr, xp, 2),
        h0, *h0.stride(), *_or_dummy(c0, h0, 2), lengths,
        y, *y.stride(), hbuf, *hbuf.stride(), *_or_dummy(cbuf, xp, 2), *_or_dummy(ws, xp, 3),
        *_or_dummy(cs, xp, 3), *_or_dummy(ms, xp, 3),
        T, B, H, R, HAS_BHN=b_hn is not None, HAS_PROJ=w_hr is not None, SAVE=save, **meta,
    )
    h_n = hbuf[T % 2].to(xp.dtype, copy=True)
    c_n = cbuf.to(xp.dtype) if is_lstm else xp.new_empty(0)
    return y, h_n, c_n, ws, cs, ms


def sequence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell: int, reverse: bool):
    """Reverse-time pass of one layer and direction.

    Gradients dy (T, B, R), dh_n (B, R) and dc_n (B, H) (dc_n only for LSTM),
    and the forward's tensors. Returns the gate gradients (T, B, GS) with
    GS = 4H, 4H (GRU: r, z, input-side n, hidden-side n) or H, zero past each
    length; dh0 (B, R) and dc0 (B, H) (empty except for LSTM) in the compute
    dtype; and with a projection the gradient of each step's h, (T, B, R),
    zero past each length (else empty).
    """
    T, B, R = y.shape
    H = w_hr.shape[1] if w_hr is not None else R
    gs = {LSTM: 4, GRU: 4}.get(cell, 1) * H
    acc = _compute_dtype(y.dtype)
    dg = new_output(y, (T, B, gs))
    dhs = new_output(y, (T, B, R) if w_hr is not None else (0,))
    dhbuf = new_output(y.new_empty(0, dtype=acc), (2, B, R))
    is_lstm = cell == LSTM
    dcbuf = new_output(dhbuf, (B, H) if is_lstm else (0,))
    grid, meta = _meta(cell, reverse, y.dtype, B, H)
    w_hh, w_hr = (_in_block_offsets_fit(w, meta["BLOCK_K"]) for w in (w_hh, w_hr))
    launch(
        sequence_bwd_kernel, grid,
        dy, *dy.stride(), dh_n, *dh_n.stride(), *_or_dummy(dc_n, dh_n, 2), w_hh, *w_hh.stride(),
        *_or_dummy(w_hr, y, 2), h0, *h0.stride(), *_or_dummy(c0, h0, 2), lengths, y, *y.stride(),
        *_or_dummy(ws, y, 3), *_or_dummy(cs, y, 3), dg, *dg.stride(), *_or_dummy(dhs, y, 3),
        dhbuf, *dhbuf.stride(), *_or_dummy(dcbuf, y, 2),
        T, B, H, R, HAS_PROJ=w_hr is not None, **meta,
    )
    return dg, dhbuf[T % 2].clone(), dcbuf, dhs
