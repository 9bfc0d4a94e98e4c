"""The device functions of the sequence kernels (``sequence_kernels``): a program's rows and columns, the
barrier, the recurrent product over a block of units (resident or streamed, one head or several), the gates side
by side, the states a program owns, and zoneout's factors. Addresses are int64, derived from sizes: the tensors
are contiguous (the launchers see to it).
"""

import triton
import triton.language as tl

from .cell_math import layer_norm, tanh

# Added to a barrier's counter when a wait gives up: every later wait of the launch passes at once and the
# launcher reports the stall.
BROKEN = tl.constexpr(1 << 30)


@triton.jit
def _program_rows(lengths, B, REVERSE: tl.constexpr, BLOCK_B: tl.constexpr):
    """This program's direction d (int64; grid axis 0 runs over the batch tiles of direction 0, then of
    direction 1), whether it runs in reverse (direction 1 of a bidirectional launch, or REVERSE), its batch
    rows (int64), their mask, their lengths and a zero per row (a time index of 0)."""
    tiles = tl.cdiv(B, BLOCK_B)
    d = tl.program_id(0) // tiles
    rows = (tl.program_id(0) - d * tiles).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    lens = tl.load(lengths + rows, mask=rmask, other=0)
    return d.to(tl.int64), d != REVERSE, rows, rmask, lens, tl.zeros_like(lens)


@triton.jit
def _program_columns(width, SLICE):
    """The columns [lo, hi) of a ``width``-wide state that this program's hidden slice owns."""
    lo = tl.program_id(1) * SLICE
    return lo, tl.minimum(lo + SLICE, width)


@triton.jit
def _slices_barrier(sync, arrivals, BARRIER: tl.constexpr, SPIN_LIMIT: tl.constexpr):
    """Wait until the programs of this batch tile have all finished the phase: ``sync`` reaches ``arrivals``.

    Every thread's stores come first (``tl.debug_barrier``, a CTA barrier); one
    release atomic add at GPU scope (PTX ``red.release.gpu``; release is
    cumulative, so it publishes the stores the CTA barrier ordered before it)
    counts the arrival; the wait spins on acquire reads of the counter (Triton
    lowers an atomic add of 0 to ``ld.acquire.gpu``, which also invalidates the
    SM's L1, so the state read next is never a stale line); a CTA barrier then
    lets every thread read. A wait that spins ``SPIN_LIMIT`` times gives up and adds
    BROKEN to the counter, so the rest of the launch passes through and the
    launcher raises. Without BARRIER only the program's own threads synchronise.
    """
    tl.debug_barrier()
    if BARRIER:
        tl.atomic_add(sync, 1, sem="release", scope="gpu")
        seen = tl.atomic_add(sync, 0, sem="acquire", scope="gpu")
        spins = 0
        while (seen < arrivals) & (spins < SPIN_LIMIT):
            seen = tl.atomic_add(sync, 0, sem="acquire", scope="gpu")
            spins += 1
        if seen < arrivals:
            tl.atomic_add(sync, BROKEN, sem="relaxed", scope="gpu")
        tl.debug_barrier()


@triton.jit
def _step_rows(s, lengths, reverse):
    """Time index of each row at step s and whether the row is active (s < its length); ``reverse``: whether the
    program runs backwards in time.

    Inactive rows point at time s, a padding position, where they write zeros.
    """
    active = s < lengths
    t = tl.where(active & reverse, lengths - 1 - s, tl.zeros_like(lengths) + s)
    return t, active


@triton.jit
def _head_span(j, H, HD, K, HEADS: tl.constexpr, BLOCK_H: tl.constexpr):
    """[k_lo, k_hi): the reduction indices the units [j, j + BLOCK_H) of H sum over: the columns of their heads
    (HEADS: the recurrent matrix is block-diagonal, heads HD units wide), else all K."""
    if HEADS:
        last = tl.minimum(j + BLOCK_H, H) - 1
        return (j // HD) * HD, (last // HD + 1) * HD
    else:
        return 0, K


@triton.jit
def _w_block(w, w_rows, s_wr, s_wk, w_real, w_head, HD, ks, k_hi, HEADS: tl.constexpr):
    """Pointers and mask of the block W[ks, n] of a recurrent matrix, n over the block's columns: W[k, n] at
    w + w_rows[n] * s_wr + k * s_wk, real where ``w_real`` and k < k_hi.

    HEADS: the matrix is stored compact, one (HD x HD) block per head and gate (rows g * H + unit, columns the
    previous state's units within the head, stride 1), so column n reads only the k of its head
    [w_head[n], w_head[n] + HD), shifted by the head's first unit ``w_head`` (int64)."""
    ptrs = w + w_rows[None, :] * s_wr + ks[:, None] * s_wk
    mask = (ks < k_hi)[:, None] & w_real[None, :]
    if HEADS:
        ptrs -= w_head[None, :]
        mask &= (ks[:, None] >= w_head[None, :]) & (ks[:, None] < w_head[None, :] + HD)
    return ptrs, mask


@triton.jit
def _resident_tile(w, k_lo, k_hi, s_wr, s_wk, w_rows, w_real, w_head, HD, HEADS: tl.constexpr, KP: tl.constexpr):
    """The (KP, N) block W[k_lo + k, n] (``_w_block``, zero past k_hi and the real columns): a program's rows of
    the recurrent matrix, loaded before the time loop and kept on chip (KP > 0); 0 when KP is 0 (streamed)."""
    if KP > 0:
        ks = k_lo + tl.arange(0, KP).to(tl.int64)
        ptrs, mask = _w_block(w, w_rows, s_wr, s_wk, w_real, w_head, HD, ks, k_hi, HEADS)
        return tl.load(ptrs, mask=mask, other=0.0)
    else:
        return 0


@triton.jit
def _matmul_block(acc, a, a_rows, a_width, a_col0, rmask, k_lo, k_hi, w, s_wr, s_wk, w_rows, w_real, w_head, HD,
                  w_res, KP: tl.constexpr, HEADS: tl.constexpr,
                  ACC: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc + the (BLOCK_B, BLOCK_N) block of sum over k in [k_lo, k_hi) of A[a_rows, a_col0 + k] W[k, n].

    A is contiguous with rows ``a_width`` wide and ``a_rows`` the int64 row
    index of each of the block's rows (as ``_at``); W is addressed by
    ``_w_block`` (``w_rows``: the int64 row of W that makes each column, real
    where ``w_real``; with HEADS each column sums over its own head only).

    With KP > 0 the block of W is ``w_res``, the (KP, BLOCK_N) tile
    ``_resident_tile`` loaded before the time loop from the same k_lo, and one
    product over the whole reduction reads only A. With KP = 0 W is streamed
    by (BLOCK_K x BLOCK_N) blocks (the same code multiplies by W_hh^T forward
    or, with the strides swapped, by W_hh backward).
    """
    if KP > 0:
        ks = k_lo + tl.arange(0, KP).to(tl.int64)
        # A: state other programs wrote, read after the barrier's acquire (see below for ".cg").
        x = tl.load(a + a_rows[:, None] * a_width + (a_col0 + ks)[None, :],
                    mask=rmask[:, None] & (ks < k_hi)[None, :], other=0.0, cache_modifier=".cg")
        x = x.to(w_res.dtype)
        wt = w_res
        if DOT_FP32:  # Triton's interpreter gets bf16 tl.dot wrong: multiply in fp32 there.
            x = x.to(tl.float32)
            wt = wt.to(tl.float32)
        acc = tl.dot(x, wt, acc, input_precision=DOT_PREC, out_dtype=ACC)
    else:
        for k0 in range(k_lo, k_hi, BLOCK_K):
            # int64: in backward k counts rows of W (up to 4H) times its row stride.
            ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            # A is state other programs of the tile wrote. It is read after the barrier's acquire at GPU scope, which
            # invalidates this SM's L1 (NVIDIA; AMD likewise), so no stale line is served; ".cg" (L2 only) marks it
            # where the load stays a load (the pipeliner turns it into cp.async, which has no 4-byte L2-only form).
            x = tl.load(a + a_rows[:, None] * a_width + (a_col0 + ks)[None, :],
                        mask=rmask[:, None] & (ks < k_hi)[None, :], other=0.0, cache_modifier=".cg")
            ptrs, mask = _w_block(w, w_rows, s_wr, s_wk, w_real, w_head, HD, ks, k_hi, HEADS)
            wt = tl.load(ptrs, mask=mask, other=0.0)
            x = x.to(wt.dtype)  # a state kept in fp32 enters the product in the weights' dtype
            if DOT_FP32:  # Triton's interpreter gets bf16 tl.dot wrong: multiply in fp32 there.
                x = x.to(tl.float32)
                wt = wt.to(tl.float32)
            acc = tl.dot(x, wt, acc, input_precision=DOT_PREC, out_dtype=ACC)  # Triton 3.6 wants out_dtype for fp64
    return acc


@triton.jit
def _gate_rows(j, H, HD, CELL: tl.constexpr, GATES_P2: tl.constexpr, BLOCK_H: tl.constexpr):
    """The rows of W_hh (G, .) for the units [j, j + BLOCK_H), every gate side by side: column n of a gate
    product is gate n % GATES_P2 of unit j + n // GATES_P2. Returns the rows (int64), whether each is real
    (past H, and the GRU's padding fourth gate, are not) and the first unit of each column's head (int64;
    heads HD units wide).

    Side by side, the gates make one product N = BLOCK_H * GATES_P2 wide, which Triton spreads over the warps
    (N = 16 per gate would leave most warps holding copies of the same W)."""
    n = tl.arange(0, BLOCK_H * GATES_P2)
    unit, gate = j + n // GATES_P2, n % GATES_P2
    unit = unit.to(tl.int64)
    return gate.to(tl.int64) * H + unit, (unit < H) & ((gate < 3) | (CELL != 1)), (unit // HD) * HD


@triton.jit
def _gate_products(h_cur, rows, rmask, w, w_gates, j, H, R, HD,
                   CELL: tl.constexpr, GATES_P2: tl.constexpr, KP: tl.constexpr, HEADS: tl.constexpr,
                   ACC: tl.constexpr, DOT_FP32: tl.constexpr, DOT_PREC: tl.constexpr,
                   BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    """The recurrent part h_{t-1} W_hh^T of each gate for the units [j, j + BLOCK_H): one product over the gates
    side by side (``_gate_rows``; resident: the tile loaded before the time loop), over the units' heads (all of
    h with one head), split into four (BLOCK_B, BLOCK_H) blocks (the cell's gates in order; the rest unused)."""
    w_rows, real, w_head = _gate_rows(j, H, HD, CELL, GATES_P2, BLOCK_H)
    k_lo, k_hi = _head_span(j, H, HD, R, HEADS, BLOCK_H)
    both = _matmul_block(tl.zeros((BLOCK_B, BLOCK_H * GATES_P2), ACC), h_cur, rows, R, 0, rmask, k_lo, k_hi,
                         w, HD, 1, w_rows, real, w_head, HD, w_gates, KP, HEADS,
                         ACC, DOT_FP32, DOT_PREC, BLOCK_B, BLOCK_H * GATES_P2, BLOCK_K)
    if GATES_P2 == 1:
        q0, q1, q2, q3 = both, both, both, both
    else:
        q0, q1, q2, q3 = _split_gates(tl.reshape(both, (BLOCK_B, BLOCK_H, 4)), BLOCK_B, BLOCK_H)
    return q0, q1, q2, q3


@triton.jit
def _at(ptr, index, width, col0, cols):
    """Pointers of a (BLOCK_B, BLOCK_H) block of a contiguous tensor whose rows are ``width`` wide: row index[i]
    (int64: ``rows`` of a (B, width) state, ``t * B + rows`` of a (T, B, width) sequence), columns col0 + cols."""
    return ptr + index[:, None] * width + (col0 + cols)[None, :]


@triton.jit
def _own_tile(buf, rows, rmask, width, col0, lo, n, KEEP: tl.constexpr, ACC: tl.constexpr, BLOCK_H: tl.constexpr):
    """Units [lo, lo + BLOCK_H) (of n) of a state only this program reads and writes, at columns col0 + unit of
    a contiguous (B, width) buffer, loaded once per launch to be carried in registers across its steps (KEEP);
    0 otherwise."""
    if KEEP:
        cols = tl.arange(0, BLOCK_H).to(tl.int64)
        return tl.load(_at(buf, rows, width, col0 + lo, cols), mask=rmask[:, None] & ((lo + cols) < n)[None, :],
                       other=0.0).to(ACC)
    else:
        return 0


@triton.jit
def _put_own_tile(buf, rows, rmask, width, col0, lo, n, tile, KEEP: tl.constexpr, BLOCK_H: tl.constexpr):
    """Store the tile ``_own_tile`` loaded (and the steps updated) back at the end of the launch (KEEP)."""
    if KEEP:
        cols = tl.arange(0, BLOCK_H).to(tl.int64)
        tl.store(_at(buf, rows, width, col0 + lo, cols), tile, mask=rmask[:, None] & ((lo + cols) < n)[None, :])


@triton.jit
def _previous_h(h_cur, rows, R, j, cols, m, active, ZONEOUT: tl.constexpr, HAS_PROJ: tl.constexpr, ACC: tl.constexpr):
    """h_{t-1} of a block of units where the step needs it: every row with zoneout (it blends h_{t-1} in), else
    the inactive rows (they keep it; zeros elsewhere), none with a projection (its phase reads h itself)."""
    if ZONEOUT:
        return tl.load(_at(h_cur, rows, R, j, cols), mask=m, other=0.0).to(ACC)
    elif not HAS_PROJ:
        return tl.load(_at(h_cur, rows, R, j, cols), mask=m & ~active[:, None], other=0.0).to(ACC)
    else:
        return 0.0


@triton.jit
def _put_h(h_nxt, y, rows, tb, R, YW, j, cols, m, active, h, h_prev):
    """Store a block of the step's h: the next state (an inactive row keeps h_prev) and the output (zero for an
    inactive row, whose time index is padding)."""
    tl.store(_at(h_nxt, rows, R, j, cols), tl.where(active[:, None], h, h_prev), mask=m)
    tl.store(_at(y, tb, YW, j, cols), tl.where(active[:, None], h, 0.0), mask=m)


@triton.jit
def _put_stats(ns, index, width, col, mask, mean, rstd):
    """Store the rows' mean and rstd at columns col, col + 1 of rows ``index`` of a contiguous tensor."""
    tl.store(ns + index * width + col, mean, mask=mask)
    tl.store(ns + index * width + col + 1, rstd, mask=mask)


@triton.jit
def _keep_factor(keep, index, width, j, cols, mask, ZONEOUT: tl.constexpr, ACC: tl.constexpr):
    """Zoneout's keep-the-new-h factor of a (BLOCK_B, BLOCK_H) block: the training mask's entries at rows
    ``index`` of a (T*B, width) tensor (ZONEOUT 1; 0 where ``mask`` is off), or the one eval factor 1 - p
    (ZONEOUT 2)."""
    if ZONEOUT == 1:
        return tl.load(_at(keep, index, width, j, cols), mask=mask, other=0.0).to(ACC)
    else:
        return tl.load(keep).to(ACC)


@triton.jit
def _split_gates(x, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The four (BLOCK_B, BLOCK_H) gate blocks of a (BLOCK_B, BLOCK_H, 4) block whose last axis is the gate."""
    even, odd = tl.split(tl.reshape(x, (BLOCK_B, BLOCK_H, 2, 2)))  # gate 2 a + b: split b, then a
    q0, q2 = tl.split(even)
    q1, q3 = tl.split(odd)
    return q0, q1, q2, q3


@triton.jit
def _gate_pointers(ptr, index, width, H, j, cols):
    """Pointers of a (BLOCK_B, BLOCK_H, 4) block, gates as its last axis: gate g of unit j + col in the rows
    ``index`` of a tensor whose rows are ``width`` wide and hold gate g's units at columns g * H..."""
    g = tl.arange(0, 4).to(tl.int64)
    return ptr + index[:, None, None] * width + (g * H)[None, None, :] + (j + cols)[None, :, None]


@triton.jit
def _load_gates(ptr, index, width, H, j, cols, mask, GATES: tl.constexpr, ACC: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Gates 0..GATES-1 of a (BLOCK_B, BLOCK_H) block (``_gate_pointers``) in one load, as four blocks in ACC
    (zeros past GATES and where ``mask`` is off)."""
    g = tl.arange(0, 4)
    x = tl.load(_gate_pointers(ptr, index, width, H, j, cols), mask=mask[:, :, None] & (g < GATES)[None, None, :],
                other=0.0)
    return _split_gates(x.to(ACC), BLOCK_B, BLOCK_H)


@triton.jit
def _store_gates(ptr, index, width, H, j, cols, mask, q0, q1, q2, q3):
    """Store four gate blocks (``_gate_pointers``) in one store."""
    x = tl.join(tl.join(q0, q2), tl.join(q1, q3))  # [.., a, b] = gate 2 a + b
    tl.store(_gate_pointers(ptr, index, width, H, j, cols), tl.reshape(x, (q0.shape[0], q0.shape[1], 4)),
             mask=mask[:, :, None])


# ----------------------------------------------------------------------------
# Row statistics across a tile's slices (layer normalisation inside the time loop)
# ----------------------------------------------------------------------------
# haste's epsilon (and torch's F.layer_norm default), added to the biased variance.
LN_EPS = tl.constexpr(1e-5)
# Blocks of partials read at once when a row's statistics are combined.
PARTIALS_CHUNK = tl.constexpr(16)


@triton.jit
def _gains(ln, H, j, cols, NG: tl.constexpr, ACC: tl.constexpr):
    """Gate blocks 0..NG-1 of a per-unit vector (gate g of unit j + col at ln[g * H + j + col]) as four (1,
    BLOCK_H) rows in ACC (zeros past NG and past H): the layer normalisation's gains (or bias) of the units."""
    real = (j + cols) < H
    g0 = tl.load(ln + j + cols, mask=real, other=0.0).to(ACC)[None, :]
    g1 = tl.load(ln + H + j + cols, mask=real & (NG > 1), other=0.0).to(ACC)[None, :]
    g2 = tl.load(ln + 2 * H + j + cols, mask=real & (NG > 2), other=0.0).to(ACC)[None, :]
    g3 = tl.load(ln + 3 * H + j + cols, mask=real & (NG > 3), other=0.0).to(ACC)[None, :]
    return g0, g1, g2, g3


@triton.jit
def _block_moments(q0, q1, q2, q3, cmask, NG: tl.constexpr):
    """Per row, the sum and the sum of squared deviations from its own mean of gate blocks 0..NG-1 of a block of
    units, over the real units (``cmask``, (1, BLOCK_H)): a block's partial statistics (Chan's form, combined
    without cancellation by ``_row_moments``)."""
    s = tl.sum(tl.where(cmask, q0, 0.0), 1)
    if NG > 1:
        s += tl.sum(tl.where(cmask, q1, 0.0), 1)
    if NG > 2:
        s += tl.sum(tl.where(cmask, q2, 0.0), 1)
    if NG > 3:
        s += tl.sum(tl.where(cmask, q3, 0.0), 1)
    mean = (s / (NG * tl.sum(cmask.to(s.dtype), 1)))[:, None]
    m2 = tl.sum(tl.where(cmask, (q0 - mean) * (q0 - mean), 0.0), 1)
    if NG > 1:
        m2 += tl.sum(tl.where(cmask, (q1 - mean) * (q1 - mean), 0.0), 1)
    if NG > 2:
        m2 += tl.sum(tl.where(cmask, (q2 - mean) * (q2 - mean), 0.0), 1)
    if NG > 3:
        m2 += tl.sum(tl.where(cmask, (q3 - mean) * (q3 - mean), 0.0), 1)
    return s, m2


@triton.jit
def _put_partials(part, rows, rmask, NB, SET: tl.constexpr, block, a, b):
    """Store a block of units' two per-row partials (a, b) at part[row, SET, block, :] of a contiguous
    (B, 2, NB, 2) buffer (two sets, so one phase may write a set while the tile still reads the other)."""
    at = part + ((rows * 2 + SET) * NB + block) * 2
    tl.store(at, a, mask=rmask)
    tl.store(at + 1, b, mask=rmask)


@triton.jit
def _partials(part, rows, rmask, NB, SET: tl.constexpr, k0, ACC: tl.constexpr):
    """Blocks [k0, k0 + PARTIALS_CHUNK) of the rows' partials of set SET: (a, b, the blocks, their mask)."""
    blocks = k0 + tl.arange(0, PARTIALS_CHUNK)
    ok = rmask[:, None] & (blocks < NB)[None, :]
    at = part + ((rows[:, None] * 2 + SET) * NB + blocks[None, :]) * 2
    a = tl.load(at, mask=ok, other=0.0).to(ACC)
    b = tl.load(at + 1, mask=ok, other=0.0).to(ACC)
    return a, b, blocks, ok


@triton.jit
def _row_sums(part, rows, rmask, NB, SET: tl.constexpr, ACC: tl.constexpr):
    """The rows' sums of both partials of set SET over every block of units (NB blocks)."""
    sa = tl.zeros(rows.shape, ACC)
    sb = tl.zeros(rows.shape, ACC)
    for k0 in range(0, NB, PARTIALS_CHUNK):
        a, b, _, _ = _partials(part, rows, rmask, NB, SET, k0, ACC)
        sa += tl.sum(a, 1)
        sb += tl.sum(b, 1)
    return sa, sb


@triton.jit
def _row_moments(part, rows, rmask, NB, SET: tl.constexpr, NG: tl.constexpr, H, BLOCK_H: tl.constexpr,
                 ACC: tl.constexpr):
    """The mean and 1 / sqrt(biased variance + LN_EPS) of each row's NG x H values from the blocks' partials of
    set SET (``_block_moments``: sum, and squared deviations from the block's mean), combined as Chan et al.:
    M2 = sum of M2_b + n_b (mean_b - mean)^2, no cancellation between large sums."""
    total, _ = _row_sums(part, rows, rmask, NB, SET, ACC)
    mean = total / (NG * H)
    m2 = tl.zeros(rows.shape, ACC)
    for k0 in range(0, NB, PARTIALS_CHUNK):
        a, b, blocks, ok = _partials(part, rows, rmask, NB, SET, k0, ACC)
        count = (NG * tl.maximum(tl.minimum(BLOCK_H, H - blocks * BLOCK_H), 1)).to(ACC)[None, :]  # 1 past NB
        dev = a / count - mean[:, None]
        m2 += tl.sum(tl.where(ok, b + count * dev * dev, 0.0), 1)
    return mean, 1.0 / tl.sqrt(m2 / (NG * H) + LN_EPS)


@triton.jit
def _get_stats(ns, index, width, col, rmask, ACC: tl.constexpr):
    """The rows' mean and rstd stored by ``_put_stats`` at columns col, col + 1."""
    mean = tl.load(ns + index * width + col, mask=rmask, other=0.0).to(ACC)
    rstd = tl.load(ns + index * width + col + 1, mask=rmask, other=0.0).to(ACC)
    return mean, rstd


@triton.jit
def _normalised_products(ns, index, width, H, j, cols, m, mean, rstd, NG: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """The saved raw products of gate blocks 0..NG-1 of a block of units, normalised: (q - mean) * rstd."""
    q0, q1, q2, q3 = _load_gates(ns, index, width, H, j, cols, m, NG, ACC, BLOCK_B, BLOCK_H)
    mean, rstd = mean[:, None], rstd[:, None]
    return (q0 - mean) * rstd, (q1 - mean) * rstd, (q2 - mean) * rstd, (q3 - mean) * rstd


@triton.jit
def _normalised_c(c, j, cols, ln_c, H, mean, rstd, ACC: tl.constexpr):
    """A block of an LSTM's c normalised: returns c_hat = (c - mean) * rstd, tanh(c_hat * gain + bias) (h's tanh
    in haste's LayerNorm LSTM) and the gain, ``ln_c`` holding the gain of every unit, then its bias."""
    real = (j + cols) < H
    gain = tl.load(ln_c + j + cols, mask=real, other=0.0).to(ACC)[None, :]
    bias = tl.load(ln_c + H + j + cols, mask=real, other=0.0).to(ACC)[None, :]
    c_hat = (c - mean[:, None]) * rstd[:, None]
    return c_hat, tanh(layer_norm(c, mean[:, None], rstd[:, None], gain, bias)), gain


@triton.jit
def _carried_dh(dhbuf, own_dh, dy, rows, tb, R, YW, j, cols, m, am, KP: tl.constexpr, ACC: tl.constexpr):
    """A block's carried gradient of h (in registers when resident, else the owner-only buffer) and the whole
    gradient reaching this step's h: the carry plus dy."""
    if KP > 0:
        carry = own_dh
    else:
        carry = tl.load(_at(dhbuf, rows, R, j, cols), mask=m, other=0.0)
    return carry, carry + tl.load(_at(dy, tb, YW, j, cols), mask=am, other=0.0).to(ACC)
