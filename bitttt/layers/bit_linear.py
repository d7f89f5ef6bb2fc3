"""BitLinear (W1.58A8) and its float counterpart: y = x W^T with W [N, K], through a backend.

ternary=True:  y = Qa(x) Qw(W)^T with
    Qw(W) = s * clip(rint(W / s), -1, 1),   s = mean|W| + 1e-5        (per matrix)
    Qa(x) = clip(rint(x * a), -128, 127) / a,  a = 127 / max(max|x|, 1e-5)   (per token)
  Backward: straight-through for both quantizers, dX = dY Qw(W), dW = dY^T Qa(x).
  W may be a float matrix (quantized on every call, as in training) or a weight the backend
  quantized already (`be.quantize_weight`: packed at 2 bits on the cpu backend).
ternary=False: a plain float linear layer, dX = dY W, dW = dY^T x.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class SharedInput:
    """One input x [..., K] feeding several BitLinears (q, k, v; gate, up): its activation
    quantization is computed once, and the backward's dW = dY^T Qa(x) reads the same codes."""

    def __init__(self, be, x: np.ndarray):
        self.be, self.x = be, x
        self._q = None

    def quantized(self):
        """be.quantize_act of x viewed as [M, K]."""
        if self._q is None:
            self._q = self.be.quantize_act(self.x.reshape(-1, self.x.shape[-1]))
        return self._q


class BitLinearCache(NamedTuple):
    x: Any          # the input's be.quantize_act codes and scales (ternary: the float input is not kept,
                    # dW = dY^T Qa(x) needs only them) or the float input [M, K]
    w: Any          # the quantized weight (ternary) or the float weight [N, K]
    lead: tuple     # leading shape of x
    ternary: bool


def bitlinear_forward(be, x, w, ternary: bool) -> tuple[np.ndarray, BitLinearCache]:
    """x [..., K] (or a SharedInput over it), w [N, K] -> (y [..., N], cache)."""
    shared = x if isinstance(x, SharedInput) else None
    x = shared.x if shared is not None else x
    lead = x.shape[:-1]
    if not ternary:
        x2 = x.reshape(-1, x.shape[-1])
        return be.matmul(x2, w, trans_b=True).reshape(*lead, w.shape[0]), BitLinearCache(x2, w, lead, False)
    wq = w if be.is_quantized(w) else be.quantize_weight(w)
    shared = shared if shared is not None else SharedInput(be, x)
    y = be.qlinear(shared.quantized(), wq)
    return y.reshape(*lead, y.shape[-1]), BitLinearCache(shared.quantized(), wq, lead, True)


def bitlinear_backward(be, dy: np.ndarray, c: BitLinearCache) -> tuple[np.ndarray, np.ndarray]:
    """dy [..., N] -> (dx [..., K], dw [N, K])."""
    dy2 = dy.reshape(-1, dy.shape[-1])
    if c.ternary:
        dx = be.qlinear_dx(dy2, c.w)
        dw = be.qlinear_dw(dy2, c.x)
    else:
        dx = be.matmul(dy2, c.w)
        dw = be.matmul(dy2, c.x, trans_a=True)
    return dx.reshape(*c.lead, dx.shape[-1]), dw
