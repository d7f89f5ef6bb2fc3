"""Cross-entropy over logits [B, T, V] with integer targets [B, T] and an optional 0/1 mask."""
from __future__ import annotations

import numpy as np

from .. import _core


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None):
    """loss = sum(m * CE) / sum(m) (m = 1 without a mask) -> (loss, cache).

    targets[b, t] is the label of logits[b, t] (the caller shifts).  ValueError for an
    all-zero mask, a mask of another shape, or targets out of [0, V).
    """
    v = logits.shape[-1]
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"targets shape {targets.shape} must equal logits shape {logits.shape[:-1]}")
    if targets.size and (targets.min() < 0 or targets.max() >= v):
        raise ValueError(f"targets must be token ids in [0, {v}), got values in "
                         f"[{targets.min()}, {targets.max()}]")
    dt = logits.dtype
    if mask is None:
        m = np.ones(targets.shape, dtype=dt)
    else:
        mask = np.asarray(mask)
        if mask.shape != targets.shape:
            raise ValueError(f"mask shape {mask.shape} must equal targets shape {targets.shape}")
        m = mask.astype(dt)
    total = m.sum()
    if total <= 0:
        raise ValueError("the loss mask is all zeros: no token to learn from")
    if dt == np.float32:  # softmax, loss and gradient fused in C (src_c/ops.c)
        v2 = np.ascontiguousarray(logits.reshape(-1, v))
        wt = (m / total).astype(np.float32).reshape(-1)
        d = np.empty_like(v2)
        rows = np.empty(v2.shape[0], dtype=np.float64)
        _core.softmax_xent(v2, np.ascontiguousarray(targets.reshape(-1), dtype=np.int64), wt, d, rows)
        return dt.type(rows.sum()), ("c", d.reshape(logits.shape))
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    se = e.sum(axis=-1, keepdims=True)
    logp_t = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0] - np.log(se[..., 0])
    loss = -(m * logp_t).sum() / total
    return dt.type(loss), ("numpy", e / se, targets, m, total)


def cross_entropy_backward(cache, dloss: float = 1.0) -> np.ndarray:
    """-> dlogits [B, T, V]."""
    if cache[0] == "c":
        return cache[1] if dloss == 1.0 else cache[1] * cache[1].dtype.type(dloss)
    _, p, targets, m, total = cache
    d = p.copy()
    np.put_along_axis(d, targets[..., None], np.take_along_axis(d, targets[..., None], axis=-1) - 1, axis=-1)
    return d * (m / total * dloss)[..., None]
