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
    """tanh from one exp, stable for any |x|, with a series near zero.

    libdevice's tanh is not available in Triton's interpreter, so the project
    uses this single definition everywhere. (1 - e) / (1 + e) with
    e = exp(-2|x|) never overflows and is within about one ulp of 1 in
    absolute terms; near zero, where 1 - e cancels, the series
    x - x^3/3 + 2x^5/15 takes over (below 2^-6 in fp32, 2^-10 in fp64, where
    its truncation is under the dtype's rounding).
    """
    if x.dtype == tl.float64:
        small: tl.constexpr = 0.0009765625
    else:
        small: tl.constexpr = 0.015625
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0, -t, t)
    x2 = x * x
    series = x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0)))
    return tl.where(ax < small, series, t)


@triton.jit
def sigmoid(x):
    """Logistic function; exp(-x) overflowing to inf gives exactly 0."""
    return 1.0 / (1.0 + tl.exp(-x))


# ----------------------------------------------------------------------------
# LSTM, gate order i, f, g, o
# ----------------------------------------------------------------------------
@triton.jit
def lstm_forward(pre_i, pre_f, pre_g, pre_o, c_prev):
    """One LSTM step from gate pre-activations.

    Returns (h, c, i, f, g, o): the new hidden state o * tanh(c) (before any
    projection), the new cell state and the activated gates.
    """
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    c = f * c_prev + i * g
    h = o * tanh(c)
    return h, c, i, f, g, o


@triton.jit
def lstm_backward(dh, dc, c_prev, c, i, f, g, o):
    """Gradients of one LSTM step from its activated gates.

    dh, dc: gradients reaching h = o * tanh(c) and c. Returns the gradients of
    the four gate pre-activations and of c_prev.
    """
    tc = tanh(c)
    dc_total = dh * o * (1.0 - tc * tc) + dc
    d_i = dc_total * g * i * (1.0 - i)
    d_f = dc_total * c_prev * f * (1.0 - f)
    d_g = dc_total * i * (1.0 - g * g)
    d_o = dh * tc * o * (1.0 - o)
    dc_prev = dc_total * f
    return d_i, d_f, d_g, d_o, dc_prev


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
