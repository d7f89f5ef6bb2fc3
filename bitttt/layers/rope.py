"""Rotary position embedding on consecutive pairs (x[2j], x[2j+1]) of each head.

Pair j of a head of width f at position p turns by the angle p * theta^(-2j / f):
    x'[2j]   = x[2j] cos - x[2j+1] sin
    x'[2j+1] = x[2j] sin + x[2j+1] cos
TTT layers use p = t mod mini_batch_size.  Tables are built in the working dtype.
"""
from __future__ import annotations

import numpy as np


def rope_tables(positions: np.ndarray, head_dim: int, theta: float, dtype) -> tuple[np.ndarray, np.ndarray]:
    """positions [T] -> (cos, sin) [T, head_dim / 2] in `dtype`."""
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
