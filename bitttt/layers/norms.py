"""RMSNorm and LayerNorm over the last axis, forward and backward side by side."""
from __future__ import annotations

import numpy as np

from .. import _core


# -- RMSNorm: y = x / sqrt(mean(x^2) + eps) * w ---------------------------------------
def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float):
    """x [..., D], w [D] -> (y [..., D], cache).  float32 runs fused in C (src_c/ops.c)."""
    if x.dtype == np.float32 and w.dtype == np.float32:
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        y = np.empty_like(x2)
        r = np.empty(x2.shape[0], dtype=np.float32)
        _core.rmsnorm_fwd(x2, np.ascontiguousarray(w), eps, y, r)
        return y.reshape(x.shape), ("c", x2, r, w, x.shape)
    with np.errstate(over="ignore"):  # an overflow shows as r == 0; the model reports it
        r = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + x.dtype.type(eps))
    xn = x * r
    return xn * w, ("numpy", xn, r, w)


def rmsnorm_backward(dy: np.ndarray, cache):
    """dy [..., D] -> (dx [..., D], dw [D])."""
    if cache[0] == "c":
        _, x2, r, w, shape = cache
        dx = np.empty_like(x2)
        dw = np.empty(x2.shape[1], dtype=np.float32)
        _core.rmsnorm_bwd(np.ascontiguousarray(dy.reshape(x2.shape), dtype=np.float32), x2,
                          np.ascontiguousarray(w), r.reshape(-1), dx, dw)
        return dx.reshape(shape), dw
    _, xn, r, w = cache
    dw = np.sum(dy * xn, axis=tuple(range(dy.ndim - 1)))
    g = dy * w
    dx = r * (g - xn * np.mean(g * xn, axis=-1, keepdims=True))
    return dx, dw


# -- LayerNorm: y = (x - mean) / sqrt(var + eps) * w + b ------------------------------
def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float):
    """x [..., D], w and b broadcastable to x -> (y, cache).  float32 with w, b [D] runs fused in C."""
    if x.dtype == np.float32 and w.ndim == 1 and b.ndim == 1:
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        y, xh = np.empty_like(x2), np.empty_like(x2)
        r = np.empty(x2.shape[0], dtype=np.float32)
        _core.layernorm_fwd(x2, np.ascontiguousarray(w), np.ascontiguousarray(b), eps, y, xh, r)
        return y.reshape(x.shape), ("c", xh, r, w, x.shape)
    mu = np.mean(x, axis=-1, keepdims=True)
    d = x - mu
    r = 1.0 / np.sqrt(np.mean(d * d, axis=-1, keepdims=True) + x.dtype.type(eps))
    xh = d * r
    return xh * w + b, ("numpy", xh, r, w)


def layernorm_backward(dy: np.ndarray, cache, reduce_axes=None):
    """dy -> (dx, dw, db); dw and db are summed over `reduce_axes` (default: all but the last)."""
    if cache[0] == "c" and reduce_axes is None:
        _, xh, r, w, shape = cache
        dx = np.empty_like(xh)
        dw = np.empty(xh.shape[1], dtype=np.float32)
        db = np.empty(xh.shape[1], dtype=np.float32)
        _core.layernorm_bwd(np.ascontiguousarray(dy.reshape(xh.shape), dtype=np.float32), xh,
                            np.ascontiguousarray(w), r, dx, dw, db)
        return dx.reshape(shape), dw, db
    _, xh, r, w = cache
    axes = tuple(range(dy.ndim - 1)) if reduce_axes is None else reduce_axes
    dw = np.sum(dy * xh, axis=axes)
    db = np.sum(dy, axis=axes)
    g = dy * w
    dx = r * (g - np.mean(g, axis=-1, keepdims=True) - xh * np.mean(g * xh, axis=-1, keepdims=True))
    return dx, dw, db
