"""The `numpy` backend: every op in plain NumPy, float64, written to be read.

It is the executable spec: the `cpu` (C) backend and the GPU backend compute the same
functions and the tests compare them with these.  Each op's forward and backward stand
side by side; a forward returns what its backward needs as a named cache.

Shapes: M rows (tokens), K input and N output features, D hidden, H heads, f = D / H,
T tokens of a sequence, B sequences, V vocabulary, mini-batch size Kmb (`mini_batch`).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

NAME = "numpy"
DTYPE = np.dtype(np.float64)
LN_EPS = 1e-6  # the TTT layer's LayerNorms (inner and post norm)


# -- dense products -----------------------------------------------------------------------
def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """op(a) @ op(b) for 2-D arrays, op(x) = x.T when its flag is set."""
    return (a.T if trans_a else a) @ (b.T if trans_b else b)


# -- BitLinear (W1.58A8) --------------------------------------------------------------------
class TernaryWeight(NamedTuple):
    """Qw(W) = s * clip(rint(W / s), -1, 1), s = mean|W| + 1e-5, as a float array [N, K]."""

    values: np.ndarray


def quantize_weight(w: np.ndarray) -> TernaryWeight:
    """Qw(W) in the dtype of w (s from a float64 mean)."""
    s = w.dtype.type(np.mean(np.abs(w), dtype=np.float64) + 1e-5)
    return TernaryWeight(np.clip(np.rint(w / s), -1, 1) * s)


def is_quantized(w) -> bool:
    """True for a weight this backend's quantize_weight made."""
    return isinstance(w, TernaryWeight)


def quantize_act(x: np.ndarray) -> np.ndarray:
    """Qa(x) = clip(rint(x a), -128, 127) / a, a = 127 / max(max|x|, 1e-5) per row of x [M, K]."""
    one = x.dtype.type
    a = one(127.0) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), one(1e-5))
    return np.clip(np.rint(x * a), -128, 127) / a


def qlinear(xq: np.ndarray, wq: TernaryWeight) -> np.ndarray:
    """Qa(x) [M, K] @ Qw(W)^T -> [M, N]."""
    return xq @ wq.values.T


def qlinear_dx(dy: np.ndarray, wq: TernaryWeight) -> np.ndarray:
    """Straight-through input gradient dY [M, N] @ Qw(W) -> [M, K]."""
    return matmul(dy, wq.values)


def qlinear_dw(dy: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Straight-through weight gradient dY^T [N, M] @ Qa(x) [M, K] -> [N, K]."""
    return matmul(dy, xq, trans_a=True)


# -- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w -------------------------------------------
class RMSNormCache(NamedTuple):
    xn: np.ndarray  # x / rms, [..., D]
    r: np.ndarray   # 1 / rms, [..., 1]; 0 where the squares overflowed
    w: np.ndarray


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, RMSNormCache]:
    """x [..., D], w [D] -> (y [..., D], cache)."""
    with np.errstate(over="ignore"):  # an overflow shows as r == 0; the model reports it
        r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))
    xn = x * r
    return xn * w, RMSNormCache(xn, r, w)


def rmsnorm_backward(dy: np.ndarray, c: RMSNormCache) -> tuple[np.ndarray, np.ndarray]:
    """dy [..., D] -> (dx [..., D], dw [D])."""
    dw = np.sum(dy * c.xn, axis=tuple(range(dy.ndim - 1)))
    g = dy * c.w
    dx = c.r * (g - c.xn * np.mean(g * c.xn, axis=-1, keepdims=True))
    return dx, dw


# -- LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b ----------------------------------
class LayerNormCache(NamedTuple):
    xh: np.ndarray  # normalized x [..., D]
    r: np.ndarray   # 1 / std [..., 1]
    w: np.ndarray


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, LayerNormCache]:
    """x [..., D], w and b broadcastable to x -> (y, cache)."""
    mu = np.mean(x, axis=-1, keepdims=True)
    d = x - mu
    r = 1.0 / np.sqrt(np.mean(d * d, axis=-1, keepdims=True) + x.dtype.type(eps))
    xh = d * r
    return xh * w + b, LayerNormCache(xh, r, w)


def layernorm_backward(dy: np.ndarray, c: LayerNormCache, reduce_axes=None):
    """dy -> (dx, dw, db); dw and db summed over `reduce_axes` (default: all but the last)."""
    axes = tuple(range(dy.ndim - 1)) if reduce_axes is None else reduce_axes
    dw = np.sum(dy * c.xh, axis=axes)
    db = np.sum(dy, axis=axes)
    g = dy * c.w
    dx = c.r * (g - np.mean(g, axis=-1, keepdims=True) - c.xh * np.mean(g * c.xh, axis=-1, keepdims=True))
    return dx, dw, db


# -- gates -----------------------------------------------------------------------------------
def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, in z's dtype: (1 + tanh(z / 2)) / 2."""
    half = z.dtype.type(0.5)
    out = np.tanh(z * half)
    out *= half
    out += half
    return out


def swiglu_forward(g: np.ndarray, u: np.ndarray, keep_sg: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """h = silu(g) * u = g sigmoid(g) u, element-wise -> (h, sigmoid(g)) (None unless keep_sg:
    swiglu_backward then recomputes it, the same bits)."""
    sg = sigmoid(g)
    h = g * sg
    h *= u
    return h, (sg if keep_sg else None)


def swiglu_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray,
                    sg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """-> (dg, du) of h = g sg u: du = dh g sg, dg = dh u sg (1 + g (1 - sg)); sg None: sigmoid(g)
    recomputed as the forward computes it."""
    if sg is None:
        sg = sigmoid(g)
    du = dh * g
    du *= sg
    one = g.dtype.type(1.0)
    dg = one - sg
    dg *= g
    dg += one
    dg *= sg
    dg *= u
    dg *= dh
    return dg, du


# -- RoPE on consecutive pairs (x[2j], x[2j+1]) of each head --------------------------------
def rope_tables(positions: np.ndarray, head_dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """positions [T] -> (cos, sin) [T, head_dim / 2] of angle p theta^(-2j / f), in `dtype`."""
    dt = np.dtype(dtype).type
    inv = dt(1.0) / (dt(theta) ** (np.arange(0, head_dim, 2, dtype=dtype) / dt(head_dim)))
    ang = positions.astype(dtype)[:, None] * inv[None, :]
    return np.cos(ang), np.sin(ang)


def rope_apply(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, inverse: bool = False) -> np.ndarray:
    """x [..., T, f] rotated by +angle (or -angle with inverse=True: the backward)."""
    xe, xo = x[..., 0::2], x[..., 1::2]
    s = -sin if inverse else sin
    out = np.empty_like(x)
    out[..., 0::2] = xe * cos - xo * s
    out[..., 1::2] = xe * s + xo * cos
    return out


# -- embedding -------------------------------------------------------------------------------
def embedding_forward(w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids int [B, T] -> x [B, T, D] (a copy of the rows of w [V, D])."""
    return w[ids]


def embedding_backward(dx: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """dx [B, T, D] -> dW [V, D]: rows scatter-added (repeated ids accumulate)."""
    dw = np.zeros((vocab_size, dx.shape[-1]), dtype=dx.dtype)
    np.add.at(dw, ids.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    return dw


# -- softmax cross-entropy -------------------------------------------------------------------
class XentCache(NamedTuple):
    p: np.ndarray        # softmax [..., V]
    targets: np.ndarray  # [...]
    m: np.ndarray        # token weights [...] (the 0/1 mask)
    total: float         # sum of m


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, m: np.ndarray, total, overwrite: bool = False):
    """loss = -sum(m log softmax(logits)[target]) / total; logits [..., V], targets and m [...]
    (checked by the caller) -> (loss, cache).  overwrite: the caller allows the logits to be
    overwritten (this spec never does)."""
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    se = e.sum(axis=-1, keepdims=True)
    logp_t = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0] - np.log(se[..., 0])
    loss = -(m * logp_t).sum() / total
    return logits.dtype.type(loss), XentCache(e / se, targets, m, total)


def cross_entropy_backward(c: XentCache, dloss: float = 1.0) -> np.ndarray:
    """-> dlogits [..., V] = (softmax - onehot) m / total * dloss."""
    d = c.p.copy()
    np.put_along_axis(d, c.targets[..., None], np.take_along_axis(d, c.targets[..., None], axis=-1) - 1, axis=-1)
    return d * (c.m / c.total * dloss)[..., None]


# -- TTT-Linear inner loop, dual form, one mini-batch at a time (arrays carry [B, H] axes) ---
class InnerLossCache(NamedTuple):
    xh1: np.ndarray
    r1: np.ndarray
    go: np.ndarray
    gxh: np.ndarray
    s2: np.ndarray


def inner_loss_grad(Z1, target, gamma, beta):
    """G = d/dZ1 of 1/2 ||LN(Z1) - target||^2 per row (inner LN: weight gamma, bias beta, eps 1e-6)
    -> (G, cache).  Z1, target [.., n, f]."""
    f = Z1.shape[-1]
    dt = Z1.dtype.type
    mu = Z1.mean(axis=-1, keepdims=True)
    d1 = Z1 - mu
    r1 = 1.0 / np.sqrt((d1 * d1).mean(axis=-1, keepdims=True) + dt(LN_EPS))
    xh1 = d1 * r1
    go = gamma * xh1 + beta - target
    gxh = go * gamma
    s1 = gxh.sum(axis=-1, keepdims=True)
    s2 = (gxh * xh1).sum(axis=-1, keepdims=True)
    G = (r1 / dt(f)) * (dt(f) * gxh - s1 - xh1 * s2)
    return G, InnerLossCache(xh1, r1, go, gxh, s2)


class MiniBatchCache(NamedTuple):
    W: np.ndarray       # inner weights at the start of the mini-batch [.., f, f]
    Q: np.ndarray
    Kx: np.ndarray
    E: np.ndarray       # eta [.., n, n]
    Et: np.ndarray      # tril(E)
    A: np.ndarray       # tril(Q Kx^T)
    P: np.ndarray       # Et * A
    G: np.ndarray       # inner-loss gradients [.., n, f]
    H: np.ndarray       # e_last * G
    e_last: np.ndarray  # E[.., n-1, :]
    inner: InnerLossCache
    ln: LayerNormCache  # the output LayerNorm
    gamma: np.ndarray


def _tril(n: int, dtype) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=dtype))


def minibatch_forward(W, b, Q, Kx, V, E, gamma, beta):
    """W [.., f, f], b [.., 1, f], Q/Kx/V [.., n, f], E [.., n, n], gamma/beta [.., 1, f]
    -> (out [.., n, f], W_new, b_new, cache)."""
    n = Q.shape[-2]
    tri = _tril(n, Q.dtype)
    G, ic = inner_loss_grad(Kx @ W + b, V - Kx, gamma, beta)
    Et = E * tri
    A = (Q @ np.swapaxes(Kx, -1, -2)) * tri
    P = Et * A
    b_bar = b - Et @ G
    Zb = Q @ W - P @ G + b_bar
    ln2, c2 = layernorm_forward(Zb, gamma, beta, LN_EPS)
    out = Q + ln2
    e_last = E[..., n - 1, :]  # [.., n]
    H = e_last[..., :, None] * G
    W_new = W - np.swapaxes(Kx, -1, -2) @ H
    b_new = b - H.sum(axis=-2, keepdims=True)
    return out, W_new, b_new, MiniBatchCache(W, Q, Kx, E, Et, A, P, G, H, e_last, ic, c2, gamma)


def minibatch_backward(dout, dW_new, db_new, c: MiniBatchCache):
    """Gradients of one mini-batch.  dout [.., n, f]; dW_new, db_new: gradients of the state it
    hands on -> (dW, db, dQ, dKx, dV, dE, dgamma, dbeta); dgamma/dbeta keep the leading axes."""
    W, Q, Kx, Et, A, P, G, H, e_last, gamma = c.W, c.Q, c.Kx, c.Et, c.A, c.P, c.G, c.H, c.e_last, c.gamma
    xh1, r1, go, gxh, s2 = c.inner
    n, f = Q.shape[-2], Q.shape[-1]
    dt = Q.dtype.type
    tri = _tril(n, Q.dtype)
    sw = np.swapaxes
    # out = Q + LN(Zb)
    dQ = dout.copy()
    dZb, dgamma, dbeta = layernorm_backward(dout, c.ln, reduce_axes=(-2,))
    dgamma, dbeta = dgamma[..., None, :], dbeta[..., None, :]
    # Zb = Q W - P G + b_bar ;  b_bar = b - Et G
    dQ += dZb @ sw(W, -1, -2)
    dW = dW_new + sw(Q, -1, -2) @ dZb
    dP = -(dZb @ sw(G, -1, -2))
    dG = -(sw(P, -1, -2) @ dZb) - sw(Et, -1, -2) @ dZb
    db = db_new + dZb.sum(axis=-2, keepdims=True)
    dEt = -(dZb @ sw(G, -1, -2)) + dP * A
    # P = Et * A ; A = tril(Q Kx^T)
    dA = dP * Et * tri
    dQ += dA @ Kx
    dKx = sw(dA, -1, -2) @ Q
    # W_new = W - Kx^T H ; b_new = b - sum_rows H ; H = e_last * G
    dH = -(Kx @ dW_new) - db_new
    dKx -= H @ sw(dW_new, -1, -2)
    de_last = (dH * G).sum(axis=-1)
    dG += e_last[..., :, None] * dH
    dE = dEt * tri
    dE[..., n - 1, :] += de_last
    # G = r1/f * (f gxh - s1 - xh1 s2), gxh = gamma * go, go = gamma xh1 + beta - V + Kx
    u = dG * (r1 / dt(f))
    dr1 = (dG * (dt(f) * gxh - gxh.sum(axis=-1, keepdims=True) - xh1 * s2)).sum(axis=-1, keepdims=True) / dt(f)
    ds1 = -u.sum(axis=-1, keepdims=True)
    ds2 = -(u * xh1).sum(axis=-1, keepdims=True)
    dgxh = dt(f) * u + ds1 + ds2 * xh1
    dxh1 = -s2 * u + ds2 * gxh
    dgo = dgxh * gamma
    dgamma = dgamma + (dgxh * go).sum(axis=-2, keepdims=True) + (dgo * xh1).sum(axis=-2, keepdims=True)
    dbeta = dbeta + dgo.sum(axis=-2, keepdims=True)
    dxh1 += dgo * gamma
    dV = -dgo
    dKx += dgo
    # xh1 = (Z1 - mu) r1, r1 = (var + eps)^-1/2  (LayerNorm backward with an extra dr1)
    d1 = xh1 / r1
    dr1_total = dr1 + (dxh1 * d1).sum(axis=-1, keepdims=True)
    dd = dxh1 * r1 + (-(r1 ** 3) * dr1_total) * d1 / dt(f)
    dZ1 = dd - dd.mean(axis=-1, keepdims=True)
    # Z1 = Kx W + b
    dKx += dZ1 @ sw(W, -1, -2)
    dW += sw(Kx, -1, -2) @ dZ1
    db += dZ1.sum(axis=-2, keepdims=True)
    return dW, db, dQ, dKx, dV, dE, dgamma, dbeta


def _heads(x: np.ndarray, h: int) -> np.ndarray:
    b, t, d = x.shape
    return x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)


def _merge(x: np.ndarray) -> np.ndarray:
    b, h, t, f = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * f)


class TTTCache(NamedTuple):
    minibatches: list   # MiniBatchCache per mini-batch
    cos: np.ndarray
    sin: np.ndarray
    lr: np.ndarray      # [B, H, T]
    tok: np.ndarray     # [Kmb]
    shape: tuple        # (B, T, D, H, Kmb)
    starts: np.ndarray | None = None  # [B, chunks] bool: the mini-batch started from (W1, b1); None: the first only


class TTTGrads(NamedTuple):
    """Gradients of the inner loop's inputs: dq, dk, dv [B, T, D] (before RoPE), dlr [B, H, T],
    dtok [Kmb], dW1 [H, f, f], db1 [H, 1, f], dgamma, dbeta [H, f]."""

    dq: np.ndarray
    dk: np.ndarray
    dv: np.ndarray
    dlr: np.ndarray
    dtok: np.ndarray
    dW1: np.ndarray
    db1: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray


def _starts(init, resets, bsz: int, nch: int) -> np.ndarray | None:
    """[B, chunks] bool: which mini-batches start from (W1, b1) (None: only every sequence's first)."""
    if init is None and resets is None:
        return None
    st = np.zeros((bsz, nch), dtype=bool)
    if resets is not None:
        r = np.asarray(resets)
        if r.shape != (bsz, nch):
            raise ValueError(f"ttt_forward: resets has shape {r.shape}, expected {(bsz, nch)} "
                             "(sequences x mini-batches)")
        st |= r.astype(bool)
    if init is None:
        st[:, 0] = True
    return st


def ttt_forward(q, k, v, lr, tok, W1, b1, gamma, beta, num_heads: int, mini_batch: int, rope_theta: float, *,
                init=None, resets=None, final: bool = False):
    """The TTT-Linear inner loop over whole sequences: q, k, v [B, T, D] (projections, before
    RoPE at positions t mod Kmb), lr [B, H, T] (gated learning rates), tok [Kmb] (position
    scales), W1 [H, f, f], b1 [H, 1, f] (the state every sequence starts from), gamma, beta
    [H, f] (inner LayerNorm) -> (merged inner outputs [B, T, D], cache).

    Streaming: init = (W [B, H, f, f], b [B, H, 1, f]) the state each sequence starts from instead
    (carried from the window before: the backward treats it as a constant); resets [B, chunks] 0/1:
    the state is set to (W1, b1) at the start of those mini-batches; final: also return the state
    after the last mini-batch, (W [B, H, f, f], b [B, H, 1, f])."""
    bsz, t, d = q.shape
    h, kmb = num_heads, mini_batch
    f = d // h
    nch = -(-t // kmb)
    starts = _starts(init, resets, bsz, nch)
    cos, sin = rope_tables(np.arange(t) % kmb, f, rope_theta, q.dtype)
    Q = rope_apply(_heads(q, h), cos, sin)
    Kx = rope_apply(_heads(k, h), cos, sin)
    V = _heads(v, h)
    gam = gamma[None, :, None, :]
    bet = beta[None, :, None, :]
    W = np.broadcast_to(W1[None], (bsz, h, f, f))
    bb = np.broadcast_to(b1[None], (bsz, h, 1, f))
    if init is not None:
        W0 = np.array(init[0], dtype=q.dtype).reshape(bsz, h, f, f)
        b0 = np.array(init[1], dtype=q.dtype).reshape(bsz, h, 1, f)
        W, bb = np.where(starts[:, 0, None, None, None], W, W0), np.where(starts[:, 0, None, None, None], bb, b0)
    out = np.empty_like(Q)
    caches = []
    for c, s in enumerate(range(0, t, kmb)):
        if starts is not None and c > 0 and starts[:, c].any():
            m = starts[:, c, None, None, None]
            W, bb = np.where(m, W1[None], W), np.where(m, b1[None], bb)
        e = min(s + kmb, t)
        E = tok[:e - s, None] * lr[:, :, None, s:e]
        o, W, bb, mc = minibatch_forward(W, bb, Q[:, :, s:e], Kx[:, :, s:e], V[:, :, s:e], E, gam, bet)
        out[:, :, s:e] = o
        caches.append(mc)
    cache = TTTCache(caches, cos, sin, lr, tok, (bsz, t, d, h, kmb), starts)
    if final:
        return _merge(out), cache, (np.array(np.broadcast_to(W, (bsz, h, f, f))),
                                    np.array(np.broadcast_to(bb, (bsz, h, 1, f))))
    return _merge(out), cache


def ttt_backward(dmerged: np.ndarray, c: TTTCache) -> TTTGrads:
    """dmerged [B, T, D] -> TTTGrads, through every mini-batch and the carried state (with
    streaming arguments: only through the mini-batches that started from (W1, b1))."""
    bsz, t, d, h, kmb = c.shape
    f = d // h
    dt = dmerged.dtype
    dout = _heads(dmerged, h)
    dQ = np.empty((bsz, h, t, f), dtype=dt)
    dK = np.empty_like(dQ)
    dV = np.empty_like(dQ)
    dlr = np.empty((bsz, h, t), dtype=dt)
    dtok = np.zeros(kmb, dtype=dt)
    dgamma = np.zeros((h, f), dtype=dt)
    dbeta = np.zeros((h, f), dtype=dt)
    dW = np.zeros((bsz, h, f, f), dtype=dt)
    db = np.zeros((bsz, h, 1, f), dtype=dt)
    dW1 = np.zeros((bsz, h, f, f), dtype=dt)
    db1 = np.zeros((bsz, h, 1, f), dtype=dt)
    starts = list(range(0, t, kmb))
    for ci in reversed(range(len(starts))):
        s, mc = starts[ci], c.minibatches[ci]
        e = min(s + kmb, t)
        n = e - s
        dW, db, dqc, dkc, dvc, dE, dga, dbe = minibatch_backward(dout[:, :, s:e], dW, db, mc)
        dQ[:, :, s:e], dK[:, :, s:e], dV[:, :, s:e] = dqc, dkc, dvc
        dgamma += dga.sum(axis=(0, 2))
        dbeta += dbe.sum(axis=(0, 2))
        # E[b,h,i,j] = tok[i] * lr[b,h,s+j]
        dtok[:n] += np.einsum("bhij,bhj->i", dE, c.lr[:, :, s:e])
        dlr[:, :, s:e] = np.einsum("bhij,i->bhj", dE, c.tok[:n])
        if c.starts is not None:  # the state's gradient goes to (W1, b1) where the mini-batch started from them
            m = c.starts[:, ci, None, None, None]
            dW1, db1 = dW1 + np.where(m, dW, 0), db1 + np.where(m, db, 0)
            dW, db = np.where(m, 0, dW), np.where(m, 0, db)
    dq = _merge(rope_apply(dQ, c.cos, c.sin, inverse=True))
    dk = _merge(rope_apply(dK, c.cos, c.sin, inverse=True))
    if c.starts is None:
        dW1, db1 = dW, db
    return TTTGrads(dq, dk, _merge(dV), dlr, dtok, dW1.sum(axis=0), db1.sum(axis=0), dgamma, dbeta)


def ttt_prefill(pos: int, q, k, v, x, lr_w, lr_b, lr_scale: float, tok, gamma, beta, W0, b0, Kb, Gb, Sb, out) -> None:
    """The inner loop of one sequence token by token (inference), state updated in place.

    q, k [T, D] (after RoPE), v [T, D], x [T, D] (the layer's normalized input, for the gate
    lr = lr_scale sigmoid(x . lr_w[h] + lr_b[h])), tok [Kmb], gamma, beta [H, f]; state of the
    layer: W0 [H, f, f], b0 [H, f] (the inner model at the start of the mini-batch), Kb, Gb
    [H, Kmb, f] (keys and lr-weighted gradients g_j of the tokens read in it), Sb [H, f]
    (sum of g_j); `pos` tokens of the mini-batch read before.  out [T, D] <- q + LN(q W_i + b_i)
    with W_i = W0 - tok_i sum_{j<=i} k_j^T g_j, b_i = b0 - tok_i Sb: the dual form's values."""
    t, d = q.shape
    h, kmb, f = W0.shape[0], tok.shape[0], W0.shape[-1]
    lr = lr_scale * sigmoid(x @ lr_w.T + lr_b)  # [T, H]
    for i in range(t):
        p = (pos + i) % kmb
        for hh in range(h):
            sl = slice(hh * f, (hh + 1) * f)
            qi, ki, vi = q[i, sl], k[i, sl], v[i, sl]
            G, _ = inner_loss_grad((ki @ W0[hh] + b0[hh])[None], (vi - ki)[None], gamma[hh], beta[hh])
            Kb[hh, p], Gb[hh, p] = ki, lr[i, hh] * G[0]
            Sb[hh] += Gb[hh, p]
            Wi = W0[hh] - tok[p] * (Kb[hh, :p + 1].T @ Gb[hh, :p + 1])
            bi = b0[hh] - tok[p] * Sb[hh]
            z, _ = layernorm_forward((qi @ Wi + bi)[None], gamma[hh], beta[hh], LN_EPS)
            out[i, sl] = qi + z[0]
            if p == kmb - 1:  # the mini-batch is full: its update becomes the state
                W0[hh], b0[hh] = Wi, bi
                Kb[hh], Gb[hh], Sb[hh] = 0.0, 0.0, 0.0


# -- causal softmax attention with GQA, in tiles (FlashAttention's online softmax) ----------
class AttentionCache(NamedTuple):
    q: np.ndarray    # [B, H, T, f] (after RoPE)
    k: np.ndarray    # [B, Hkv, T, f]
    v: np.ndarray    # [B, Hkv, T, f]
    out: np.ndarray  # [B, H, T, f]
    lse: np.ndarray  # log-sum-exp of each query's scaled scores [B, H, T]
    scale: float
    tile: int


def _groups(x: np.ndarray, hkv: int) -> np.ndarray:
    """[B, H, T, f] -> [B, Hkv, G, T, f]: query head h reads key/value head h // G."""
    b, h, t, f = x.shape
    return x.reshape(b, hkv, h // hkv, t, f)


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, tile: int = 64):
    """Causal attention: out[i] = sum_{j <= i} softmax_j(scale q_i . k_j) v_j for q [B, H, T, f],
    k, v [B, Hkv, T, f] (Hkv divides H) -> (out [B, H, T, f], cache).  Computed tile by tile
    (tile x tile scores at a time) with a running max and sum: no [T, T] array exists."""
    b, h, t, f = q.shape
    hkv = k.shape[1]
    qg = _groups(q, hkv)
    out = np.empty_like(qg)
    lse = np.empty(qg.shape[:-1], dtype=q.dtype)
    for s in range(0, t, tile):
        e = min(s + tile, t)
        qt = qg[:, :, :, s:e]
        m = np.full(qt.shape[:-1], -np.inf, dtype=q.dtype)
        lsum = np.zeros_like(m)
        acc = np.zeros(qt.shape, dtype=q.dtype)
        for ks in range(0, e, tile):
            ke = min(ks + tile, e)
            sc = np.einsum("bhgqf,bhkf->bhgqk", qt, k[:, :, ks:ke]) * scale
            sc = np.where(np.arange(ks, ke)[None, :] <= np.arange(s, e)[:, None], sc, -np.inf)
            m_new = np.maximum(m, sc.max(axis=-1))
            p = np.exp(sc - m_new[..., None])
            corr = np.exp(m - m_new)
            lsum = lsum * corr + p.sum(axis=-1)
            acc = acc * corr[..., None] + np.einsum("bhgqk,bhkf->bhgqf", p, v[:, :, ks:ke])
            m = m_new
        out[:, :, :, s:e] = acc / lsum[..., None]
        lse[:, :, :, s:e] = m + np.log(lsum)
    out, lse = out.reshape(b, h, t, f), lse.reshape(b, h, t)
    return out, AttentionCache(q, k, v, out, lse, scale, tile)


def attention_backward(dout: np.ndarray, c: AttentionCache) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout [B, H, T, f] -> (dq [B, H, T, f], dk, dv [B, Hkv, T, f]).  The scores are recomputed
    tile by tile from q, k and the saved log-sum-exp: P = exp(scale q k^T - lse),
    dv = P^T dout, dS = P (dout v^T - rowsum(dout out)), dq = scale dS k, dk = scale dS^T q."""
    b, h, t, f = c.q.shape
    hkv, tile, scale = c.k.shape[1], c.tile, c.scale
    qg, dog = _groups(c.q, hkv), _groups(dout, hkv)
    lse = c.lse.reshape(qg.shape[:-1])
    delta = (dog * _groups(c.out, hkv)).sum(axis=-1)
    dq = np.zeros_like(qg)
    dk, dv = np.zeros_like(c.k), np.zeros_like(c.v)
    for s in range(0, t, tile):
        e = min(s + tile, t)
        qt, dot = qg[:, :, :, s:e], dog[:, :, :, s:e]
        for ks in range(0, e, tile):
            ke = min(ks + tile, e)
            kt, vt = c.k[:, :, ks:ke], c.v[:, :, ks:ke]
            sc = np.einsum("bhgqf,bhkf->bhgqk", qt, kt) * scale
            p = np.exp(sc - lse[:, :, :, s:e, None])
            p = np.where(np.arange(ks, ke)[None, :] <= np.arange(s, e)[:, None], p, 0.0)
            dv[:, :, ks:ke] += np.einsum("bhgqk,bhgqf->bhkf", p, dot)
            dp = np.einsum("bhgqf,bhkf->bhgqk", dot, vt)
            ds = p * (dp - delta[:, :, :, s:e, None]) * scale
            dq[:, :, :, s:e] += np.einsum("bhgqk,bhkf->bhgqf", ds, kt)
            dk[:, :, ks:ke] += np.einsum("bhgqk,bhgqf->bhkf", ds, qt)
    return dq.reshape(b, h, t, f), dk, dv


def attention_cached(q: np.ndarray, kc: np.ndarray, vc: np.ndarray, ks, vs, start: int, scale: float,
                     out: np.ndarray) -> None:
    """Attention of T new queries against a KV cache (prefill in blocks and one-token decode).

    q [T, H, f] at positions start .. start+T-1; kc, vc [Hkv, cap, f] hold the keys and values
    of positions 0 .. start+T-1 (float32/float16, or int8 codes with per-head, per-token
    scales ks, vs [Hkv, cap]: k = codes * ks; None for a float cache).  Query i reads keys
    0 .. start+i.  out [T, H, f] <- the attention outputs."""
    t, h, f = q.shape
    hkv = kc.shape[0]
    n = start + t
    kf = kc[:, :n].astype(q.dtype)
    vf = vc[:, :n].astype(q.dtype)
    if ks is not None:
        kf = kf * ks[:, :n, None].astype(q.dtype)
        vf = vf * vs[:, :n, None].astype(q.dtype)
    g = h // hkv
    for i in range(t):
        qi = q[i].reshape(hkv, g, f)
        sc = np.einsum("hgf,hkf->hgk", qi, kf[:, :start + i + 1]) * scale
        p = np.exp(sc - sc.max(axis=-1, keepdims=True))
        p /= p.sum(axis=-1, keepdims=True)
        out[i] = np.einsum("hgk,hkf->hgf", p, vf[:, :start + i + 1]).reshape(h, f)


# -- LM head -------------------------------------------------------------------------------------
class Int8Head(NamedTuple):
    """An LM head stored as int8 rows with float32 absmax scales: W ~= q * scale[:, None]."""

    q: np.ndarray      # int8 [V, D], no -128
    scale: np.ndarray  # float32 [V]


def lm_head(x: np.ndarray, head) -> np.ndarray:
    """x [M, D] -> logits [M, V] against a float head [V, D], or an Int8Head: int8 activations
    (per-row absmax) times the int8 rows, scaled by scale[v] / a[m]."""
    if isinstance(head, Int8Head):
        a = 127.0 / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), 1e-5)
        codes = np.clip(np.rint(x * a), -128, 127)
        return (codes @ head.q.T.astype(x.dtype)) * head.scale.astype(x.dtype) / a
    return matmul(x, head, trans_b=True)


# -- optimizer -------------------------------------------------------------------------------
def adamw(p, g, m, v, lr: float, beta1: float, beta2: float, eps: float, wd: float, bc1: float, bc2: float,
          gscale: float) -> None:
    """One AdamW update of p in place (m, v moments in place); g scaled by gscale first."""
    gg = g * gscale
    m *= beta1
    m += (1.0 - beta1) * gg
    v *= beta2
    v += (1.0 - beta2) * (gg * gg)
    p -= lr * (wd * p + (m / bc1) / (np.sqrt(v / bc2) + eps))


def sumsq(x: np.ndarray) -> float:
    """sum of x^2 over a 1-D array, in double."""
    return float(np.dot(x, x))
