"""Ternary matrix products on the CPU (C kernels behind bitttt._core).

Shapes: W is a PackedTernary [N, K].  Activations have shape [K] (one token, GEMV)
or [M, K] (M tokens, GEMM); results keep the leading shape ([N] or [M, N]).

  quantize_activations(x)   x float32 -> (xq int8, a float32)   x ~= xq / a   per token
  dot_i8(W, xq)             exact int32   dot(w_n, xq_m)
  gemm_i8(W, xq, a)         float32       dot_i8 * (s / a_m)
  bitlinear(W, x)           float32       gemm_i8(W, *quantize_activations(x))   (W1.58A8)
  matmul(W, x)              float32       x @ (s w)^T      (float activations)
  matmul_t(W, dy)           float32       dy @ (s w)       (input gradient, [M, N] -> [M, K])
  sgemm(a, b, trans_a, trans_b)  float32  op(a) @ op(b)    dense GEMM on the same thread pool

Errors: TypeError for a wrong dtype or a non-array, ValueError for a wrong shape,
an empty or non-C-contiguous array, NaN/inf activations to quantize.  All kernels
release the GIL and run on bitttt.get_num_threads() threads.
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._arrays import aligned_empty, check_array
from .ternary import PackedTernary


def _check_w(w) -> PackedTernary:
    if not isinstance(w, PackedTernary):
        raise TypeError(f"W must be a bitttt.PackedTernary, got {type(w).__name__}")
    return w


def _rows(x: np.ndarray, k: int, name: str, w: PackedTernary, transposed: bool = False) -> np.ndarray:
    if x.shape[-1] != k:
        what = f"W {w.shape}{' transposed' if transposed else ''}"
        raise ValueError(f"{name} has {x.shape[-1]} features in its last dimension; {what} needs {k}")
    return x.reshape(1, k) if x.ndim == 1 else x


def _quantize_padded(x2: np.ndarray):
    """x [M, K] float32 -> (q [M, Kp] int8 zero-padded, a [M] float32, sums [M] int32)."""
    m, k = x2.shape
    q = aligned_empty((m, _core.padded_cols(k)), np.int8)
    a = np.empty(m, dtype=np.float32)
    sums = np.empty(m, dtype=np.int32)
    _core.quantize_act(x2, q, a, sums)
    return q, a, sums


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-token absmax int8 quantization (BitNet b1.58).

    x float32 [K] or [M, K] -> (xq int8 of x's shape, a float32 [M] or a 0-d array) with
    a = 127 / max(max|x|, 1e-5) and xq = clip(round(x * a), -128, 127), round half to even.
    """
    x = check_array(x, "x", np.float32)
    x2 = x.reshape(1, -1) if x.ndim == 1 else x
    q, a, _ = _quantize_padded(x2)
    q = np.ascontiguousarray(q[:, : x2.shape[1]])
    return (q[0], a[0:1].reshape(())) if x.ndim == 1 else (q, a)


def dot_i8(w: PackedTernary, xq: np.ndarray) -> np.ndarray:
    """Exact int32 products dot(w_n, xq_m): xq int8 [K] or [M, K] -> [N] or [M, N]."""
    w = _check_w(w)
    xq = check_array(xq, "xq", np.int8)
    x2 = _rows(xq, w.cols, "xq", w)
    out = np.empty((x2.shape[0], w.rows), dtype=np.int32)
    _core.gemm_i8_raw(w.codes, w.cols, x2, out, w.fmt)
    return out[0] if xq.ndim == 1 else out


def gemm_i8(w: PackedTernary, xq: np.ndarray, a) -> np.ndarray:
    """float32 y = dot_i8(W, xq) * (s / a): xq int8 [K] or [M, K], a float32 [M] -> [N] or [M, N]."""
    w = _check_w(w)
    xq = check_array(xq, "xq", np.int8)
    x2 = _rows(xq, w.cols, "xq", w)
    if not isinstance(a, np.ndarray) or a.dtype != np.float32:
        raise TypeError(f"a must be a float32 numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
    if a.size != x2.shape[0]:
        raise ValueError(f"a must hold one scale per token ({x2.shape[0]}), got {a.size}")
    y = np.empty((x2.shape[0], w.rows), dtype=np.float32)
    _core.gemm_i8(w.codes, w.cols, w.scale, x2, np.ascontiguousarray(a).reshape(-1), y, w.fmt)
    return y[0] if xq.ndim == 1 else y


def bitlinear(w: PackedTernary, x: np.ndarray) -> np.ndarray:
    """W1.58A8 linear layer: y = Qa(x) @ (s w)^T, x float32 [K] or [M, K] -> [N] or [M, N]."""
    w = _check_w(w)
    x = check_array(x, "x", np.float32)
    x2 = _rows(x, w.cols, "x", w)
    y = np.empty((x2.shape[0], w.rows), dtype=np.float32)
    _core.bitlinear(w.codes, w.cols, w.scale, x2, y, np.empty(x2.shape[0], dtype=np.float32), w.fmt)
    return y[0] if x.ndim == 1 else y


def matmul(w: PackedTernary, x: np.ndarray) -> np.ndarray:
    """float32 y = x @ (s w)^T: x float32 [K] or [M, K] -> [N] or [M, N]."""
    w = _check_w(w)
    x = check_array(x, "x", np.float32)
    x2 = _rows(x, w.cols, "x", w)
    y = np.empty((x2.shape[0], w.rows), dtype=np.float32)
    _core.gemm_f32(w.codes, w.cols, w.scale, x2, y, w.fmt)
    return y[0] if x.ndim == 1 else y


def matmul_t(w: PackedTernary, dy: np.ndarray) -> np.ndarray:
    """float32 dx = dy @ (s w): dy float32 [N] or [M, N] -> [K] or [M, K] (backward of matmul)."""
    w = _check_w(w)
    dy = check_array(dy, "dy", np.float32)
    d2 = _rows(dy, w.rows, "dy", w, transposed=True)
    dx = np.empty((d2.shape[0], w.cols), dtype=np.float32)
    _core.gemm_f32_t(w.codes, w.cols, w.scale, d2, dx, w.fmt)
    return dx[0] if dy.ndim == 1 else dx


def sgemm_tn_q8(a: np.ndarray, q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """a.T @ (q / s[:, None]) in float32: a [P, M] float32, q [P, N] int8 activation codes, s [P] their
    scales -> [M, N].  The BitLinear weight gradient dY^T Qa(x) straight from the codes; the same
    bits as sgemm(a, dequantized, trans_a=True)."""
    a = check_array(a, "a", np.float32, ndim=(2,))
    q = check_array(q, "q", np.int8, ndim=(2,))
    s = check_array(s, "s", np.float32, ndim=(1,))
    if q.shape[0] != a.shape[0] or s.shape[0] != a.shape[0]:
        raise ValueError(f"sgemm_tn_q8: a is {a.shape}, q {q.shape} and s {s.shape}: their first axes must agree")
    c = np.empty((a.shape[1], q.shape[1]), dtype=np.float32)
    _core.sgemm_tn_q8(a, q, s, c)
    return c


def sgemm(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """Dense float32 C = op(a) @ op(b), op(x) = x.T when its flag is set: a [M, P] (or [P, M]),
    b [P, N] (or [N, P]) -> [M, N].  Runs on bitttt's own threads (no BLAS), summing each
    output in order of p, so results do not depend on the ISA or the thread count."""
    a = check_array(a, "a", np.float32, ndim=(2,))
    b = check_array(b, "b", np.float32, ndim=(2,))
    m, p = (a.shape[1], a.shape[0]) if trans_a else a.shape
    pb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if p != pb:
        raise ValueError(f"sgemm: op(a) is {m}x{p} but op(b) is {pb}x{n}")
    c = np.empty((m, n), dtype=np.float32)
    _core.sgemm(a, b, c, trans_a, trans_b)
    return c
