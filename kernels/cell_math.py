"""Each cell's forward and backward math, written once as Triton device functions.

Every kernel in this package (the step kernels of the cells and the sequence
kernels of the layers) calls these functions; none re-types a gate formula.
Arguments are register blocks already upcast to the compute dtype (fp32 for
fp16/bf16/fp32 storage, fp64 for fp64). Pre-activations include the biases.
The equations are PyTorch's, written out in docs/cells.md.
"""

import triton
import triton.language as tl


@triton.jit
def tanh(x):
    """tanh to within a few ulp over the whole range (libdevice's is unavailable in Triton's interpreter).

    Above |x| = 0.55: (1 - e) / (1 + e) with e = exp(-2|x|), which never
    overflows and loses at most about one ulp to the cancellation in 1 - e
    there (e <= 1/3). Below: x + x^3 q(x^2), with q a polynomial fitted to
    tanh's relative error on [0, 0.55] (least squares on Chebyshev nodes in
    60-digit arithmetic): degree 4 in fp32, 9 in fp64, each under one ulp of
    fit error. Measured errors are in docs/cells.md.
    """
    ax = tl.abs(x)
    x2 = x * x
    if x.dtype == tl.float64:
        q = 5.10220103766671989352e-5
        q = q * x2 - 2.10301667845985149415e-4
        q = q * x2 + 5.79135361420447124559e-4
        q = q * x2 - 1.45321565417945151514e-3
        q = q * x2 + 3.59171932292871699070e-3
        q = q * x2 - 8.86319443093244004968e-3
        q = q * x2 + 2.18694859664031238467e-2
        q = q * x2 - 5.39682538755334703571e-2
        q = q * x2 + 1.33333333331669194350e-1
        q = q * x2 - 3.33333333333322916777e-1
    else:
        q = -6.27260751419738543081e-3
        q = q * x2 + 2.10702535597875155547e-2
        q = q * x2 - 5.38518654002443433209e-2
        q = q * x2 + 1.33325803776866687500e-1
        q = q * x2 - 3.33333173056474814725e-1
    small = x + x * (x2 * q)
    e = tl.exp(-2.0 * ax)
    # 1 - 2e / (1 + e) rounds once near 1, where (1 - e) / (1 + e) rounds three times: a saturated unit's gate
    # gradient dh * (1 - t^2) turns t's absolute error into a relative one (tests/kernels/test_cell_math.py).
    t = 1.0 - 2.0 * e / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    return tl.where(ax < 0.55, small, t)


@triton.jit
def sigmoid(x):
    """Logistic function; exp(-x) overflowing to inf gives exactly 0."""
    return 1.0 / (1.0 + tl.exp(-x))


# ----------------------------------------------------------------------------
# LSTM, gate order i, f, g, o
# ----------------------------------------------------------------------------
@triton.jit
def lstm_state(pre_i, pre_f, pre_g, pre_o, c_prev):
    """The new cell state and the activated gates of one LSTM step: (c, i, f, g, o)."""
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    c = f * c_prev + i * g
    return c, i, f, g, o


@triton.jit
def lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev):
    """One LSTM step from gate pre-activations.

    Returns (h, c, i, f, g, o): the new hidden state o * tanh(c) (before any
    projection), the new cell state and the activated gates.
    """
    c, i, f, g, o = lstm_state(pre_i, pre_f, pre_g, pre_o, c_prev)
    return o * tanh(c), c, i, f, g, o


@triton.jit
def lstm_output(pre_o, u):
    """h = sigmoid(pre_o) * tanh(u): the LSTM's output from the pre-activation of o and u = c, or with layer
    normalisation LN(c), computed after c's row statistics."""
    return sigmoid(pre_o) * tanh(u)


@triton.jit
def lstm_output_backward(dh, o, tc):
    """Gradients of h = o * tanh(u) from dh, with tc = tanh(u): of o's pre-activation and of u (u is c, or with
    layer normalisation the normalised c)."""
    return dh * tc * o * (1.0 - o), dh * o * (1.0 - tc * tc)


@triton.jit
def lstm_state_backward(dc_total, c_prev, i, f, g):
    """Gradients of c = f * c_prev + i * g from dc_total, the whole gradient reaching c: of the pre-activations
    of i, f and g, and of c_prev."""
    d_i = dc_total * g * i * (1.0 - i)
    d_f = dc_total * c_prev * f * (1.0 - f)
    d_g = dc_total * i * (1.0 - g * g)
    return d_i, d_f, d_g, dc_total * f


@triton.jit
def lstm_backward(dh, dc, c_prev, c, i, f, g, o):
    """Gradients of one LSTM step from its activated gates.

    dh, dc: gradients reaching h = o * tanh(c) and c. Returns the gradients of
    the four gate pre-activations and of c_prev.
    """
    d_o, d_c = lstm_output_backward(dh, o, tanh(c))
    d_i, d_f, d_g, dc_prev = lstm_state_backward(d_c + dc, c_prev, i, f, g)
    return d_i, d_f, d_g, d_o, dc_prev


# ----------------------------------------------------------------------------
# Layer normalisation (haste's LayerNorm LSTM and GRU), given a row's statistics
# ----------------------------------------------------------------------------
@triton.jit
def layer_norm(x, mean, rstd, gain, bias):
    """(x - mean) * rstd * gain + bias, rstd = 1 / sqrt(var + eps) of x's row (the biased variance)."""
    return (x - mean) * rstd * gain + bias


@triton.jit
def layer_norm_backward(dx_hat, x_hat, rstd, mean_dx_hat, mean_dx_hat_x_hat):
    """Gradient of x from dx_hat, the gradient of the normalised x_hat = (x - mean) * rstd (the output's gradient
    times the gain), and the row means of dx_hat and of dx_hat * x_hat."""
    return rstd * (dx_hat - mean_dx_hat - x_hat * mean_dx_hat_x_hat)


# ----------------------------------------------------------------------------
# GRU, gate order r, z, n
# ----------------------------------------------------------------------------
@triton.jit
def gru_forward(x_r, x_z, x_n, h_r, h_z, h_n, h_prev):
    """One GRU step.

    x_*: input-side pre-activations (W_i* x + b_i*); h_*: hidden-side ones
    (W_h* h + b_h*). Returns (h, r, z, n). The reset gate scales the whole
    hidden-side n term, bias included, as in PyTorch.
    """
    r = sigmoid(x_r + h_r)
    z = sigmoid(x_z + h_z)
    n = tanh(x_n + r * h_n)
    h = n + z * (h_prev - n)
    return h, r, z, n


@triton.jit
def gru_backward(dh, h_prev, r, z, n, h_n):
    """Gradients of one GRU step.

    Returns (d_r, d_z, d_xn, d_hn, dh_prev_direct): the pre-activation
    gradients of r and z (shared by both sides), of the input-side n term and
    of the hidden-side n term (d_xn * r), and the part of dh_prev that does not
    pass through W_hh (dh * z).
    """
    d_xn = dh * (1.0 - z) * (1.0 - n * n)
    d_z = dh * (h_prev - n) * z * (1.0 - z)
    d_r = d_xn * h_n * r * (1.0 - r)
    d_hn = d_xn * r
    return d_r, d_z, d_xn, d_hn, dh * z


# ----------------------------------------------------------------------------
# Vanilla RNN, tanh or relu
# ----------------------------------------------------------------------------
@triton.jit
def rnn_forward(pre, RELU: tl.constexpr):
    """h = relu(pre) or tanh(pre); relu keeps NaN, as torch's does."""
    if RELU:
        return tl.maximum(pre, 0.0, propagate_nan=tl.PropagateNan.ALL)
    else:
        return tanh(pre)


@triton.jit
def rnn_backward(dh, h, RELU: tl.constexpr):
    """Pre-activation gradient from the output h (relu: 0 where h <= 0, else dh, so NaN passes as in torch)."""
    if RELU:
        return tl.where(h <= 0.0, 0.0, dh)
    else:
        return dh * (1.0 - h * h)


# ----------------------------------------------------------------------------
# sLSTM (xLSTM's scalar-memory cell), gate order i, f, z, o, as FlashRNN computes it
# ----------------------------------------------------------------------------
@triton.jit
def log_sigmoid(x):
    """log(sigmoid(x)) = min(x, 0) - log1p(exp(-|x|)), never overflowing; log1p(e) as log(u) * e / (u - 1) with
    u = 1 + e (exact where u rounds to 1: then e itself), so the result keeps its relative accuracy for large x."""
    e = tl.exp(-tl.abs(x))
    u = 1.0 + e
    exact = u == 1.0
    log1p = tl.where(exact, e, tl.log(u) * (e / tl.where(exact, 1.0, u - 1.0)))
    return tl.minimum(x, 0.0) - log1p


@triton.jit
def slstm_forward(pre_i, pre_f, pre_z, pre_o, c_prev, n_prev, m_prev, first_zero):
    """One sLSTM step from gate pre-activations (FlashRNN's ``slstm`` pointwise function).

    The stabiliser m keeps every exponent <= 0: m = max(pre_i, log sigmoid(pre_f) + m_prev), or pre_i where
    ``first_zero`` (the first step of a launch whose initial normaliser n is zero everywhere, FlashRNN's
    ``torch.all(n == 0)``). The normaliser is clamped at 1, as FlashRNN does. Returns (h, c, n, m, z, o) with
    z = tanh(pre_z) and o = sigmoid(pre_o).
    """
    log_f_m = log_sigmoid(pre_f) + m_prev
    m = tl.where(first_zero, pre_i, tl.maximum(pre_i, log_f_m))
    i = tl.exp(pre_i - m)
    f = tl.exp(log_f_m - m)
    z = tanh(pre_z)
    o = sigmoid(pre_o)
    c = f * c_prev + i * z
    n = tl.maximum(f * n_prev + i, 1.0)
    h = o * (c / n)
    return h, c, n, m, z, o


@triton.jit
def slstm_backward(dh, dc, dn, pre_i, pre_f, z, o, c, n, m, c_prev, n_prev, m_prev):
    """Gradients of one sLSTM step, as FlashRNN's hand-written backward (``vanilla_fwbw``, which its CUDA and
    Triton kernels follow): the stabiliser m is a constant (no gradient through it) and the clamp of n is not
    differentiated. dh, dc, dn: gradients reaching h, c and n. Returns the gradients of the four gate
    pre-activations and of c_prev and n_prev.
    """
    dc_total = dc + dh * (o / n)
    dn_total = dn - dh * (o / (n * n)) * c
    f = tl.exp(m_prev + log_sigmoid(pre_f) - m)
    i = tl.exp(pre_i - m)
    d_o = dh * (c / n) * o * (1.0 - o)
    d_f = (dc_total * c_prev + dn_total * n_prev) * f * sigmoid(-pre_f)
    d_i = (dc_total * z + dn_total) * i
    d_z = dc_total * i * (1.0 - z * z)
    return d_i, d_f, d_z, d_o, dc_total * f, dn_total * f
