"""Cross-entropy over logits [B, T, V] with integer targets [B, T] and an optional 0/1 mask."""
from __future__ import annotations

import numpy as np


def cross_entropy_forward(be, logits: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None, *,
                          overwrite: bool = False):
    """loss = sum(m * CE) / sum(m) (m = 1 without a mask) -> (loss, cache).  overwrite: the backend
    may write the gradient over `logits` (the caller no longer needs them; no second [B, T, V] array).

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
    return be.cross_entropy_forward(logits, targets, m, total, overwrite=overwrite)


def cross_entropy_backward(be, cache, dloss: float = 1.0) -> np.ndarray:
    """-> dlogits [B, T, V]."""
    return be.cross_entropy_backward(cache, dloss)
