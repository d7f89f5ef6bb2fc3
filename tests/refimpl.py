"""NumPy reference implementations the kernels are checked against (test helpers)."""
import numpy as np


def absmean_scale(w):
    """s = mean|W| + 1e-5 in float64, then float32."""
    return np.float32(np.abs(w.astype(np.float64)).mean() + 1e-5)


def ternarize(w, s):
    """clip(round(W / s), -1, 1) computed in float32, as int64."""
    return np.clip(np.round(w.astype(np.float32) / np.float32(s)), -1, 1).astype(np.int64)


def quantize_act(x):
    """Per-row absmax int8: (xq int8, a float32)."""
    x = np.atleast_2d(x).astype(np.float32)
    a = np.float32(127.0) / np.maximum(np.abs(x).max(axis=1), np.float32(1e-5))
    q = np.clip(np.round(x * a[:, None]), -128, 127).astype(np.int8)
    return q, a.astype(np.float32)


def dot_i8(t, xq):
    """Exact integer products xq @ t.T in int64."""
    return np.atleast_2d(xq).astype(np.int64) @ t.astype(np.int64).T


def gemm_i8(t, s, xq, a):
    """float32 (int dot) * (s / a), the documented rescale."""
    return dot_i8(t, xq).astype(np.float32) * (np.float32(s) / np.asarray(a, np.float32).reshape(-1, 1))
