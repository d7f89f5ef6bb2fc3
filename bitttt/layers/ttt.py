"""TTT-Linear (Sun et al. 2024, arXiv 2407.04620), forward and backward side by side.

Shapes: B batch, T tokens, D hidden, H heads, f = D / H, K mini-batch size, n <= K the
length of one mini-batch (the last one may be shorter).

Forward, for an input x [B, T, D] (already RMS-normalized by the block):
  Q, K_, V = BitLinear(x; q_proj, k_proj, v_proj), split in heads [B, H, T, f]
  Q, K_    = RoPE over pairs (2j, 2j+1), position t mod K
  lr[b,h,t] = ttt_base_lr * sigmoid(x[b,t] . a_h + c_h) / f          (learning-rate gate)
  tok[i]    = max(1 / (i + 1) + learnable_token_idx[i], 0)            (per-position scale)
  state (W, b) starts at (W1, b1) for every sequence; per mini-batch (dual form):
    E     = tok[:n, None] * lr[None, :]            eta[i, j] for i, j < n
    Z1    = K_ W + b;  G = d/dZ1 of 1/2 ||LN(Z1) - (V - K_)||^2    (per row, closed form)
    A     = tril(Q K_^T)                          (diagonal included)
    b_bar = b - tril(E) G
    Zb    = Q W - (tril(E) * A) G + b_bar
    out   = Q + LN(Zb)                            (inner LN: per-head weight/bias, eps 1e-6)
    W    <- W - K_^T (E[n-1]^T * G),   b <- b - E[n-1] G
  y = o_proj(post_norm(out merged to [B, T, D]))   (post_norm: LayerNorm over D, eps 1e-6)

Backward goes through every step, the carried state included: nothing is detached.
"""
from __future__ import annotations

import numpy as np

from .. import _core
from ..config import BitLlamaConfig
from .bit_linear import SharedInput, bitlinear_backward, bitlinear_forward
from .common import check_finite, mm
from .norms import layernorm_backward, layernorm_forward
from .rope import rope_apply, rope_tables
from .swiglu import _sigmoid

LN_EPS = 1e-6

def ttt_param_shapes(cfg: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """The layer's parameter names (without the layers.{i}.ttt. prefix) and shapes."""
    d, h, f, k = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    return {
        "q_proj.weight": (d, d), "k_proj.weight": (d, d), "v_proj.weight": (d, d), "o_proj.weight": (d, d),
        "W1": (h, f, f), "b1": (h, 1, f), "ttt_norm_weight": (h, f), "ttt_norm_bias": (h, f),
        "learnable_ttt_lr_weight": (h, 1, d), "learnable_ttt_lr_bias": (h, 1), "learnable_token_idx": (k,),
        "post_norm.weight": (d,), "post_norm.bias": (d,),
    }


def ttt_init(cfg: BitLlamaConfig, rng: np.random.Generator, dtype=np.float32) -> dict[str, np.ndarray]:
    """Initial parameters (normal(0, 0.02) matrices, as in the reference)."""
    d, h, f, k = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    p = {}
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"):
        p[name] = rng.normal(0.0, 0.02, (d, d))
    p["W1"] = rng.normal(0.0, 0.02, (h, f, f))
    p["b1"] = np.zeros((h, 1, f))
    p["ttt_norm_weight"] = np.ones((h, f))
    p["ttt_norm_bias"] = np.zeros((h, f))
    p["learnable_ttt_lr_weight"] = rng.normal(0.0, 0.02, (h, 1, d))
    p["learnable_ttt_lr_bias"] = np.zeros((h, 1))
    p["learnable_token_idx"] = np.zeros(k)
    p["post_norm.weight"] = np.ones(d)
    p["post_norm.bias"] = np.zeros(d)
    return {name: v.astype(dtype) for name, v in p.items()}


# ---------------------------------------------------------------------------------------
# One mini-batch in the dual form.  All arrays carry leading [B, H] axes.
# ---------------------------------------------------------------------------------------
def _tril(n: int, dtype) -> np.ndarray:
    return np.tril(np.ones((n, n), dtype=dtype))


def inner_loss_grad(Z1, target, gamma, beta):
    """G = d/dZ1 of 1/2 ||LN(Z1) - target||^2 per row (inner LN: weight gamma, bias beta, eps 1e-6)
    -> (G, (xh1, r1, go, gxh, s2)), the intermediates the backward needs.  Z1, target [.., n, f]."""
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
    return G, (xh1, r1, go, gxh, s2)


def minibatch_forward(W, b, Q, Kx, V, E, gamma, beta):
    """W [.., f, f], b [.., 1, f], Q/Kx/V [.., n, f], E [.., n, n], gamma/beta [.., 1, f]
    -> (out [.., n, f], W_new, b_new, cache)."""
    n = Q.shape[-2]
    tri = _tril(n, Q.dtype)
    G, (xh1, r1, go, gxh, s2) = inner_loss_grad(Kx @ W + b, V - Kx, gamma, beta)
    # dual form
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
    cache = (W, Q, Kx, E, Et, A, P, G, H, e_last, xh1, r1, go, gxh, s2, c2, gamma)
    return out, W_new, b_new, cache


def minibatch_backward(dout, dW_new, db_new, cache):
    """Gradients of one mini-batch.  dout [.., n, f]; dW_new, db_new: gradients of the
    state this mini-batch hands on.  -> (dW, db, dQ, dKx, dV, dE, dgamma, dbeta), where
    dgamma/dbeta keep the leading axes (the caller sums them)."""
    W, Q, Kx, E, Et, A, P, G, H, e_last, xh1, r1, go, gxh, s2, c2, gamma = cache
    n, f = Q.shape[-2], Q.shape[-1]
    dt = Q.dtype.type
    tri = _tril(n, Q.dtype)
    sw = np.swapaxes
    # out = Q + LN(Zb)
    dQ = dout.copy()
    dZb, dgamma, dbeta = layernorm_backward(dout, c2, reduce_axes=(-2,))
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


# ---------------------------------------------------------------------------------------
# The whole layer.
# ---------------------------------------------------------------------------------------
def _heads(x: np.ndarray, h: int) -> np.ndarray:
    b, t, d = x.shape
    return x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3)


def _merge(x: np.ndarray) -> np.ndarray:
    b, h, t, f = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * f)


def ttt_forward(p: dict, x: np.ndarray, cfg: BitLlamaConfig, name: str = "ttt"):
    """x [B, T, D] -> (y [B, T, D], cache).  p: the parameters by name (ttt_param_shapes).

    float32 runs the inner loop in C (src_c/ttt.c, RoPE included, parallel over sequences x
    heads); float64 runs the NumPy mini-batch functions above, the reference for the checks."""
    bsz, t, d = x.shape
    h, f, k = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    dt = x.dtype
    for pname, shape in ttt_param_shapes(cfg).items():  # the C loop trusts these shapes
        if p[pname].shape != shape:
            raise ValueError(f"{name}: parameter {pname} has shape {p[pname].shape}, the config needs {shape}")
    xs = SharedInput(x)  # q, k and v quantize x once
    q, cq = bitlinear_forward(xs, p["q_proj.weight"], cfg.ternary)
    kx, ck = bitlinear_forward(xs, p["k_proj.weight"], cfg.ternary)
    v, cv = bitlinear_forward(xs, p["v_proj.weight"], cfg.ternary)
    # learning-rate gate on the unquantized input
    a = p["learnable_ttt_lr_weight"][:, 0, :]  # [H, D]
    pre = mm(x.reshape(-1, d), a, trans_b=True).reshape(bsz, t, h).transpose(0, 2, 1) \
        + p["learnable_ttt_lr_bias"][None, :, :]
    sg = _sigmoid(pre)
    lr = sg * dt.type(cfg.ttt_base_lr / f)  # [B, H, T]
    tok_pre = dt.type(1.0) / np.arange(1, k + 1, dtype=dt) + p["learnable_token_idx"]
    tok = np.maximum(tok_pre, dt.type(0.0))
    if dt == np.float32:
        cos, sin = rope_tables(np.arange(k), f, cfg.rope_theta, dt)  # positions t mod K
        nch = -(-t // k)
        Ws = np.empty((bsz * h, nch, f, f), dtype=dt)
        saved = np.empty((bsz * h, nch, _core.ttt_saved_floats(k, f)), dtype=dt)
        merged = np.empty((bsz, t, d), dtype=dt)
        cargs = (h, np.ascontiguousarray(q), np.ascontiguousarray(kx), np.ascontiguousarray(v), cos, sin,
                 np.ascontiguousarray(lr), np.ascontiguousarray(tok), np.ascontiguousarray(p["W1"]),
                 np.ascontiguousarray(p["b1"].reshape(h, f)), np.ascontiguousarray(p["ttt_norm_weight"]),
                 np.ascontiguousarray(p["ttt_norm_bias"]))
        _core.ttt_forward(*cargs, merged, Ws, saved)
        inner = ("c", cargs, Ws, saved)
    else:
        cos, sin = rope_tables(np.arange(t) % k, f, cfg.rope_theta, dt)
        Q = rope_apply(_heads(q, h), cos, sin)
        Kx = rope_apply(_heads(kx, h), cos, sin)
        V = _heads(v, h)
        gamma = p["ttt_norm_weight"][None, :, None, :]
        beta = p["ttt_norm_bias"][None, :, None, :]
        W = np.broadcast_to(p["W1"][None], (bsz, h, f, f))
        bb = np.broadcast_to(p["b1"][None], (bsz, h, 1, f))
        out = np.empty_like(Q)
        caches = []
        for s in range(0, t, k):
            e = min(s + k, t)
            n = e - s
            E = tok[:n, None] * lr[:, :, None, s:e]
            o, W, bb, c = minibatch_forward(W, bb, Q[:, :, s:e], Kx[:, :, s:e], V[:, :, s:e], E, gamma, beta)
            out[:, :, s:e] = o
            caches.append(c)
        merged = _merge(out)
        inner = ("numpy", caches, cos, sin)
    normed, cpn = layernorm_forward(merged, p["post_norm.weight"], p["post_norm.bias"], LN_EPS)
    y, co = bitlinear_forward(normed, p["o_proj.weight"], cfg.ternary)
    check_finite(name, output=y)
    cache = (x, cq, ck, cv, sg, tok_pre, tok, inner, cpn, co, (bsz, t, d))
    return y, cache


def ttt_backward(dy: np.ndarray, cache, p: dict, cfg: BitLlamaConfig):
    """dy [B, T, D] -> (dx [B, T, D], grads under the parameter names)."""
    x, cq, ck, cv, sg, tok_pre, tok, inner, cpn, co, (bsz, t, d) = cache
    h, f, k = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    dt = x.dtype.type
    g = {}
    dnormed, g["o_proj.weight"] = bitlinear_backward(dy, co)
    dmerged, g["post_norm.weight"], g["post_norm.bias"] = layernorm_backward(dnormed, cpn)
    if inner[0] == "c":
        _, cargs, Ws, saved = inner
        r = bsz * h
        dq, dk, dv = (np.empty((bsz, t, d), dtype=x.dtype) for _ in range(3))
        dlr = np.empty((bsz, h, t), dtype=x.dtype)
        dtok_r = np.empty((r, k), dtype=x.dtype)
        dW1_r = np.empty((r, f, f), dtype=x.dtype)
        db1_r, dgamma_r, dbeta_r = (np.empty((r, f), dtype=x.dtype) for _ in range(3))
        _core.ttt_backward(*cargs, Ws, saved, np.ascontiguousarray(dmerged), dq, dk, dv, dlr, dtok_r, dW1_r, db1_r,
                           dgamma_r, dbeta_r)
        dtok = dtok_r.sum(axis=0)
        g["W1"] = dW1_r.reshape(bsz, h, f, f).sum(axis=0)
        g["b1"] = db1_r.reshape(bsz, h, 1, f).sum(axis=0)
        g["ttt_norm_weight"] = dgamma_r.reshape(bsz, h, f).sum(axis=0)
        g["ttt_norm_bias"] = dbeta_r.reshape(bsz, h, f).sum(axis=0)
    else:
        _, caches, cos, sin = inner
        dout = _heads(dmerged, h)
        dQ = np.empty((bsz, h, t, f), dtype=x.dtype)
        dK = np.empty_like(dQ)
        dV = np.empty_like(dQ)
        dlr = np.empty((bsz, h, t), dtype=x.dtype)
        dtok = np.zeros(k, dtype=x.dtype)
        dgamma = np.zeros((h, f), dtype=x.dtype)
        dbeta = np.zeros((h, f), dtype=x.dtype)
        dW = np.zeros((bsz, h, f, f), dtype=x.dtype)
        db = np.zeros((bsz, h, 1, f), dtype=x.dtype)
        lr = sg * dt(cfg.ttt_base_lr / f)
        starts = list(range(0, t, k))
        for s, c in zip(reversed(starts), reversed(caches)):
            e = min(s + k, t)
            n = e - s
            dW, db, dqc, dkc, dvc, dE, dga, dbe = minibatch_backward(dout[:, :, s:e], dW, db, c)
            dQ[:, :, s:e], dK[:, :, s:e], dV[:, :, s:e] = dqc, dkc, dvc
            dgamma += dga.sum(axis=(0, 2))
            dbeta += dbe.sum(axis=(0, 2))
            # E[b,h,i,j] = tok[i] * lr[b,h,s+j]
            dtok[:n] += np.einsum("bhij,bhj->i", dE, lr[:, :, s:e])
            dlr[:, :, s:e] = np.einsum("bhij,i->bhj", dE, tok[:n])
        g["W1"] = dW.sum(axis=0)
        g["b1"] = db.sum(axis=0)
        g["ttt_norm_weight"] = dgamma
        g["ttt_norm_bias"] = dbeta
        dq = _merge(rope_apply(dQ, cos, sin, inverse=True))
        dk = _merge(rope_apply(dK, cos, sin, inverse=True))
        dv = _merge(dV)
    g["learnable_token_idx"] = dtok * (tok_pre >= 0)
    dpre = dlr * dt(cfg.ttt_base_lr / f) * sg * (1 - sg)  # [B, H, T]
    a = p["learnable_ttt_lr_weight"][:, 0, :]
    dpre_t = np.ascontiguousarray(dpre.transpose(0, 2, 1)).reshape(-1, h)  # [B*T, H]
    g["learnable_ttt_lr_weight"] = mm(dpre_t, x.reshape(-1, d), trans_a=True)[:, None, :]
    g["learnable_ttt_lr_bias"] = dpre.sum(axis=(0, 2))[:, None]
    dx = mm(dpre_t, a).reshape(bsz, t, d)
    dxq, g["q_proj.weight"] = bitlinear_backward(dq, cq)
    dxk, g["k_proj.weight"] = bitlinear_backward(dk, ck)
    dxv, g["v_proj.weight"] = bitlinear_backward(dv, cv)
    dx += dxq  # in place, in the same order: ((dx + dxq) + dxk) + dxv
    dx += dxk
    dx += dxv
    return dx, g


class TTTLinear:
    """A TTT-Linear layer on its own: parameters under the names of ttt_param_shapes,
    forward and backward.

    layer = TTTLinear(cfg); layer.init_weights(seed); y = layer.forward(x)  (x [B, T, D]);
    dx, grads = layer.backward(dy)  (after a forward).
    """

    def __init__(self, config: BitLlamaConfig, dtype=np.float32, params: dict | None = None):
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params = params if params is not None else ttt_init(config, np.random.default_rng(0), self.dtype)
        self._cache = None

    def init_weights(self, seed: int = 0) -> None:
        self.params = ttt_init(self.config, np.random.default_rng(seed), self.dtype)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x [B, T, D] in the layer's dtype -> y [B, T, D]."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(f"TTTLinear expects x [B, T, {self.config.hidden_size}], got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"TTTLinear computes in {self.dtype}, got x of {x.dtype}")
        check_finite("TTTLinear", input=x, **{k.replace(".", "_"): v for k, v in self.params.items()})
        y, self._cache = ttt_forward(self.params, x, self.config, "TTTLinear")
        return y

    def backward(self, dy: np.ndarray):
        """dy [B, T, D] -> (dx [B, T, D], grads by parameter name)."""
        if self._cache is None:
            raise RuntimeError("TTTLinear.backward needs a forward first")
        return ttt_backward(np.asarray(dy, dtype=self.dtype), self._cache, self.params, self.config)
