"""Sequence kernels: a layer over a range of time steps, in one or both directions, the time loop on the GPU.

Grid (direction x batch tile, hidden slice). Program (d, b, p) runs direction d
(direction 1 of a bidirectional launch in reverse) and owns the BLOCK_B rows of
batch tile b and the hidden units [p * SLICE_H, (p + 1) * SLICE_H) of every
gate (for an LSTM the rows p * SLICE_H... of each of W_hh's four gate blocks).
Per step it reads the full h_{t-1} of its rows from a global ping-pong buffer
(in the storage dtype), computes its slice of the recurrent product h_{t-1}
W_hh^T with ``tl.dot`` (fp32 accumulation, fp64 for fp64), adds the
precomputed input projection, applies the cell math of ``cell_math`` and
writes its slice of h_t, y and what backward reads. W_hh is either streamed
from L2 by (BLOCK_K x BLOCK_H) blocks every step (KP = 0), or, weight-stationary
(KP > 0), the program's slice of one BLOCK_H block of units is loaded once
before the time loop and kept on chip, the reduction width padded to KP. With
one slice a program owns every hidden unit of its rows: the batch-tiled kernel.

The programs of one (direction, batch tile) depend on each other's slices, so
between phases they meet at a barrier (``_slices_barrier``): a monotonic int32
arrival counter per (direction, batch tile), a release atomic add to arrive,
an acquire spin to wait. A kernel advances the recurrence over the steps
[S_BEGIN, S_END) and runs the phases selected by PHASES. Launched once over
the whole sequence with BARRIER set (a cooperative launch: the driver runs
every program at once or refuses), it is the persistent kernel; launched one
step and one phase at a time with BARRIER off (Triton's interpreter, which
runs programs one after another, or a grid the GPU cannot hold at once) the
kernel boundaries are the barrier. The per-step code is the same in both, so
the sums are the same in the same order: on a GPU the two agree bitwise.

The kernels take no strides: the launchers pass every tensor contiguous (the
buffers they allocate are; inputs are copied where they are not), and the
kernels derive each offset from the sizes, in int64 (time and row indices are
int64). Two dozen stride arguments, live through the time loop, spilled the
scalar registers of AMD GPUs. Direction d's tensors take no extra argument:
the stacked weights and buffers have a leading direction axis, so direction
d's block is d times a block further; xp, y and dy hold the DIRS directions of
the layer side by side in their last axis.

Variable lengths come from a per-row ``lengths`` vector: at step s row b is
active while s < lengths[b]; the forward direction reads time s, the reverse
direction time lengths[b] - 1 - s. An inactive row keeps its state and writes
zeros at time s (which is then padding), so every padded output is zero and
h_n is each row's state at its last valid step. T and B are runtime values
(not specialised on).

Heads (HEADS): W_hh may be block-diagonal, one (HD x HD) block per head and
gate, stored compact as (G, HD) (FlashRNN's R reshaped): a unit's gates sum
over the h of its own head only, and the programs of a tile meet only with
those that share their heads (GROUP; none when a program owns whole heads).

CELL: 0 LSTM (gates i, f, g, o), 1 GRU (r, z, n), 2 RNN tanh, 3 RNN relu,
4 sLSTM (i, f, z, o; owned states c, n and the stabiliser m). IndRNN is the RNN
with one-unit heads. ZONEOUT blends each unit's new h with its previous one
(haste's zoneout). LN normalises each row's recurrent product (and the LSTM's
c) as haste's LayerNorm LSTM and GRU: the row spans every slice of a tile, so
each program writes its blocks' partial statistics and the tile meets before
normalising (two more barriers a step for the LSTM, one for the GRU). The
device functions live in ``sequence_tiles``.
"""

import functools
import logging

import torch
import triton
import triton.language as tl

from .cell_math import (
    gru_backward,
    gru_forward,
    layer_norm,
    layer_norm_backward,
    lstm_backward,
    lstm_forward,
    lstm_output,
    lstm_output_backward,
    lstm_state,
    lstm_state_backward,
    rnn_backward,
    rnn_forward,
    slstm_backward,
    slstm_forward,
)
from .launch import SequencePlan, interpreting, launch, new_output, tf32_products
from .sequence_tiles import (
    BROKEN,
    _at,
    _block_moments,
    _carried_dh,
    _gains,
    _gate_products,
    _gate_rows,
    _get_stats,
    _head_span,
    _keep_factor,
    _load_gates,
    _matmul_block,
    _normalised_c,
    _normalised_products,
    _own_tile,
    _previous_h,
    _program_columns,
    _program_rows,
    _put_h,
    _put_own_tile,
    _put_partials,
    _put_stats,
    _resident_tile,
    _row_moments,
    _row_sums,
    _slices_barrier,
    _step_rows,
    _store_gates,
)

log = logging.getLogger("fused_rnn")

LSTM, GRU, RNN_TANH, RNN_RELU, SLSTM = 0, 1, 2, 3, 4
CELLS = {"LSTM": LSTM, "GRU": GRU, "RNN_TANH": RNN_TANH, "RNN_RELU": RNN_RELU, "SLSTM": SLSTM}
NN_CELLS = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")  # torch.nn's modes (the sLSTM is FlashRNN's)
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1, RNN_RELU: 1, SLSTM: 4}
# Gate values saved per step for backward (LSTM i, f, g, o; GRU r, z, n and W_hn h + b_hn; sLSTM the
# pre-activations of i and f, z and o).
SAVED = {LSTM: 4, GRU: 4, RNN_TANH: 0, RNN_RELU: 0, SLSTM: 4}
# States each program owns for its units, H columns each (LSTM c, GRU h, sLSTM c, n, m), and the carried
# gradients of those with one (LSTM dc, sLSTM dc, dn; m has none, as in FlashRNN).
OWNED = {LSTM: 1, GRU: 1, RNN_TANH: 0, RNN_RELU: 0, SLSTM: 3}
CARRIED = {LSTM: 1, GRU: 0, RNN_TANH: 0, RNN_RELU: 0, SLSTM: 2}

# Phases of a step (the PHASES bit mask). Forward: the cell on the program's hidden units, then, with a
# projection, h = W_hr m on its projected units. Backward: with a projection the gradient of h, then the
# gate gradients, then the carried gradient dh_{t-1} = d_gates W_hh on the program's units of h.
# With layer normalisation (LN) forward: first the raw products and their partial row statistics, then the
# cell, then (LSTM) h from the normalised c; backward: first (LSTM) the gradient of the normalised c and its
# partial sums, then the gate gradients, then the gradient of the raw products, then the carry.
FWD_CELL, FWD_PROJ, FWD_NORM, FWD_OUT = tl.constexpr(1), tl.constexpr(2), tl.constexpr(4), tl.constexpr(8)
BWD_PROJ, BWD_GATES, BWD_CARRY = tl.constexpr(1), tl.constexpr(2), tl.constexpr(4)
BWD_NORM_C, BWD_NORM_Q = tl.constexpr(8), tl.constexpr(16)


@triton.jit(do_not_specialize=["T", "B", "S_BEGIN", "S_END"])
def sequence_fwd_kernel(
    xp,  # (T, B, DIRS * G) input projection x W_ih^T with the foldable biases added (G = gates x H)
    w,  # (D, G, R) W_hh; with HEADS (D, G, HD): each head's (HD x HD) blocks of the block-diagonal W_hh
    b_hn,  # (D, H) GRU's b_hn (inside r * (W_hn h + b_hn)), read when HAS_BHN
    w_hr,  # (D, R, H) LSTM projection W_hr, read when HAS_PROJ
    lengths,  # (B,) int64 valid length of each row
    zero_n,  # (1,) int32: whether the initial sLSTM normaliser is zero everywhere (read when sLSTM)
    keep,  # zoneout's keep-the-new-h factors: (T, B, DIRS * H) (ZONEOUT 1, training masks) or (1,) (2, eval)
    y,  # out (T, B, DIRS * R) outputs, zero past each row's length
    hbuf,  # state (D, 2, B, R) h ping-pong in the storage dtype: step s reads hbuf[d, s % 2]
    cbuf,  # state (D, B, SC * H) in the compute dtype, read by its owner only: LSTM c, GRU h, sLSTM c | n | m
    ws,  # out (D, T, B, 4H) gate values for backward, compute dtype (LSTM, GRU, sLSTM; RNN with zoneout: (D, T, B, H)
    # the cell's h before zoneout; when SAVE)
    cs,  # out (D, T, B, SC * H) the owned states of every step, compute dtype (LSTM, sLSTM; when SAVE)
    ms,  # out (D, T, B, H) o * tanh(c) before the projection (HAS_PROJ); zero past lengths
    ln,  # (D, G + 2H) layer normalisation (LN): the gains of the recurrent products, then (LSTM) c's gain and bias
    ns,  # out (D, T, B, 4H + 4) (LN; (D, 1, B, .) unless SAVE) each step's raw recurrent products, gate blocks
    # side by side, then the rows' mean and rstd of those products and (LSTM) of c
    part,  # scratch (D, B, 2, NB, 2) compute dtype (LN): each block of units' partial statistics, two sets
    sync,  # (batch tiles x SLICES / GROUP,) int32 arrival counters, zero at launch (read when BARRIER)
    S_BEGIN, S_END,  # the steps this launch advances
    T, B, H, R,  # R: width of h, the projection size with HAS_PROJ, else H
    SLICE_H, SLICE_R, SLICES,  # hidden units (of H and of R) per program, and programs per batch tile
    HD, GROUP,  # units per head (R without heads); programs of a batch tile that meet at a barrier
    CELL: tl.constexpr, REVERSE: tl.constexpr, DIRS: tl.constexpr, HAS_BHN: tl.constexpr, HAS_PROJ: tl.constexpr,
    HEADS: tl.constexpr, ZONEOUT: tl.constexpr, LN: tl.constexpr, SAVE: tl.constexpr, ACC: tl.constexpr,
    DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, KP: tl.constexpr, GATES_P2: tl.constexpr,
    PHASES: tl.constexpr, BARRIER: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):
    """Steps [S_BEGIN, S_END) of the recurrence; the state (hbuf[S_BEGIN % 2], cbuf) is seeded by the launcher.

    Phases per step: FWD_CELL on columns [lo, hi) of H, then with a projection a
    barrier and FWD_PROJ on this program's columns of R (h = W_hr m needs all of
    m); a barrier ends the step (the next reads all of h, or with HEADS the h of
    the units' heads: only the GROUP programs that share a head meet, and a
    program that owns whole heads meets none).

    LN (haste's LayerNorm LSTM and GRU): first FWD_NORM, the raw recurrent
    products of the program's units (saved in ns) and each block's partial
    row statistics, and a barrier; FWD_CELL normalises them with the row's
    mean and rstd combined from every block's partials; the LSTM then meets
    again (c's partials) and FWD_OUT computes h = o * tanh(LN(c)). Three
    barriers a step for the LSTM, two for the GRU (one without LN).

    KP > 0 (weight-stationary): the program owns one block of BLOCK_H units
    (SLICE_H = BLOCK_H) and loads its rows of W_hh, every gate, over the whole
    reduction span (R, or its units' heads) padded to KP, once before the time
    loop; each step then reads only h_{t-1} of its rows. KP = 0: W_hh streamed
    every step.
    """
    d, rev, rows, rmask, lens, zero_b = _program_rows(lengths, B, REVERSE, BLOCK_B)
    h_lo, h_hi = _program_columns(H, SLICE_H)
    r_lo, r_hi = _program_columns(R, SLICE_R)
    sync_tile = sync + tl.program_id(0) * (SLICES // GROUP) + tl.program_id(1) // GROUP
    # Direction d's tensors: its columns of xp and y (rows XW and YW wide), its block of the stacked ones.
    G: tl.constexpr = 4 if (CELL == 0 or CELL == 4) else (3 if CELL == 1 else 1)
    SC: tl.constexpr = 3 if CELL == 4 else 1  # states each program owns (LSTM c, GRU h, sLSTM c, n, m), H columns each
    OWN: tl.constexpr = CELL <= 1 or CELL == 4
    WSW: tl.constexpr = 4 if G > 1 else 1  # saved values per unit
    XW, YW = DIRS * G * H, DIRS * R
    xp += d * G * H
    keep += d * H if ZONEOUT == 1 else 0
    y += d * R
    w += d * G * H * HD
    b_hn += d * H
    w_hr += d * R * H
    hbuf += d * 2 * B * R
    cbuf += d * B * SC * H
    ws += d * T * B * WSW * H
    cs += d * T * B * SC * H
    ms += d * T * B * H
    # Layer normalisation: per row NW saved values, NB blocks of partials; barriers a step.
    NW = 4 * H + 4
    NB = tl.cdiv(H, BLOCK_H)
    LN_OUT: tl.constexpr = LN and CELL == 0  # h = o * tanh(LN(c)) after c's statistics: a phase of its own
    MEETS: tl.constexpr = 1 + HAS_PROJ + LN + LN_OUT
    ln += d * (G + 2 * LN_OUT) * H
    ns += d * (T if SAVE else 1) * B * NW
    part += d * B * 4 * NB
    # The program's rows of W_hh, every gate side by side, kept on chip (KP > 0; else 0).
    w_rows, w_real, w_head = _gate_rows(h_lo, H, HD, CELL, GATES_P2, BLOCK_H)
    k_lo, k_hi = _head_span(h_lo, H, HD, R, HEADS, BLOCK_H)
    w_gates = _resident_tile(w, k_lo, k_hi, HD, 1, w_rows, w_real, w_head, HD, HEADS, KP)
    # A resident program owns one block of units: their LSTM c (GRU h; sLSTM c, n, m) stay in registers.
    own = _own_tile(cbuf, rows, rmask, SC * H, 0, h_lo, H, KP > 0 and OWN, ACC, BLOCK_H)
    own_n = _own_tile(cbuf, rows, rmask, SC * H, H, h_lo, H, KP > 0 and CELL == 4, ACC, BLOCK_H)
    own_m = _own_tile(cbuf, rows, rmask, SC * H, 2 * H, h_lo, H, KP > 0 and CELL == 4, ACC, BLOCK_H)
    if CELL == 4:  # FlashRNN's first step: m = pre_i when the initial normaliser is zero everywhere
        n0_zero = tl.load(zero_n) != 0
    for s in range(S_BEGIN, S_END):
        h_cur = hbuf + (s % 2) * B * R
        h_nxt = hbuf + ((s + 1) % 2) * B * R
        t, active = _step_rows(s, lens, rev)
        tb = t * B + rows  # the rows' index in (T, B, width) sequences
        tn = tb if SAVE else rows  # the rows' index in ns (one step's worth unless saved)
        arrived = (s - S_BEGIN) * MEETS * GROUP  # arrivals at this program's counter before this step
        if LN:  # the raw products and their partial statistics, then the row's mean and rstd from every block's
            for j in range(h_lo, h_hi if (FWD_NORM & PHASES) else h_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                cmask = ((j + cols) < H)[None, :]
                q0, q1, q2, q3 = _gate_products(h_cur, rows, rmask, w, w_gates, j, H, R, HD, CELL, GATES_P2, KP,
                                                HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                _store_gates(ns, tn, NW, H, j, cols, rmask[:, None] & cmask, q0, q1, q2, q3)
                q_sum, q_m2 = _block_moments(q0, q1, q2, q3, cmask, G)
                _put_partials(part, rows, rmask, NB, 0, j // BLOCK_H, q_sum, q_m2)
            _slices_barrier(sync_tile, arrived + GROUP, BARRIER, SPIN_LIMIT)
            mean_q, rstd_q = _row_moments(part, rows, rmask, NB, 0, G, H, BLOCK_H, ACC)
            if SAVE and (FWD_CELL & PHASES):  # for backward, by one program of the tile
                _put_stats(ns, tn, NW, 4 * H, rmask & ((zero_b + tl.program_id(1)) == 0), mean_q, rstd_q)
        for j in range(h_lo, h_hi if (FWD_CELL & PHASES) else h_lo, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < H)[None, :]
            am = m & active[:, None]
            if OWN:  # the states of the program's units (LSTM c, GRU h, sLSTM c, n, m), in the compute dtype
                if KP > 0:
                    c_prev = own
                    if CELL == 4:
                        n_prev, m_prev = own_n, own_m
                else:
                    c_prev = tl.load(_at(cbuf, rows, SC * H, j, cols), mask=m, other=0.0).to(ACC)
                    if CELL == 4:
                        n_prev = tl.load(_at(cbuf, rows, SC * H, H + j, cols), mask=m, other=0.0).to(ACC)
                        m_prev = tl.load(_at(cbuf, rows, SC * H, 2 * H + j, cols), mask=m, other=0.0).to(ACC)
            if CELL == 1:
                h_prev = c_prev
            else:
                h_prev = _previous_h(h_cur, rows, R, j, cols, m, active, ZONEOUT, HAS_PROJ, ACC)
            if LN:  # the products FWD_NORM saved, normalised over the row
                q0, q1, q2, q3 = _load_gates(ns, tn, NW, H, j, cols, m, G, ACC, BLOCK_B, BLOCK_H)
                g0, g1, g2, g3 = _gains(ln, H, j, cols, G, ACC)
                mq, rq = mean_q[:, None], rstd_q[:, None]
                q0, q1 = layer_norm(q0, mq, rq, g0, 0.0), layer_norm(q1, mq, rq, g1, 0.0)
                q2, q3 = layer_norm(q2, mq, rq, g2, 0.0), layer_norm(q3, mq, rq, g3, 0.0)
            else:
                q0, q1, q2, q3 = _gate_products(h_cur, rows, rmask, w, w_gates, j, H, R, HD, CELL, GATES_P2, KP,
                                                HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            if CELL == 0:
                x_i, x_f, x_g, x_o = _load_gates(xp, tb, XW, H, j, cols, am, 4, ACC, BLOCK_B, BLOCK_H)
                pre_i, pre_f, pre_g, pre_o = q0 + x_i, q1 + x_f, q2 + x_g, q3 + x_o
                if LN_OUT:  # h comes after c's statistics (FWD_OUT)
                    c, i, f, g, o = lstm_state(pre_i, pre_f, pre_g, pre_o, c_prev)
                else:
                    h, c, i, f, g, o = lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev)
                c_next = tl.where(active[:, None], c, c_prev)
                if SAVE:
                    tl.store(_at(cs, tb, H, j, cols), c, mask=am)
                    _store_gates(ws, tb, 4 * H, H, j, cols, am, i, f, g, o)
                if LN_OUT:
                    c_sum, c_m2 = _block_moments(c_next, c_next, c_next, c_next, ((j + cols) < H)[None, :], 1)
                    _put_partials(part, rows, rmask, NB, 1, j // BLOCK_H, c_sum, c_m2)
            elif CELL == 4:
                x_i, x_f, x_z, x_o = _load_gates(xp, tb, XW, H, j, cols, am, 4, ACC, BLOCK_B, BLOCK_H)
                pre_i, pre_f, pre_z, pre_o = q0 + x_i, q1 + x_f, q2 + x_z, q3 + x_o
                h, c, n, mm, z, o = slstm_forward(pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev,
                                                  n0_zero & (s == 0))
                a = active[:, None]
                c_next, n_next, m_next = tl.where(a, c, c_prev), tl.where(a, n, n_prev), tl.where(a, mm, m_prev)
                if SAVE:  # FlashRNN's backward reads pre_i and pre_f (it recomputes i and f from m)
                    tl.store(_at(cs, tb, SC * H, j, cols), c, mask=am)
                    tl.store(_at(cs, tb, SC * H, H + j, cols), n, mask=am)
                    tl.store(_at(cs, tb, SC * H, 2 * H + j, cols), mm, mask=am)
                    _store_gates(ws, tb, 4 * H, H, j, cols, am, pre_i, pre_f, z, o)
                if KP > 0:
                    own_n, own_m = n_next, m_next
                else:
                    tl.store(_at(cbuf, rows, SC * H, H + j, cols), n_next, mask=m)
                    tl.store(_at(cbuf, rows, SC * H, 2 * H + j, cols), m_next, mask=m)
            elif CELL == 1:
                h_r, h_z, h_n = q0, q1, q2
                if HAS_BHN:
                    h_n += tl.load(b_hn + j + cols, mask=(j + cols) < H, other=0.0).to(ACC)[None, :]
                x_r, x_z, x_n, _ = _load_gates(xp, tb, XW, H, j, cols, am, 3, ACC, BLOCK_B, BLOCK_H)
                h, r, z, n = gru_forward(x_r, x_z, x_n, h_r, h_z, h_n, h_prev)
                if SAVE:
                    _store_gates(ws, tb, 4 * H, H, j, cols, am, r, z, n, h_n)
            else:
                pre = q0
                pre += tl.load(_at(xp, tb, XW, j, cols), mask=am, other=0.0).to(ACC)
                h = rnn_forward(pre, CELL == 3)
                if SAVE and ZONEOUT:  # backward differentiates the activation at its own output
                    tl.store(_at(ws, tb, H, j, cols), h, mask=am)
            if ZONEOUT and not LN_OUT:  # h = h_prev + k (h - h_prev): k = 1 keeps the new h, 0 the previous one
                h = h_prev + _keep_factor(keep, tb, DIRS * H, j, cols, am, ZONEOUT, ACC) * (h - h_prev)
            if CELL == 1:
                c_next = tl.where(active[:, None], h, h_prev)
            if OWN:
                if KP > 0:
                    own = c_next
                else:
                    tl.store(_at(cbuf, rows, SC * H, j, cols), c_next, mask=m)
            if HAS_PROJ:  # h = W_hr m comes after every column of m is written
                tl.store(_at(ms, tb, H, j, cols), tl.where(active[:, None], h, 0.0), mask=m)
            elif not LN_OUT:
                _put_h(h_nxt, y, rows, tb, R, YW, j, cols, m, active, h, h_prev)
        if LN_OUT:  # h = o * tanh(LN(c)), once every block's partials of c are in
            _slices_barrier(sync_tile, arrived + 2 * GROUP, BARRIER, SPIN_LIMIT)
            mean_c, rstd_c = _row_moments(part, rows, rmask, NB, 1, 1, H, BLOCK_H, ACC)
            if SAVE and (FWD_OUT & PHASES):
                _put_stats(ns, tn, NW, 4 * H + 2, rmask & ((zero_b + tl.program_id(1)) == 0), mean_c, rstd_c)
            for j in range(h_lo, h_hi if (FWD_OUT & PHASES) else h_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < H)[None, :]
                am = m & active[:, None]
                c = own if KP > 0 else tl.load(_at(cbuf, rows, SC * H, j, cols), mask=m, other=0.0).to(ACC)
                # o again, as FWD_CELL computed it, from the saved product (no buffer for o between the phases)
                q_o = tl.load(_at(ns, tn, NW, 3 * H + j, cols), mask=m, other=0.0).to(ACC)
                g_o, gain_c, bias_c, _ = _gains(ln + 3 * H, H, j, cols, 3, ACC)
                pre_o = layer_norm(q_o, mean_q[:, None], rstd_q[:, None], g_o, 0.0)
                pre_o += tl.load(_at(xp, tb, XW, 3 * H + j, cols), mask=am, other=0.0).to(ACC)
                h = lstm_output(pre_o, layer_norm(c, mean_c[:, None], rstd_c[:, None], gain_c, bias_c))
                h_prev = _previous_h(h_cur, rows, R, j, cols, m, active, ZONEOUT, HAS_PROJ, ACC)
                if ZONEOUT:
                    h = h_prev + _keep_factor(keep, tb, DIRS * H, j, cols, am, ZONEOUT, ACC) * (h - h_prev)
                _put_h(h_nxt, y, rows, tb, R, YW, j, cols, m, active, h, h_prev)
        if HAS_PROJ:
            _slices_barrier(sync_tile, arrived + GROUP, BARRIER, SPIN_LIMIT)
            for j in range(r_lo, r_hi if (FWD_PROJ & PHASES) else r_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < R)[None, :]
                h = _matmul_block(tl.zeros((BLOCK_B, BLOCK_H), ACC), ms, tb, H, 0, rmask, 0, H, w_hr, H, 1, j + cols,
                                  (j + cols) < R, 0, H, 0, 0, False, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                h_prev = tl.load(_at(h_cur, rows, R, j, cols), mask=m, other=0.0)
                _put_h(h_nxt, y, rows, tb, R, YW, j, cols, m, active, h, h_prev)
        _slices_barrier(sync_tile, arrived + MEETS * GROUP, BARRIER, SPIN_LIMIT)
    _put_own_tile(cbuf, rows, rmask, SC * H, 0, h_lo, H, own, KP > 0 and OWN, BLOCK_H)
    _put_own_tile(cbuf, rows, rmask, SC * H, H, h_lo, H, own_n, KP > 0 and CELL == 4, BLOCK_H)
    _put_own_tile(cbuf, rows, rmask, SC * H, 2 * H, h_lo, H, own_m, KP > 0 and CELL == 4, BLOCK_H)


@triton.jit(do_not_specialize=["T", "B", "S_BEGIN", "S_END"])
def sequence_bwd_kernel(
    dy,  # (T, B, DIRS * R) gradient of the outputs
    dcs,  # (D, T, B, SD * H) gradients of the owned states' sequences (LSTM c, sLSTM c | n), read when STATE_GRADS
    keep,  # zoneout's keep factors, as the forward's (read when ZONEOUT)
    w,  # (D, G, R) W_hh; with HEADS (D, G, HD)
    w_hr,  # (D, R, H) LSTM projection W_hr, read when HAS_PROJ
    h0,  # (D, B, R) initial hidden state (GRU needs h_prev)
    c0,  # (D, B, SC * H) initial owned states (LSTM c; sLSTM c | n | m)
    lengths,  # (B,) int64
    y,  # (T, B, DIRS * R) forward outputs
    ws,  # (D, T, B, 4H) saved gate values (RNN with zoneout: (D, T, B, H), the cell's h before zoneout)
    cs,  # (D, T, B, SC * H) saved owned states (LSTM c; sLSTM c | n | m)
    dg,  # out (D, T, B, GS) gate gradients (GRU: r, z, input-side n, hidden-side n); zero past lengths
    dhs,  # out (D, T, B, R) gradient of each step's h (HAS_PROJ), zero past lengths
    dhbuf,  # state (D, B, R) dh carry (compute dtype), updated in place: each column has one owner
    dcbuf,  # state (D, B, SD * H) carries of the owned states (compute dtype): LSTM dc; sLSTM dc | dn
    ln,  # (D, G + 2H) layer normalisation's gains (and c's bias), as the forward's (read when LN)
    ns,  # (D, T, B, 4H + 4) the forward's raw recurrent products and row statistics (read when LN)
    dnorm,  # out (D, T, B, 4H (+ H)) (LN): the gradients of the raw products (gate blocks side by side; what the
    # carry and dW_hh read), then (LSTM) e, the gradient of LN(c) (for its gain and bias); zero past lengths
    part,  # scratch (D, B, 2, NB, 2) compute dtype (LN): each block of units' partial sums, two sets
    sync,  # (batch tiles x SLICES / GROUP,) int32 arrival counters, zero at launch (read when BARRIER)
    S_BEGIN, S_END,  # the reverse steps r (time step T - 1 - r) this launch advances
    T, B, H, R,  # R: width of h, the projection size with HAS_PROJ, else H
    SLICE_H, SLICE_R, SLICES,  # hidden units (of H and of R) per program, and programs per batch tile
    HD, GROUP,  # units per head (R without heads); programs of a batch tile that meet at a barrier
    CELL: tl.constexpr, REVERSE: tl.constexpr, DIRS: tl.constexpr, HAS_PROJ: tl.constexpr, HEADS: tl.constexpr,
    ZONEOUT: tl.constexpr, LN: tl.constexpr, STATE_GRADS: tl.constexpr, ACC: tl.constexpr, DOT_FP32: tl.constexpr,
    DOT_PREC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, KP: tl.constexpr,
    PHASES: tl.constexpr, BARRIER: tl.constexpr, SPIN_LIMIT: tl.constexpr,
):
    """Reverse steps [S_BEGIN, S_END); the carries (dhbuf, dcbuf) are seeded by the launcher.

    Phases per step: with a projection BWD_PROJ on this program's columns of R
    and a barrier (the gate gradients need all of dh W_hr); BWD_GATES on its
    columns of H; a barrier (the carry needs every gate gradient of the rows'
    heads); BWD_CARRY on its columns of R. The next step reads only the
    program's own columns of the carry, so no barrier ends the step.

    LN: the LSTM first runs BWD_NORM_C, the gradient e of LN(c) and its
    partial sums, and meets; BWD_GATES adds LN(c)'s gradient to dc, writes
    the gate gradients (the gradient of xp) and the partial sums of the
    normalised products' gradients; after its barrier BWD_NORM_Q writes the
    raw products' gradients (dnorm) and meets again; BWD_CARRY reads those.
    Three barriers a step for the LSTM, two for the GRU (one without LN).

    KP > 0 (weight-stationary): the program owns one block of BLOCK_H units of
    R and loads those columns of W_hh, every gate block, the reduction span (H,
    or its units' heads) padded to KP, once before the time loop. KP = 0: W_hh
    streamed every step.
    """
    d, rev, rows, rmask, lens, zero_b = _program_rows(lengths, B, REVERSE, BLOCK_B)
    h_lo, h_hi = _program_columns(H, SLICE_H)
    r_lo, r_hi = _program_columns(R, SLICE_R)
    sync_tile = sync + tl.program_id(0) * (SLICES // GROUP) + tl.program_id(1) // GROUP
    # Direction d's tensors: its columns of dy and y (rows YW wide), its block of the stacked ones.
    G: tl.constexpr = 4 if (CELL == 0 or CELL == 4) else (3 if CELL == 1 else 1)
    GS = 4 * H if G > 1 else H  # the width of dg
    SC: tl.constexpr = 3 if CELL == 4 else 1  # owned states (c; sLSTM c, n, m) and carried ones (dc; sLSTM dc, dn)
    SD: tl.constexpr = 2 if CELL == 4 else 1
    WSW: tl.constexpr = 4 if G > 1 else 1  # saved values per unit
    YW = DIRS * R
    dy += d * R
    keep += d * H if ZONEOUT == 1 else 0
    dcs += d * T * B * SD * H
    y += d * R
    w += d * G * H * HD
    w_hr += d * R * H
    h0 += d * B * R
    c0 += d * B * SC * H
    ws += d * T * B * WSW * H
    cs += d * T * B * SC * H
    dg += d * T * B * GS
    dhs += d * T * B * R
    dhbuf += d * B * R
    dcbuf += d * B * SD * H
    # Layer normalisation: the saved values' and dnorm's widths, NB blocks of partials; barriers a step.
    NW = 4 * H + 4
    NB = tl.cdiv(H, BLOCK_H)
    LN_C: tl.constexpr = LN and CELL == 0  # LN(c) inside the LSTM's output: its gradient has a phase of its own
    MEETS: tl.constexpr = 1 + HAS_PROJ + LN + LN_C
    DW = 4 * H + H * LN_C
    ln += d * (G + 2 * LN_C) * H
    ns += d * T * B * NW
    dnorm += d * T * B * DW
    part += d * B * 4 * NB
    # The program's resident columns of W_hh (its units of h), gate block by gate block, over their heads.
    units0 = r_lo + tl.arange(0, BLOCK_H).to(tl.int64)
    k_lo, k_hi = _head_span(r_lo, R, HD, H, HEADS, BLOCK_H)
    HB = tl.cast(H, tl.int64) * HD  # one gate block of W_hh
    wb_0 = _resident_tile(w, k_lo, k_hi, 1, HD, units0, units0 < R, (units0 // HD) * HD, HD, HEADS, KP)
    wb_1 = _resident_tile(w + HB, k_lo, k_hi, 1, HD, units0, units0 < R, (units0 // HD) * HD, HD, HEADS,
                          KP if G > 1 else 0)
    wb_2 = _resident_tile(w + 2 * HB, k_lo, k_hi, 1, HD, units0, units0 < R, (units0 // HD) * HD, HD, HEADS,
                          KP if G > 1 else 0)
    wb_3 = _resident_tile(w + 3 * HB, k_lo, k_hi, 1, HD, units0, units0 < R, (units0 // HD) * HD, HD, HEADS,
                          KP if G == 4 else 0)
    # A resident program owns one block of units (of h and c alike): their carries stay in registers (the dh
    # carry without a projection, whose phase P zeroes it for the other programs' columns of R).
    CARRIES: tl.constexpr = CELL == 0 or CELL == 4
    own_dh = _own_tile(dhbuf, rows, rmask, R, 0, r_lo, R, KP > 0 and not HAS_PROJ, ACC, BLOCK_H)
    own_dc = _own_tile(dcbuf, rows, rmask, SD * H, 0, h_lo, H, KP > 0 and CARRIES, ACC, BLOCK_H)
    own_dn = _own_tile(dcbuf, rows, rmask, SD * H, H, h_lo, H, KP > 0 and CELL == 4, ACC, BLOCK_H)
    for r_step in range(S_BEGIN, S_END):
        s = T - 1 - r_step
        t, active = _step_rows(s, lens, rev)
        tp = tl.where(rev, t + 1, t - 1)
        tb, tpb = t * B + rows, tp * B + rows  # the rows' index in (T, B, width) sequences at t and tp
        first = ((zero_b + s) == 0)[:, None]  # the previous state is h0 / c0
        arrived = (r_step - S_BEGIN) * MEETS * GROUP  # arrivals at this program's counter before this step
        if LN_C:  # Phase N_C: e, the gradient of LN(c), and its partial sums (c's statistics saved by the forward)
            mean_c, rstd_c = _get_stats(ns, tb, NW, 4 * H + 2, rmask, ACC)
            for j in range(h_lo, h_hi if (BWD_NORM_C & PHASES) else h_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < H)[None, :]
                am = m & active[:, None]
                _, dh = _carried_dh(dhbuf, own_dh, dy, rows, tb, R, YW, j, cols, m, am, KP, ACC)
                if ZONEOUT:  # the cell gets k dh
                    dh *= _keep_factor(keep, tb, DIRS * H, j, cols, am, ZONEOUT, ACC)
                c = tl.load(_at(cs, tb, H, j, cols), mask=am, other=0.0).to(ACC)
                c_hat, tc, gain_c = _normalised_c(c, j, cols, ln + 4 * H, H, mean_c, rstd_c, ACC)
                o = tl.load(_at(ws, tb, 4 * H, 3 * H + j, cols), mask=am, other=0.0).to(ACC)
                _, e = lstm_output_backward(dh, o, tc)
                e = tl.where(active[:, None], e, 0.0)
                tl.store(_at(dnorm, tb, DW, 4 * H + j, cols), e, mask=m)
                _put_partials(part, rows, rmask, NB, 1, j // BLOCK_H, tl.sum(gain_c * e, 1),
                              tl.sum(gain_c * e * c_hat, 1))
            _slices_barrier(sync_tile, arrived + GROUP, BARRIER, SPIN_LIMIT)
            e_sum, e_c_sum = _row_sums(part, rows, rmask, NB, 1, ACC)
        if LN:  # the step's statistics, loaded where each phase needs them (registers live through fewer phases)
            mean_q, rstd_q = _get_stats(ns, tb, NW, 4 * H, rmask, ACC)
        if LN_C:
            mean_c, rstd_c = _get_stats(ns, tb, NW, 4 * H + 2, rmask, ACC)
        if HAS_PROJ:
            # Phase P: the gradient of this step's h (R columns); the carry of an inactive row passes through.
            for j in range(r_lo, r_hi if (BWD_PROJ & PHASES) else r_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < R)[None, :]
                carry = tl.load(_at(dhbuf, rows, R, j, cols), mask=m, other=0.0)
                dh = carry + tl.load(_at(dy, tb, YW, j, cols), mask=m & active[:, None], other=0.0)
                tl.store(_at(dhs, tb, R, j, cols), tl.where(active[:, None], dh, 0.0), mask=m)
                tl.store(_at(dhbuf, rows, R, j, cols), tl.where(active[:, None], 0.0, carry), mask=m)
            _slices_barrier(sync_tile, arrived + GROUP, BARRIER, SPIN_LIMIT)
        # Phase A: gate gradients of this step, column block by column block.
        for j in range(h_lo, h_hi if (BWD_GATES & PHASES) else h_lo, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < H)[None, :]
            am = m & active[:, None]
            a = active[:, None]
            if HAS_PROJ:  # the gradient of m = o * tanh(c) is dh W_hr
                dh = _matmul_block(tl.zeros((BLOCK_B, BLOCK_H), ACC), dhs, tb, R, 0, rmask, 0, R, w_hr, 1, H, j + cols,
                                   (j + cols) < H, 0, R, 0, 0, False, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            else:
                carry, dh = _carried_dh(dhbuf, own_dh, dy, rows, tb, R, YW, j, cols, m, am, KP, ACC)
            if ZONEOUT:  # h = h_prev + k (h_cell - h_prev): the cell gets k dh, h_prev (1 - k) dh directly
                k = _keep_factor(keep, tb, DIRS * H, j, cols, am, ZONEOUT, ACC)
                zoned = (1.0 - k) * dh
                dh = k * dh
            direct = tl.zeros((BLOCK_B, BLOCK_H), ACC)
            if CARRIES:
                if KP > 0:
                    dc = own_dc
                    if CELL == 4:
                        dn = own_dn
                else:
                    dc = tl.load(_at(dcbuf, rows, SD * H, j, cols), mask=m, other=0.0).to(ACC)
                    if CELL == 4:
                        dn = tl.load(_at(dcbuf, rows, SD * H, H + j, cols), mask=m, other=0.0).to(ACC)
                if STATE_GRADS:  # gradients reaching this step's c (and n) from outside the recurrence
                    dc += tl.load(_at(dcs, tb, SD * H, j, cols), mask=am, other=0.0).to(ACC)
                    if CELL == 4:
                        dn += tl.load(_at(dcs, tb, SD * H, H + j, cols), mask=am, other=0.0).to(ACC)
                c = tl.load(_at(cs, tb, SC * H, j, cols), mask=am, other=0.0).to(ACC)
                c_prev = tl.load(_at(cs, tpb, SC * H, j, cols), mask=am & ~first, other=0.0)
                c_prev += tl.load(_at(c0, rows, SC * H, j, cols), mask=am & first, other=0.0)
            if CELL == 0:
                i, f, g, o = _load_gates(ws, tb, 4 * H, H, j, cols, am, 4, ACC, BLOCK_B, BLOCK_H)
                if LN_C:  # h = o * tanh(LN(c)): c's gradient through the normalisation of its row
                    c_hat, tc, gain_c = _normalised_c(c, j, cols, ln + 4 * H, H, mean_c, rstd_c, ACC)
                    d_o, e = lstm_output_backward(dh, o, tc)
                    dc_ln = layer_norm_backward(gain_c * e, c_hat, rstd_c[:, None], (e_sum / H)[:, None],
                                                (e_c_sum / H)[:, None])
                    d_i, d_f, d_g, dc_prev = lstm_state_backward(dc + dc_ln, c_prev.to(ACC), i, f, g)
                else:
                    d_i, d_f, d_g, d_o, dc_prev = lstm_backward(dh, dc, c_prev.to(ACC), c, i, f, g, o)
                dc_next = tl.where(a, dc_prev, dc)
                _store_gates(dg, tb, GS, H, j, cols, m, tl.where(a, d_i, 0.0), tl.where(a, d_f, 0.0),
                             tl.where(a, d_g, 0.0), tl.where(a, d_o, 0.0))
            elif CELL == 4:
                pre_i, pre_f, z, o = _load_gates(ws, tb, 4 * H, H, j, cols, am, 4, ACC, BLOCK_B, BLOCK_H)
                n = tl.load(_at(cs, tb, SC * H, H + j, cols), mask=am, other=0.0).to(ACC)
                mm = tl.load(_at(cs, tb, SC * H, 2 * H + j, cols), mask=am, other=0.0).to(ACC)
                n_prev = tl.load(_at(cs, tpb, SC * H, H + j, cols), mask=am & ~first, other=0.0)
                n_prev += tl.load(_at(c0, rows, SC * H, H + j, cols), mask=am & first, other=0.0)
                m_prev = tl.load(_at(cs, tpb, SC * H, 2 * H + j, cols), mask=am & ~first, other=0.0)
                m_prev += tl.load(_at(c0, rows, SC * H, 2 * H + j, cols), mask=am & first, other=0.0)
                # an inactive row's values are zeros: n = 1 keeps its (unused) quotients finite
                d_i, d_f, d_z, d_o, dc_prev, dn_prev = slstm_backward(
                    dh, dc, dn, pre_i, pre_f, z, o, c, tl.where(a, n, 1.0), mm, c_prev.to(ACC), n_prev.to(ACC),
                    m_prev.to(ACC))
                dc_next = tl.where(a, dc_prev, dc)
                dn_next = tl.where(a, dn_prev, dn)
                if KP > 0:
                    own_dn = dn_next
                else:
                    tl.store(_at(dcbuf, rows, SD * H, H + j, cols), dn_next, mask=m)
                _store_gates(dg, tb, GS, H, j, cols, m, tl.where(a, d_i, 0.0), tl.where(a, d_f, 0.0),
                             tl.where(a, d_z, 0.0), tl.where(a, d_o, 0.0))
            elif CELL == 1:
                r, z, n, h_n = _load_gates(ws, tb, 4 * H, H, j, cols, am, 4, ACC, BLOCK_B, BLOCK_H)
                h_prev = tl.load(_at(y, tpb, YW, j, cols), mask=am & ~first, other=0.0)
                h_prev += tl.load(_at(h0, rows, R, j, cols), mask=am & first, other=0.0)
                d_r, d_z, d_xn, d_hn, direct = gru_backward(dh, h_prev.to(ACC), r, z, n, h_n)
                _store_gates(dg, tb, GS, H, j, cols, m, tl.where(a, d_r, 0.0), tl.where(a, d_z, 0.0),
                             tl.where(a, d_xn, 0.0), tl.where(a, d_hn, 0.0))
                d_i, d_f, d_g, d_o = d_r, d_z, d_hn, d_hn  # the hidden side's gradients, for LN (the fourth unused)
            else:
                if ZONEOUT:  # the activation's own output, saved by the forward (y is the zoned h)
                    h = tl.load(_at(ws, tb, H, j, cols), mask=am, other=0.0).to(ACC)
                else:
                    h = tl.load(_at(y, tb, YW, j, cols), mask=am, other=0.0).to(ACC)
                d_pre = rnn_backward(dh, h, CELL == 3)
                tl.store(_at(dg, tb, GS, j, cols), tl.where(a, d_pre, 0.0), mask=m)
            if ZONEOUT:
                direct += zoned
            if LN:  # partial sums of the normalised products' gradients (gains times the hidden side's)
                x0, x1, x2, x3 = _normalised_products(ns, tb, NW, H, j, cols, m, mean_q, rstd_q, G, ACC,
                                                      BLOCK_B, BLOCK_H)
                g0, g1, g2, g3 = _gains(ln, H, j, cols, G, ACC)
                v0, v1, v2, v3 = g0 * tl.where(a, d_i, 0.0), g1 * tl.where(a, d_f, 0.0), \
                    g2 * tl.where(a, d_g, 0.0), g3 * tl.where(a, d_o, 0.0)
                _put_partials(part, rows, rmask, NB, 0, j // BLOCK_H, tl.sum(v0 + v1 + v2 + v3, 1),
                              tl.sum(v0 * x0 + v1 * x1 + v2 * x2 + v3 * x3, 1))
            if CARRIES:
                if KP > 0:
                    own_dc = dc_next
                else:
                    tl.store(_at(dcbuf, rows, SD * H, j, cols), dc_next, mask=m)
            if not HAS_PROJ:  # the carry of an inactive row passes through unchanged
                nxt = tl.where(a, direct, carry)
                if KP > 0:
                    own_dh = nxt
                else:
                    tl.store(_at(dhbuf, rows, R, j, cols), nxt, mask=m)
        _slices_barrier(sync_tile, arrived + (1 + HAS_PROJ + LN_C) * GROUP, BARRIER, SPIN_LIMIT)
        if LN:  # Phase N_Q: the raw products' gradients through the normalisation of their row
            v_sum, v_x_sum = _row_sums(part, rows, rmask, NB, 0, ACC)
            mean_q, rstd_q = _get_stats(ns, tb, NW, 4 * H, rmask, ACC)
            mean_v, mean_v_x = (v_sum / (G * H))[:, None], (v_x_sum / (G * H))[:, None]
            for j in range(h_lo, h_hi if (BWD_NORM_Q & PHASES) else h_lo, BLOCK_H):
                cols = tl.arange(0, BLOCK_H).to(tl.int64)
                m = rmask[:, None] & ((j + cols) < H)[None, :]
                a = active[:, None]
                d0, d1, d2, d3 = _load_gates(dg, tb, GS, H, j, cols, m, 4, ACC, BLOCK_B, BLOCK_H)
                if CELL == 1:  # r, z, then the hidden side's n (dg's fourth block)
                    d2 = d3
                x0, x1, x2, x3 = _normalised_products(ns, tb, NW, H, j, cols, m, mean_q, rstd_q, G, ACC,
                                                      BLOCK_B, BLOCK_H)
                g0, g1, g2, g3 = _gains(ln, H, j, cols, G, ACC)
                r = rstd_q[:, None]
                q0 = layer_norm_backward(g0 * d0, x0, r, mean_v, mean_v_x)
                q1 = layer_norm_backward(g1 * d1, x1, r, mean_v, mean_v_x)
                q2 = layer_norm_backward(g2 * d2, x2, r, mean_v, mean_v_x)
                q3 = layer_norm_backward(g3 * d3, x3, r, mean_v, mean_v_x) if G == 4 else tl.zeros_like(q2)
                _store_gates(dnorm, tb, DW, H, j, cols, m, tl.where(a, q0, 0.0), tl.where(a, q1, 0.0),
                             tl.where(a, q2, 0.0), tl.where(a, q3, 0.0))
            _slices_barrier(sync_tile, arrived + MEETS * GROUP, BARRIER, SPIN_LIMIT)
        # Phase B: the recurrent part of the carry, d_gates_h @ W_hh, column block by column block, gate block by
        # gate block (GRU: r and z, then the hidden-side n, dg's fourth block), each over the units' heads. With
        # LN the raw products' gradients (dnorm; the GRU's n is its third block).
        src = dnorm if LN else dg
        SW = DW if LN else GS
        N_AT: tl.constexpr = 2 if (LN or CELL != 1) else 3  # the gate block that multiplies W_hh's third block
        for j in range(r_lo, r_hi if (BWD_CARRY & PHASES) else r_lo, BLOCK_H):
            cols = tl.arange(0, BLOCK_H).to(tl.int64)
            m = rmask[:, None] & ((j + cols) < R)[None, :]
            # W_hh^T addressed as rows = hidden units (stride 1), k = gate units (stride HD).
            units = j + cols
            real, head = units < R, (units // HD) * HD
            k_lo, k_hi = _head_span(j, R, HD, H, HEADS, BLOCK_H)
            acc = _matmul_block(tl.zeros((BLOCK_B, BLOCK_H), ACC), src, tb, SW, 0, rmask, k_lo, k_hi, w, 1, HD,
                                units, real, head, HD, wb_0, KP, HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H,
                                BLOCK_K)
            if G > 1:
                acc = _matmul_block(acc, src, tb, SW, H, rmask, k_lo, k_hi, w + HB, 1, HD, units, real, head, HD,
                                    wb_1, KP, HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
                acc = _matmul_block(acc, src, tb, SW, N_AT * H, rmask, k_lo, k_hi, w + 2 * HB, 1, HD, units, real,
                                    head, HD, wb_2, KP, HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            if G == 4:
                acc = _matmul_block(acc, src, tb, SW, 3 * H, rmask, k_lo, k_hi, w + 3 * HB, 1, HD, units, real, head,
                                    HD, wb_3, KP, HEADS, ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H, BLOCK_K)
            if KP > 0 and not HAS_PROJ:
                own_dh += tl.where(active[:, None], acc, 0.0)
            else:
                p = _at(dhbuf, rows, R, j, cols)
                old = tl.load(p, mask=m, other=0.0)
                tl.store(p, old + tl.where(active[:, None], acc, 0.0), mask=m)
        tl.debug_barrier()
    _put_own_tile(dhbuf, rows, rmask, R, 0, r_lo, R, own_dh, KP > 0 and not HAS_PROJ, BLOCK_H)
    _put_own_tile(dcbuf, rows, rmask, SD * H, 0, h_lo, H, own_dc, KP > 0 and CARRIES, BLOCK_H)
    _put_own_tile(dcbuf, rows, rmask, SD * H, H, h_lo, H, own_dn, KP > 0 and CELL == 4, BLOCK_H)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------
def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _meta(cell: int, reverse: bool, dtype: torch.dtype, plan: SequencePlan) -> dict:
    """The constexprs and launch options of a sequence kernel."""
    tf32 = tf32_products(dtype)
    blocks = plan.blocks
    meta = dict(
        CELL=cell, REVERSE=reverse, ACC=tl.float64 if dtype == torch.float64 else tl.float32,
        DOT_FP32=interpreting() and dtype == torch.bfloat16, DOT_PREC="tf32" if tf32 else "ieee",
        BLOCK_B=blocks.block_b, BLOCK_H=blocks.block_h, BLOCK_K=blocks.block_k, BARRIER=plan.barrier,
        SPIN_LIMIT=SPIN_LIMIT, num_warps=blocks.num_warps,
    )
    if torch.version.hip is None:  # an option of Triton's NVIDIA backend only (the AMD one rejects it)
        meta["maxnreg"] = blocks.max_registers
    if torch.version.hip is not None or plan.resident:
        # AMD: software-pipelining the K loop costs scalar registers (SGPRs) that the fp64 kernels lack. Resident:
        # a program's column loop runs once a step, so a second pipeline stage only doubles the h tile's buffer
        # in shared memory, beside the resident W.
        meta["num_stages"] = 1
    return meta


# The widest resident reduction (KP) of the LayerNorm LSTM's backward: at KP = 1024 its one-launch form (three
# phases, W_hh's four gate blocks on chip) spilled 8-16 B on sm_80 and sm_90 at 255 registers; up to 512 it
# compiles without spills, except with zoneout (KP 256 and 512 spilled 8-16 B on sm_80; docs/compile-report.md).
# Wider, or with zoneout, that backward streams W_hh; its forward stays resident.
LN_LSTM_BACKWARD_KP = 512


# Spins of one barrier wait before it gives up (a stalled launch, reported as an error, never a hang): about
# seconds on a GPU, where a step takes microseconds. Tests that run barriers in the interpreter lower it.
SPIN_LIMIT = 1 << 22


# The driver's refusal of a cooperative launch whose grid it cannot hold at once (CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE,
# as Triton's launcher raises it; HIP's hipErrorCooperativeLaunchTooLarge reads alike).
REFUSED = "too many blocks in cooperative launch"
_refusals_logged: set[str] = set()


def _launch_together(kernel, grid: tuple[int, int], args: tuple, meta: dict) -> bool:
    """Launch ``grid`` cooperatively: the driver starts every program at once or refuses the launch (a grid
    larger than the GPU holds, or SMs taken by other kernels such as NCCL's). Returns False when refused (the
    reason logged once per kernel); other errors propagate. Triton's interpreter ignores the option."""
    try:
        launch(kernel, grid, *args, launch_cooperative_grid=True, **meta)
    except RuntimeError as error:
        if REFUSED not in str(error):
            raise
        name = kernel.fn.__name__
        if name not in _refusals_logged:
            _refusals_logged.add(name)
            log.warning("fused_rnn: the driver refused a one-launch %s grid of %d programs (%s); running it one "
                        "launch per step and phase", name, grid[0] * grid[1], error)
        return False
    return True


def _run_steps(kernel, plan: SequencePlan, batch: int, steps: int, phases: list[int], head: tuple, tail: tuple,
               meta: dict, device: torch.device) -> None:
    """Launch ``kernel`` over reverse-or-forward steps [0, steps) as ``plan`` says.

    ``head`` are the arguments before the barrier counters, ``tail`` those after
    the step range. No programs that meet (one slice, or each owning whole
    heads): one launch, no barrier. Programs that meet, in one launch: one
    cooperative launch with the barrier, fresh zeroed counters (one per group
    of programs that meet), and an asynchronous check that no wait gave up.
    Otherwise (the interpreter, a grid the plan does not fit, or a cooperative
    launch the driver refuses): one launch per step and phase.
    """
    grid = plan.grid(batch)
    everything = sum(phases)
    if plan.barrier:
        sync = torch.zeros(grid[0] * (plan.slices // plan.meeting), dtype=torch.int32, device=device)
        args = (*head, sync, 0, steps, *tail)
        if _launch_together(kernel, grid, args, dict(meta, PHASES=everything)):
            torch._assert_async(
                sync.max() < BROKEN.value,
                f"fused_rnn: a {kernel.fn.__name__} barrier waited {SPIN_LIMIT} spins: the GPU did not run all "
                f"{grid[0] * grid[1]} programs at once (another kernel on the device?)",
            )
            return
        meta = dict(meta, BARRIER=False)
    placeholder = head[0]  # the counters are not read without a barrier
    if plan.meeting == 1:
        launch(kernel, grid, *head, placeholder, 0, steps, *tail, PHASES=everything, **meta)
        return
    for step in range(steps):
        for phase in phases:
            launch(kernel, grid, *head, placeholder, step, step + 1, *tail, PHASES=phase, **meta)


@functools.cache  # asked at every launch of a layer with heads: a loop over its blocks, once per shape
def reduction_span(hidden: int, head_dim: int, block_h: int) -> int:
    """The most reduction indices one block of ``block_h`` of ``hidden`` units sums over when its heads are
    ``head_dim`` wide: the columns of the heads the block touches (``_head_span``)."""
    return max((min(j + block_h, hidden) - 1) // head_dim * head_dim + head_dim - j // head_dim * head_dim
               for j in range(0, hidden, block_h))


def _resident_width(plan: SequencePlan, hidden: int, width: int) -> int:
    """The KP constexpr: the reduction span of one block of units (``width``, the state, or with heads
    ``reduction_span``) padded to a power of two when ``plan`` keeps W_hh on chip, else 0 (streamed). A resident
    program owns one block of hidden units."""
    if not plan.resident:
        return 0
    if plan.columns(hidden) != plan.blocks.block_h:
        raise ValueError(f"a weight-stationary plan owns one block of units per program, not {plan.columns(hidden)}")
    return triton.next_power_of_2(width)


def _or_dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """A tensor argument, or ``like`` as a placeholder for an unused one (never read)."""
    return t if t is not None and t.numel() else like


def _contiguous(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """The tensors in the contiguous layouts the kernels address (no copy for those already so): the kernels
    take no strides, they derive them from the sizes, which spares the scalar registers (SGPRs on AMD) that
    two dozen stride arguments held through the time loop."""
    return [t if t is None else t.contiguous() for t in tensors]


def _launches(plan: SequencePlan, directions: int, reverse: bool) -> list[tuple[slice, bool]]:
    """(directions, REVERSE) of each launch: all directions in one launch when the plan says so, else one
    direction a launch (direction 1 of a bidirectional layer in reverse)."""
    if plan.directions == directions:
        return [(slice(0, directions), reverse)]
    return [(slice(d, d + 1), reverse or d == 1) for d in range(directions)]


def _part(t: torch.Tensor | None, d: slice, width: int = 0) -> torch.Tensor | None:
    """Directions ``d`` of ``t``: its leading axis, or with ``width`` its last axis in blocks of ``width``
    (xp, y and dy hold the directions side by side, as torch.nn's bidirectional output)."""
    if t is None or not t.numel():
        return t
    return t[..., d.start * width : d.stop * width] if width else t[d]


def layer_sizes(w_hh: torch.Tensor, w_hr: torch.Tensor | None, cell: int) -> tuple[int, int, int, int, int]:
    """(D, G, H, R, HD) of a layer from its weights: directions, gate rows G = gates x H, hidden units, the
    width of h (the projection size with w_hr, else H) and the head width (HD < H: W_hh (D, G, HD) holds the
    (HD x HD) blocks of a block-diagonal W_hh; else R, one head)."""
    D, G, K = w_hh.shape
    if w_hr is not None:
        return D, G, w_hr.shape[2], K, K
    H = G // GATES[cell]
    if H % K:
        raise ValueError(f"W_hh of {G} rows and {K} columns: the head width {K} must divide the {H} hidden units")
    return D, G, H, H, K


def _zoneout(keep: torch.Tensor | None, cell: int, w_hr: torch.Tensor | None) -> int:
    """The ZONEOUT constexpr: 0 without zoneout, 1 with per-element keep factors (training masks), 2 with one
    factor (eval)."""
    if keep is None:
        return 0
    if w_hr is not None or cell == SLSTM:
        raise ValueError("zoneout is for the LSTM (without a projection), GRU and RNN cells")
    return 2 if keep.numel() == 1 else 1


def _check_ln(ln: torch.Tensor | None, cell: int, w_hr: torch.Tensor | None, heads: bool) -> bool:
    """Whether the layer normalises its recurrent products (haste's LayerNorm LSTM and GRU): ``ln`` given, for
    an LSTM or GRU without a projection or heads."""
    if ln is None:
        return False
    if cell not in (LSTM, GRU) or w_hr is not None or heads:
        raise ValueError("layer normalisation is for the LSTM and GRU cells without a projection or heads")
    return True


def _norm_buffers(ln: bool, like: torch.Tensor, dirs: int, steps: int, batch: int, hidden: int,
                  block_h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """With layer normalisation, the saved products and statistics (D, steps, B, 4H + 4) and the partials'
    scratch (D, B, 2, NB, 2) in ``like``'s dtype; else empty tensors."""
    if not ln:
        return like.new_empty(0), like.new_empty(0)
    blocks = triton.cdiv(hidden, block_h)
    return new_output(like, (dirs, steps, batch, 4 * hidden + 4)), like.new_zeros(dirs, batch, 2, blocks, 2)


def _keep_part(keep: torch.Tensor | None, d: slice, hidden: int, like: torch.Tensor) -> torch.Tensor:
    """Directions ``d`` of the zoneout keep factors (one factor: the same for every direction)."""
    if keep is None:
        return like
    return keep if keep.numel() == 1 else _part(keep, d, hidden)


def sequence_forward(xp, w_hh, b_hn, w_hr, h0, c0, lengths, cell: int, reverse: bool, save: bool, plan: SequencePlan,
                     keep: torch.Tensor | None = None, ln: torch.Tensor | None = None):
    """One layer over the whole sequence in D directions (1, or 2: a bidirectional layer, direction 1 in
    reverse), covered as ``plan`` says (both directions in one launch when ``plan.directions`` is 2).

    xp (T, B, D*G) input projection with biases folded, directions side by side; w_hh (D, G, R), or with heads
    (D, G, HD) (``layer_sizes``); b_hn (D, H) or None (GRU); w_hr (D, R, H) or None (LSTM projection; R = H
    without it); h0 (D, B, R) and c0 (D, B, S*H), the owned states (LSTM c; sLSTM c, n, m side by side);
    lengths (B,) int64. Returns y (T, B, D*R), h_n (D, B, R), c_n (D, B, S*H), the saved gates (D, T, B, 4H)
    and owned states of every step (D, T, B, S*H) when ``save`` (what backward reads), and the pre-projection
    outputs m (D, T, B, H); unused ones are empty. ``keep``: zoneout's keep-the-new-h factors, (T, B, D*H)
    training masks or a (1,) eval factor 1 - p (None: no zoneout): h = h_prev + keep (h_cell - h_prev).
    ``ln`` (D, G + 2H) (GRU: (D, G)): haste's layer normalisation, the gains of the recurrent products and (LSTM)
    c's gain and bias; then also returned: each step's raw products and row statistics (D, T, B, 4H + 4) when
    ``save`` (what backward reads; else empty).
    """
    xp, w_hh, b_hn, w_hr, keep, ln = _contiguous(xp, w_hh, b_hn, w_hr, keep, ln)
    zoneout = _zoneout(keep, cell, w_hr)
    D, G, H, R, HD = layer_sizes(w_hh, w_hr, cell)
    norm = _check_ln(ln, cell, w_hr, HD < R)
    T, B, _ = xp.shape
    acc = _compute_dtype(xp.dtype)
    y = new_output(xp, (T, B, D * R))
    hbuf = new_output(xp, (D, 2, B, R))  # the broadcast h, in the dtype the products consume it in
    hbuf[:, 0].copy_(h0)
    owned = OWNED[cell]
    state = xp.new_empty(0, dtype=acc)
    own = h0 if cell == GRU else c0  # states each program keeps for its own units
    cbuf = new_output(state, (D, B, owned * H)).copy_(own) if owned else state
    # FlashRNN's sLSTM starts with m = pre_i when the initial normaliser is zero everywhere (on the device: no sync)
    zero_n = (cbuf[..., H : 2 * H] == 0).all().to(torch.int32).reshape(1) if cell == SLSTM else lengths
    saved = SAVED[cell] or (1 if zoneout else 0)  # an RNN with zoneout saves its cell's h
    save = save and saved > 0
    ws = new_output(state, (D, T, B, saved * H) if save else (0,))
    cs = new_output(state, (D, T, B, owned * H) if save and cell != GRU else (0,))
    ms = new_output(xp, (D, T, B, H) if w_hr is not None else (0,))
    ns, part = _norm_buffers(norm, state, D, T if save else 1, B, H, plan.blocks.block_h)
    phases = [FWD_CELL.value, FWD_PROJ.value] if w_hr is not None else [FWD_CELL.value]
    if norm:
        phases = [FWD_NORM.value, FWD_CELL.value] + ([FWD_OUT.value] if cell == LSTM else [])
    span = reduction_span(H, HD, plan.blocks.block_h) if HD < R else R
    for d, rev in _launches(plan, D, reverse):
        meta = _meta(cell, rev, xp.dtype, plan)
        meta.update(DIRS=D, HAS_BHN=b_hn is not None, HAS_PROJ=w_hr is not None, HEADS=HD < R, ZONEOUT=zoneout,
                    LN=norm, SAVE=save, KP=_resident_width(plan, H, span),
                    GATES_P2=triton.next_power_of_2(GATES[cell]))
        head = (
            _part(xp, d, G), _part(w_hh, d), _or_dummy(_part(b_hn, d), xp), _or_dummy(_part(w_hr, d), xp), lengths,
            zero_n, _keep_part(keep, d, H, xp), _part(y, d, R), _part(hbuf, d), _or_dummy(_part(cbuf, d), xp), _or_dummy(_part(ws, d), xp),
            _or_dummy(_part(cs, d), xp), _or_dummy(_part(ms, d), xp), _or_dummy(_part(ln, d), xp),
            _or_dummy(_part(ns, d), xp), _or_dummy(_part(part, d), xp),
        )
        tail = (T, B, H, R, plan.columns(H), plan.columns(R), plan.slices, HD, plan.meeting)
        _run_steps(sequence_fwd_kernel, plan, B, T, phases, head, tail, meta, xp.device)
    h_n = hbuf[:, T % 2].clone()
    c_n = cbuf.to(xp.dtype) if cell in (LSTM, SLSTM) else xp.new_empty(0)
    return y, h_n, c_n, ws, cs, ms, (ns if save else state)


def sequence_backward(dy, dh_n, dc_n, w_hh, w_hr, h0, c0, lengths, y, ws, cs, cell: int, reverse: bool,
                      plan: SequencePlan, dcs: torch.Tensor | None = None, keep: torch.Tensor | None = None,
                      ln: torch.Tensor | None = None, ns: torch.Tensor | None = None):
    """Reverse-time pass of one layer in D directions, covered as ``plan`` says (as ``sequence_forward``).

    Gradients dy (T, B, D*R), dh_n (D, B, R) and dc_n (D, B, C*H), the carried owned states' (LSTM c; sLSTM
    c, n side by side; None for GRU and RNN), optionally dcs (D, T, B, C*H), the gradients of those states at
    every step (None: zero), and the forward's tensors. Returns the gate gradients (D, T, B, GS) with GS = 4H
    (GRU: r, z, input-side n, hidden-side n) or H, zero past each length; dh0 (D, B, R) and dc0 (D, B, C*H)
    (empty for GRU and RNN) in the compute dtype; and with a projection the gradient of each step's h,
    (D, T, B, R), zero past each length (else empty). ``keep``: the forward's zoneout factors. ``ln`` and
    ``ns``: the layer normalisation's parameters and the forward's saved products and statistics; then also
    returned: the raw products' gradients and (LSTM) those of LN(c), (D, T, B, 4H (+ H)) (else empty).
    """
    dy, w_hh, w_hr, h0, c0, y, ws, cs, dcs, keep, ln, ns = _contiguous(dy, w_hh, w_hr, h0, c0, y, ws, cs, dcs,
                                                                       keep, ln, ns)
    zoneout = _zoneout(keep, cell, w_hr)
    D, G, H, R, HD = layer_sizes(w_hh, w_hr, cell)
    norm = _check_ln(ln, cell, w_hr, HD < R)
    T, B, _ = y.shape
    gs = (4 if G > H else 1) * H
    acc = _compute_dtype(y.dtype)
    dg = new_output(y, (D, T, B, gs))
    dhs = new_output(y, (D, T, B, R) if w_hr is not None else (0,))
    dhbuf = new_output(y.new_empty(0, dtype=acc), (D, B, R)).copy_(dh_n)
    carried = CARRIED[cell]
    dcbuf = new_output(dhbuf, (D, B, carried * H)).copy_(dc_n) if carried else dhbuf.new_empty(0)
    phases = [BWD_GATES.value, BWD_CARRY.value]
    if w_hr is not None:
        phases.insert(0, BWD_PROJ.value)
    if norm:
        phases = ([BWD_NORM_C.value] if cell == LSTM else []) + [BWD_GATES.value, BWD_NORM_Q.value, BWD_CARRY.value]
    dnorm = new_output(dg, (D, T, B, (5 if cell == LSTM else 4) * H) if norm else (0,))
    _, part = _norm_buffers(norm, dhbuf, D, 0, B, H, plan.blocks.block_h)
    span = reduction_span(R, HD, plan.blocks.block_h) if HD < R else H
    for d, rev in _launches(plan, D, reverse):
        meta = _meta(cell, rev, y.dtype, plan)
        kp = _resident_width(plan, H, span)
        if norm and cell == LSTM and (kp > LN_LSTM_BACKWARD_KP or zoneout):  # it would spill: stream W_hh
            kp = 0
        meta.update(DIRS=D, HAS_PROJ=w_hr is not None, HEADS=HD < R, ZONEOUT=zoneout, LN=norm,
                    STATE_GRADS=dcs is not None, KP=kp)
        head = (
            _part(dy, d, R), _or_dummy(_part(dcs, d), y), _keep_part(keep, d, H, y), _part(w_hh, d), _or_dummy(_part(w_hr, d), y),
            _or_dummy(_part(h0, d), y), _or_dummy(_part(c0, d), y), lengths, _part(y, d, R),
            _or_dummy(_part(ws, d), y), _or_dummy(_part(cs, d), y), _part(dg, d), _or_dummy(_part(dhs, d), y),
            _part(dhbuf, d), _or_dummy(_part(dcbuf, d), y), _or_dummy(_part(ln, d), y), _or_dummy(_part(ns, d), y),
            _or_dummy(_part(dnorm, d), y), _or_dummy(_part(part, d), y),
        )
        tail = (T, B, H, R, plan.columns(H), plan.columns(R), plan.slices, HD, plan.meeting)
        _run_steps(sequence_bwd_kernel, plan, B, T, phases, head, tail, meta, y.device)
    return dg, dhbuf, dcbuf, dhs, dnorm
