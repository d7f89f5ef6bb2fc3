"""BitLinear (W1.58A8) and its float counterpart: y = x W^T with W [N, K].

ternary=True:  y = Qa(x) Qw(W)^T with
    Qw(W) = s * clip(rint(W / s), -1, 1),   s = mean|W| + 1e-5        (per matrix)
    Qa(x) = clip(rint(x * a), -128, 127) / a,  a = 127 / max(max|x|, 1e-5)   (per token)
  Backward: straight-through for both quantizers, dX = dY Qw(W), dW = dY^T Qa(x).
  float32 runs on the packed int8 kernels (bitttt.kernels); float64 runs in NumPy.
ternary=False: a plain float linear layer, dX = dY W, dW = dY^T x.
"""
from __future__ import annotations

import numpy as np

from .. import kernels
from ..ternary import PackedTernary
from .common import mm


def quantize_weight(w: np.ndarray) -> np.ndarray:
    """Qw(W) in the dtype of w (s from a float64 mean)."""
    s = w.dtype.type(np.mean(np.abs(w), dtype=np.float64) + 1e-5)
    return np.clip(np.rint(w / s), -1, 1) * s


def quantize_act(x: np.ndarray) -> np.ndarray:
    """Qa(x) in the dtype of x, per row of the last axis."""
    one = x.dtype.type
    a = one(127.0) / np.maximum(np.max(np.abs(x), axis=-1, keepdims=True), one(1e-5))
    return np.clip(np.rint(x * a), -128, 127) / a


class SharedInput:
    """One input x feeding several BitLinears (q, k, v; gate, up): its int8 quantization
    (float32 runs) is computed once; the backward's dW = dY^T Qa(x) reads the same codes."""

    def __init__(self, x: np.ndarray):
        self.x = x
        self._q = None

    def quantized(self):
        """(xq int8 [M, K], a float32 [M]) of x viewed as [M, K]."""
        if self._q is None:
            x2 = np.ascontiguousarray(self.x.reshape(-1, self.x.shape[-1]))
            self._q = kernels.quantize_activations(x2)
        return self._q


def bitlinear_forward(x, w: np.ndarray, ternary: bool):
    """x [..., K] (or a SharedInput over it), w [N, K] -> (y [..., N], cache)."""
    shared = x if isinstance(x, SharedInput) else None
    x = shared.x if shared is not None else x
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if not ternary:
        return mm(x2, w, trans_b=True).reshape(*lead, w.shape[0]), ("float", x2, w, lead)
    if x.dtype == np.float32:
        p = PackedTernary.quantize(w)
        shared = shared if shared is not None else SharedInput(x)
        xq, a = shared.quantized()
        y = kernels.gemm_i8(p, xq, a)
        return y.reshape(*lead, w.shape[0]), ("packed", shared, p, lead)
    wq = quantize_weight(w)
    xq = quantize_act(x2)
    return (xq @ wq.T).reshape(*lead, w.shape[0]), ("numpy", xq, wq, lead)


def bitlinear_backward(dy: np.ndarray, cache):
    """dy [..., N] -> (dx [..., K], dw [N, K])."""
    kind = cache[0]
    dy2 = dy.reshape(-1, dy.shape[-1])
    if kind == "packed":
        _, shared, p, lead = cache
        dy2 = np.ascontiguousarray(dy2, dtype=np.float32)
        dx = kernels.matmul_t(p, dy2)
        xq, a = shared.quantized()
        dw = kernels.sgemm_tn_q8(dy2, xq, a)  # Qa(x) = xq / a, filled into the GEMM's panels
    else:
        _, xin, wq, lead = cache  # xin is x (float) or Qa(x) (ternary numpy)
        dx = mm(dy2, wq)
        dw = mm(dy2, xin, trans_a=True)
    return dx.reshape(*lead, dx.shape[-1]), dw
