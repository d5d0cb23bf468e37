"""The GPT's layers in NumPy: one forward/backward pair per layer, side by side (the llm.c way).

Conventions, so that every function reads the same way:
- Outputs come first, then what the forward saves for the backward, then inputs (as in llm.c).
- Activations are written through ``out=`` into buffers the caller allocated once: on this machine
  a fresh allocation per step costs more in page faults than the arithmetic it holds. Only the
  embedding's scatter-add and the loss's target gather make small temporaries.
- Shapes: B batch, T time, C channels, nh heads, hs = C // nh, V vocabulary. Row-wise layers take
  any leading shape; linear layers flatten it to N = B * T rows so one BLAS call does the matmul.
- Parameter gradients are written, not accumulated (the backend sums micro-batches); the exceptions
  say so. Activation gradients that join the residual stream are accumulated (``+=``).
- Scalars are Python floats: a NumPy float64 scalar would silently run a float32 op in float64.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from backends.base import QK_NORM_EPS

LN_EPS = 1e-5
GELU_K = math.sqrt(2.0 / math.pi)
GELU_A = 0.044715


def rows(x: np.ndarray) -> np.ndarray:
    """(..., D) -> (N, D) view. Only of a C-contiguous array: reshaping anything else copies, and an
    ``out=`` would then write into the copy."""
    if not x.flags.c_contiguous:
        raise ValueError("rows() needs a C-contiguous array")
    return x.reshape(-1, x.shape[-1])


@functools.cache
def _column(n: int, dtype: np.dtype, value: float) -> np.ndarray:
    column = np.full((n, 1), value, dtype)
    column.flags.writeable = False
    return column


def row_sum(out: np.ndarray, x: np.ndarray, scale: float = 1.0) -> None:
    """x (..., n) -> out (..., 1) = scale * sum over the last axis, as a matmul with a constant
    column: BLAS is several times faster than NumPy's reduction along a short contiguous axis."""
    np.matmul(rows(x), _column(x.shape[-1], x.dtype, scale), out=rows(out))


# ---------------------------------------------------------------- embedding: token + position


def embedding_forward(out: np.ndarray, idx: np.ndarray, wte: np.ndarray, positions: np.ndarray | None) -> None:
    """idx (B, T) ids, wte (V, C), positions (T, C) or None (rotary positions act inside attention)
    -> out (B, T, C)."""
    np.take(wte, idx, axis=0, out=out)
    if positions is not None:
        out += positions


def embedding_backward(dwte: np.ndarray, dwpe: np.ndarray | None, dout: np.ndarray, idx: np.ndarray) -> None:
    """dout (B, T, C) -> dwte (V, C) accumulated (a tied head wrote its part first); dwpe
    (block_size, C) written, or None for fixed sinusoids.

    A token seen k times gets the sum of its k rows. ``np.add.at`` does that scatter-add one row
    at a time; sorting the ids and summing runs of equal ids with ``reduceat`` is vectorised.
    """
    flat = idx.reshape(-1)
    order = np.argsort(flat, kind="stable")
    ids = flat[order]
    starts = np.flatnonzero(np.concatenate(([True], ids[1:] != ids[:-1])))
    dwte[ids[starts]] += np.add.reduceat(rows(dout)[order], starts, axis=0)
    if dwpe is not None:
        T = idx.shape[1]
        dout.sum(axis=0, out=dwpe[:T])
        dwpe[T:] = 0.0


# ---------------------------------------------------------------- bigram embedding: a table of token pairs


def bigram_forward(x: np.ndarray, pairs: np.ndarray, table: np.ndarray) -> None:
    """x (B, T, C) += the table's (V * V, C) rows for the (B, T - 1) pairs, at positions 1.."""
    x[:, 1:] += table[pairs]


def bigram_backward(dtable: np.ndarray, dx: np.ndarray, pairs: np.ndarray) -> None:
    """dx (B, T, C) -> dtable (V * V, C) written: each pair's row gets the sum of dx at its positions."""
    dtable.fill(0.0)
    if pairs.size:  # a window of one token has no pair
        embedding_backward(dtable, None, np.ascontiguousarray(dx[:, 1:]), pairs)


# ---------------------------------------------------------------- smear gate: the previous embedding mixed in


def smear_forward(out: np.ndarray, gate: np.ndarray, e: np.ndarray, weight: np.ndarray, lam: np.ndarray) -> None:
    """e (B, T, C), the embedding -> out (B, T, C): out_0 = e_0 and out_t = e_t + lam * gate_t * e_{t-1}, where
    gate_t = sigmoid(e_t[:k] . weight), weight (1, k), lam (1,). Saves gate (B, T - 1, 1). The gate reads the
    current position only, so each position decides how much of its predecessor to take."""
    k = weight.shape[1]
    np.matmul(e[:, 1:, :k], weight.T, out=gate)
    np.negative(gate, out=gate)
    np.exp(gate, out=gate)
    gate += 1.0
    np.reciprocal(gate, out=gate)
    np.copyto(out, e)
    out[:, 1:] += (lam * gate) * e[:, :-1]


def smear_backward(de: np.ndarray, dweight: np.ndarray, dlam: np.ndarray, dout: np.ndarray, e: np.ndarray,
                   gate: np.ndarray, weight: np.ndarray, lam: np.ndarray) -> None:
    """dout (B, T, C) -> de (B, T, C), dweight (1, k) and dlam (1,), all written. e_t reaches out_t directly
    and out_{t+1} through lam * gate_{t+1}; with m_t = dout_t . e_{t-1}, dlam = sum gate_t m_t and the gate's
    pre-activation gets ds_t = lam m_t gate_t (1 - gate_t), which flows to weight and to e_t[:k]."""
    k = weight.shape[1]
    mixed = np.sum(dout[:, 1:] * e[:, :-1], axis=-1, keepdims=True)  # m_t, (B, T - 1, 1)
    dlam[0] = np.sum(gate * mixed)
    np.copyto(de, dout)
    de[:, :-1] += (lam * gate) * dout[:, 1:]
    ds = lam * mixed * gate * (1.0 - gate)
    de[:, 1:, :k] += ds * weight
    dweight[...] = np.tensordot(ds, e[:, 1:, :k], axes=([0, 1], [0, 1]))


# ---------------------------------------------------------------- value embedding: a token table added to the values


def value_embed_forward(v: np.ndarray, ve: np.ndarray, gain: np.ndarray, scratch: np.ndarray) -> None:
    """v (B, T, C), the values of one layer (any strides: the v third of qkv) += gain (1,) * ve (B, T, C),
    the value-embedding rows of the input tokens (``embedding_forward`` of the table, no positions).
    In place, so that attention, its backward and a KV cache all read the values after the add.
    scratch is (B, T, C)."""
    np.multiply(ve, gain, out=scratch)
    v += scratch


def value_embed_backward(dve: np.ndarray, dgain: np.ndarray, dv: np.ndarray, ve: np.ndarray, gain: np.ndarray,
                         scratch: np.ndarray) -> None:
    """dv (B, T, C), the gradient of one layer's values (any strides) -> dve (B, T, C) accumulated (every
    layer adds to the one table; ``embedding_backward`` then scatters it into the table's rows) and
    dgain (1,) written: d(gain * ve) gives dve += gain * dv and dgain = sum(dv * ve). The values'
    own gradient, dv, passes on to c_attn unchanged. scratch is (B, T, C)."""
    np.multiply(dv, ve, out=scratch)
    dgain[0] = rows(scratch).sum()
    np.multiply(dv, gain, out=scratch)
    dve += scratch


# ---------------------------------------------------------------- LayerNorm


def layernorm_forward(out: np.ndarray, xhat: np.ndarray, rstd: np.ndarray, x: np.ndarray,
                      weight: np.ndarray, bias: np.ndarray | None) -> None:
    """x (..., C) -> out (..., C); saves xhat = (x - mean) * rstd (..., C) and rstd (..., 1)."""
    C = x.shape[-1]
    row_sum(rstd, x, 1.0 / C)  # rstd holds the mean for a moment
    np.subtract(x, rstd, out=xhat)
    np.multiply(xhat, xhat, out=out)  # out is scratch until the last two lines
    row_sum(rstd, out, 1.0 / C)
    rstd += LN_EPS
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    xhat *= rstd
    np.multiply(xhat, weight, out=out)
    if bias is not None:
        out += bias


def layernorm_backward(dx: np.ndarray, dweight: np.ndarray, dbias: np.ndarray | None, dout: np.ndarray,
                       xhat: np.ndarray, rstd: np.ndarray, weight: np.ndarray,
                       scratch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> None:
    """dout (..., C) -> dx (..., C) accumulated (LayerNorm inputs are residual streams); dweight,
    dbias (C,) written. ``scratch`` is two arrays shaped like dout and two shaped like rstd.

    With g = dout * weight, differentiating xhat = (x - mean(x)) / std(x) row by row gives
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)):
    the two means are the paths through the row's mean and through its variance.
    """
    g, tmp, mean_g, mean_gx = scratch
    np.multiply(dout, xhat, out=tmp)
    rows(tmp).sum(axis=0, out=dweight)
    if dbias is not None:
        rows(dout).sum(axis=0, out=dbias)
    np.multiply(dout, weight, out=g)
    np.multiply(g, xhat, out=tmp)
    row_sum(mean_gx, tmp, 1.0 / g.shape[-1])
    row_sum(mean_g, g, 1.0 / g.shape[-1])
    g -= mean_g
    np.multiply(xhat, mean_gx, out=tmp)
    g -= tmp
    g *= rstd
    dx += g


# ---------------------------------------------------------------- linear layer (and the output head)


def linear_forward(out: np.ndarray, x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> None:
    """x (..., in) @ weight (out, in).T + bias (out,) -> out (..., out).

    The output head is this layer without a bias: its weight is wte (tied) or lm_head (untied).
    """
    np.matmul(rows(x), weight.T, out=rows(out))
    if bias is not None:
        out += bias


def linear_backward(dx: np.ndarray | None, dweight: np.ndarray, dbias: np.ndarray | None, dout: np.ndarray,
                    x: np.ndarray, weight: np.ndarray) -> None:
    """dout (..., out) -> dx (..., in), dweight (out, in), dbias (out,), all written."""
    dout2 = rows(dout)
    if dx is not None:
        np.matmul(dout2, weight, out=rows(dx))
    np.matmul(dout2.T, rows(x), out=dweight)
    if dbias is not None:
        dout2.sum(axis=0, out=dbias)


# ---------------------------------------------------------------- causal multi-head attention


def split_heads(qkv: np.ndarray, n_head: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, T, 3C) -> q, k, v as (B, nh, T, hs) views: every (T, hs) slice keeps unit stride along
    hs, so matmul hands it to BLAS as it is, without a copy."""
    B, T, C3 = qkv.shape
    return tuple(qkv.reshape(B, T, 3, n_head, C3 // 3 // n_head).transpose(2, 0, 3, 1, 4))


def merge_heads(y: np.ndarray, n_head: int) -> np.ndarray:
    """A (B, T, C) buffer seen as (B, nh, T, hs): writing heads into it merges them for free."""
    B, T, C = y.shape
    return y.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)


def causal_bias(n: int, dtype: np.dtype) -> np.ndarray:
    """(n, n) additive mask: 0 where query i may see key j (j <= i), -inf above the diagonal.
    Rows start:start+T and columns :start+T mask T new queries against a cache of start keys."""
    return np.triu(np.full((n, n), -np.inf, dtype), k=1)


def softmax_rows(x: np.ndarray, row: np.ndarray) -> None:
    """In-place softmax over the last axis; ``row`` is scratch of shape x.shape[:-1] + (1,)."""
    np.max(x, axis=-1, keepdims=True, out=row)
    x -= row
    np.exp(x, out=x)
    row_sum(row, x)
    x /= row


def attention_forward(out: np.ndarray, att: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      bias: np.ndarray, row: np.ndarray, keep: np.ndarray | None = None,
                      att_kept: np.ndarray | None = None) -> None:
    """q (B, nh, Tq, hs), k and v (B, nh, Tk, hs), bias (Tq, Tk) -> out (B, nh, Tq, hs); saves
    att = softmax(q k^T / sqrt(hs) + bias) (B, nh, Tq, Tk).

    With attention dropout, ``keep`` holds the drawn mask (0 or 1/(1-p)) and ``att_kept`` receives
    att * keep, the weights actually applied to v.
    """
    np.matmul(q, k.transpose(0, 1, 3, 2), out=att)
    att *= 1.0 / math.sqrt(q.shape[-1])
    att += bias
    softmax_rows(att, row)
    if keep is not None:
        np.multiply(att, keep, out=att_kept)
    np.matmul(att if keep is None else att_kept, v, out=out)


def attention_backward(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray, datt: np.ndarray, dout: np.ndarray,
                       att: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, row: np.ndarray,
                       scratch: np.ndarray, keep: np.ndarray | None = None,
                       att_kept: np.ndarray | None = None) -> None:
    """dout (B, nh, T, hs) -> dq, dk, dv (B, nh, T, hs) written; datt and scratch are (B, nh, T, T).

    Softmax backward: for p = softmax(s) row by row, ds = p * (dp - sum(dp * p)); masked entries
    have p = 0 exactly, so their gradient is 0 and the mask needs no backward of its own.
    """
    np.matmul((att if keep is None else att_kept).transpose(0, 1, 3, 2), dout, out=dv)
    np.matmul(dout, v.transpose(0, 1, 3, 2), out=datt)
    if keep is not None:
        datt *= keep
    np.multiply(datt, att, out=scratch)
    row_sum(row, scratch)
    datt -= row
    datt *= att
    datt *= 1.0 / math.sqrt(q.shape[-1])
    np.matmul(datt, k, out=dq)
    np.matmul(datt.transpose(0, 1, 3, 2), q, out=dk)


# ---------------------------------------------------------------- QK-norm: RMS norm of each head's q and k


def qknorm_forward(out: np.ndarray, rstd: np.ndarray, x: np.ndarray) -> None:
    """x (..., hs), any strides (a head view of qkv) -> out (..., hs) contiguous = x / rms(x); saves
    rstd (..., 1). No gain: q.k is then a cosine similarity times hs, bounded, so attention logits
    cannot grow without limit (the instability QK-norm exists to remove); the softmax temperature
    stays the usual 1/sqrt(hs). The output is also what the backward needs (x / rms)."""
    np.multiply(x, x, out=out)  # out is scratch for the squares
    row_sum(rstd, out, 1.0 / x.shape[-1])
    rstd += QK_NORM_EPS
    np.sqrt(rstd, out=rstd)
    np.reciprocal(rstd, out=rstd)
    np.multiply(x, rstd, out=out)


def qknorm_backward(dx: np.ndarray, dout: np.ndarray, xhat: np.ndarray, rstd: np.ndarray,
                    scratch: np.ndarray, row: np.ndarray) -> None:
    """dout (..., hs) -> dx (..., hs) written (any strides): for xhat = x * rstd,
        dx = rstd * (dout - xhat * mean(dout * xhat)),
    LayerNorm's backward without the mean path. scratch is shaped like xhat, row like rstd."""
    np.multiply(dout, xhat, out=scratch)
    row_sum(row, scratch, 1.0 / xhat.shape[-1])
    np.multiply(xhat, row, out=scratch)
    np.subtract(dout, scratch, out=scratch)
    np.multiply(scratch, rstd, out=dx)


# ---------------------------------------------------------------- rotary positions (RoPE)


def rope_forward(out: np.ndarray, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """x (..., T, hs), any strides -> out (..., T, hs): channel pair (i, i + hs/2) at position t is
    rotated by angle t * freq_i; cos and sin (T, hs/2) from ``base.rope_tables`` (rows already offset
    to the positions of x). out must not be x: both halves are read after the first is written.
        out1 = x1 cos + x2 sin,  out2 = x2 cos - x1 sin"""
    half = x.shape[-1] // 2
    x1, x2, out1, out2 = x[..., :half], x[..., half:], out[..., :half], out[..., half:]
    np.multiply(x1, cos, out=out1)
    np.multiply(x2, sin, out=out2)  # out2 is scratch for x2 sin for one line
    out1 += out2
    np.multiply(x2, cos, out=out2)
    out2 -= x1 * sin  # one (..., T, hs/2) temporary


def rope_backward(dx: np.ndarray, dout: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> None:
    """dout (..., T, hs) -> dx (..., T, hs) written: a rotation's transpose is the opposite rotation,
        dx1 = dout1 cos - dout2 sin,  dx2 = dout2 cos + dout1 sin. dx must not be dout."""
    half = dout.shape[-1] // 2
    d1, d2, dx1, dx2 = dout[..., :half], dout[..., half:], dx[..., :half], dx[..., half:]
    np.multiply(d2, sin, out=dx2)  # scratch for one line
    np.multiply(d1, cos, out=dx1)
    dx1 -= dx2
    np.multiply(d2, cos, out=dx2)
    dx2 += d1 * sin


# ---------------------------------------------------------------- GELU (tanh approximation, as GPT-2)


def gelu_forward(out: np.ndarray, t: np.ndarray, x: np.ndarray) -> None:
    """x (...) -> out = 0.5 x (1 + tanh(k (x + a x^3))); saves the tanh t (...) for the backward.
    The argument is computed as k x (1 + a x^2): plain products, where ``x**3`` would go through
    NumPy's slow generic power."""
    np.multiply(x, x, out=t)
    t *= GELU_A
    t += 1.0
    t *= x
    t *= GELU_K
    np.tanh(t, out=t)
    np.add(t, 1.0, out=out)
    out *= x
    out *= 0.5


def gelu_backward(dx: np.ndarray, dout: np.ndarray, x: np.ndarray, t: np.ndarray, scratch: np.ndarray) -> None:
    """dout (...) -> dx (...) written, using
        d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 a x^2)."""
    np.multiply(x, x, out=dx)
    dx *= 3.0 * GELU_A
    dx += 1.0
    dx *= 0.5 * GELU_K
    dx *= x
    np.multiply(t, t, out=scratch)
    np.subtract(1.0, scratch, out=scratch)
    dx *= scratch
    np.add(t, 1.0, out=scratch)
    scratch *= 0.5
    dx += scratch
    dx *= dout


# ---------------------------------------------------------------- exact GELU: x * Phi(x)

# erfc(z) ~ t * exp(-z^2 + P(t)), t = 1 / (1 + z / 2), for z >= 0 (Numerical Recipes' erfcc, a
# Chebyshev fit): relative error below 1.2e-7 everywhere, float32 rounding. NumPy has no erf of its own.
ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398,
               1.48851587, -0.82215223, 0.17087277)
INV_SQRT2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def normal_cdf(out: np.ndarray, x: np.ndarray, scratch: np.ndarray) -> None:
    """out = Phi(x) = erfc(-x / sqrt(2)) / 2, through the erfc fit above; scratch is shaped like x."""
    z, t = out, scratch  # z = |x| / sqrt(2) lives in out until the end
    np.abs(x, out=z)
    z *= INV_SQRT2
    np.multiply(z, 0.5, out=t)
    t += 1.0
    np.reciprocal(t, out=t)
    # Horner's rule for P(t), accumulated in z's square's place: -z^2 + P(t)
    poly = np.full_like(t, ERFC_COEFFS[-1])
    for c in reversed(ERFC_COEFFS[:-1]):
        poly *= t
        poly += c
    np.multiply(z, z, out=z)
    np.subtract(poly, z, out=z)
    np.exp(z, out=z)
    z *= t  # erfc(|x| / sqrt(2))
    z *= 0.5  # Phi(-|x|)
    # Phi(x) = Phi(-|x|) for x < 0 and 1 - Phi(-|x|) for x >= 0
    positive = x >= 0
    np.subtract(1.0, z, out=z, where=positive)


def gelu_exact_forward(out: np.ndarray, cdf: np.ndarray, x: np.ndarray) -> None:
    """x (...) -> out = x Phi(x); saves cdf = Phi(x) (...) for the backward."""
    normal_cdf(cdf, x, out)
    np.multiply(x, cdf, out=out)


def gelu_exact_backward(dx: np.ndarray, dout: np.ndarray, x: np.ndarray, cdf: np.ndarray,
                        scratch: np.ndarray) -> None:
    """dout (...) -> dx (...) written: d/dx x Phi(x) = Phi(x) + x phi(x), phi the normal density."""
    np.multiply(x, x, out=scratch)
    scratch *= -0.5
    np.exp(scratch, out=scratch)
    scratch *= INV_SQRT_2PI
    scratch *= x
    scratch += cdf
    np.multiply(scratch, dout, out=dx)


# ---------------------------------------------------------------- ReLU^2 (modded-nanogpt's MLP activation)


def relu2_forward(out: np.ndarray, r: np.ndarray, x: np.ndarray) -> None:
    """x (...) -> out = max(x, 0)^2; saves r = max(x, 0) (...). Cheaper than GELU (no transcendental),
    and its gradient 2 max(x, 0) grows with the input instead of saturating at 1."""
    np.maximum(x, 0.0, out=r)
    np.multiply(r, r, out=out)


def relu2_backward(dx: np.ndarray, dout: np.ndarray, x: np.ndarray, r: np.ndarray, scratch: np.ndarray) -> None:
    """dout (...) -> dx = 2 max(x, 0) dout, written (x and scratch unused: the signature of the others)."""
    np.multiply(r, dout, out=dx)
    dx *= 2.0


ACTIVATION_LAYERS = {
    "gelu_tanh": (gelu_forward, gelu_backward),
    "gelu": (gelu_exact_forward, gelu_exact_backward),
    "relu2": (relu2_forward, relu2_backward),
}


# ---------------------------------------------------------------- MLP: linear, activation, linear


def mlp_forward(out: np.ndarray, h: np.ndarray, t: np.ndarray, g: np.ndarray, x: np.ndarray,
                fc_w: np.ndarray, fc_b: np.ndarray | None, proj_w: np.ndarray, proj_b: np.ndarray | None,
                activation: str = "gelu_tanh") -> None:
    """x (B, T, C) -> out (B, T, C); saves h = x W_fc^T (B, T, 4C), what the activation keeps for its
    backward in t (the tanh, Phi(h) or max(h, 0)) and g = activation(h)."""
    linear_forward(h, x, fc_w, fc_b)
    ACTIVATION_LAYERS[activation][0](g, t, h)
    linear_forward(out, g, proj_w, proj_b)


def mlp_backward(dx: np.ndarray, dfc_w: np.ndarray, dfc_b: np.ndarray | None, dproj_w: np.ndarray,
                 dproj_b: np.ndarray | None, dout: np.ndarray, x: np.ndarray, h: np.ndarray, t: np.ndarray,
                 g: np.ndarray, fc_w: np.ndarray, proj_w: np.ndarray,
                 scratch: tuple[np.ndarray, np.ndarray, np.ndarray], activation: str = "gelu_tanh") -> None:
    """dout (B, T, C) -> dx (B, T, C) and the four parameter gradients, written; ``scratch`` is
    three (B, T, 4C) arrays: dg, dh and the activation's own."""
    dg, dh, act_scratch = scratch
    linear_backward(dg, dproj_w, dproj_b, dout, g, proj_w)
    ACTIVATION_LAYERS[activation][1](dh, dg, h, t, act_scratch)
    linear_backward(dx, dfc_w, dfc_b, dh, x, fc_w)


# ---------------------------------------------------------------- residual connection


def residual_forward(out: np.ndarray, x: np.ndarray, branch: np.ndarray) -> None:
    """x (B, T, C) + branch (B, T, C) -> out: a sub-layer adds its branch to the stream."""
    np.add(x, branch, out=out)


def residual_backward(dx: np.ndarray, dout: np.ndarray) -> None:
    """A sum passes its gradient to both inputs unchanged. The branch reads ``dout`` as it is; the
    stream's gradient dx starts as a copy, to which the branch's LayerNorm adds its own part."""
    np.copyto(dx, dout)


# ---------------------------------------------------------------- dropout


def dropout_mask(keep: np.ndarray, p: float, rng: np.random.Generator) -> None:
    """keep (...) = 1/(1-p) with probability 1-p, else 0: the expected activation is unchanged."""
    rng.random(out=keep, dtype=keep.dtype)
    np.greater_equal(keep, p, out=keep)
    keep *= 1.0 / (1.0 - p)


def dropout_forward(out: np.ndarray, keep: np.ndarray, x: np.ndarray, p: float, rng: np.random.Generator) -> None:
    """x (...) -> out = x * keep (out may be x), with a fresh keep-mask (...) from ``dropout_mask``."""
    dropout_mask(keep, p, rng)
    np.multiply(x, keep, out=out)


def dropout_backward(dx: np.ndarray, dout: np.ndarray, keep: np.ndarray) -> None:
    """dout (...) -> dx = dout * keep (dx may be dout)."""
    np.multiply(dout, keep, out=dx)


# ---------------------------------------------------------------- logit soft-capping (Gemma 2, modded-nanogpt)


def softcap_forward(out: np.ndarray, t: np.ndarray, x: np.ndarray, cap: float) -> None:
    """x (...) -> out = cap * tanh(x / cap) (out may be x); saves t = tanh(x / cap) (...). Smooth, about the
    identity for |x| << cap, and bounded by cap: no logit can run away however confident the model gets."""
    np.multiply(x, 1.0 / cap, out=t)
    np.tanh(t, out=t)
    np.multiply(t, cap, out=out)


def softcap_backward(dx: np.ndarray, dout: np.ndarray, t: np.ndarray) -> None:
    """dout (...) -> dx = dout * (1 - t^2) written (dx may be dout). t, the saved tanh, is consumed: it is
    the scratch for 1 - t^2 (a logits-sized buffer fewer)."""
    np.multiply(t, t, out=t)
    np.subtract(1.0, t, out=t)
    np.multiply(dout, t, out=dx)


# ---------------------------------------------------------------- fused softmax + cross-entropy


def crossentropy_forward(probs: np.ndarray, logits: np.ndarray, targets: np.ndarray, row: np.ndarray) -> float:
    """logits (N, V), targets (N,) -> mean loss in nats; probs (N, V) receives the softmax (it may
    be logits itself). ``row`` is (N, 1) scratch.

    loss_i = log(sum_j exp(l_ij - m_i)) - (l_i,target - m_i), with m_i the row max for stability.
    """
    np.max(logits, axis=-1, keepdims=True, out=row)
    np.subtract(logits, row, out=probs)
    target_logits = probs[np.arange(len(targets)), targets]
    np.exp(probs, out=probs)
    row_sum(row, probs)
    probs /= row
    np.log(row, out=row)
    return float(np.mean(row[:, 0] - target_logits))


def crossentropy_backward(dlogits: np.ndarray, probs: np.ndarray, targets: np.ndarray, scale: float) -> None:
    """-> dlogits (N, V) written (it may be probs): the gradient of scale * sum_i loss_i is
    scale * (softmax - onehot(target)), fused so that no (N, V) one-hot exists."""
    np.multiply(probs, scale, out=dlogits)
    dlogits[np.arange(len(targets)), targets] -= scale
