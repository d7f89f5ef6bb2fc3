"""SwiGLU MLP: y = down(silu(gate(x)) * up(x)); gate, up [I, D], down [D, I], all BitLinear.

The cache keeps gate(x) and up(x); sigmoid(gate(x)) is recomputed by the backward (the forward's
expression, the same bits) and, for ternary layers, the inputs of the BitLinears only as int8 codes."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .bit_linear import BitLinearCache, SharedInput, bitlinear_backward, bitlinear_forward


class SwiGLUCache(NamedTuple):
    gate: BitLinearCache
    up: BitLinearCache
    down: BitLinearCache
    g: np.ndarray   # gate(x) [..., I]  (sigmoid(g) is recomputed by the backward, the same bits)
    u: np.ndarray   # up(x)


def swiglu_forward(be, x: np.ndarray, w_gate, w_up, w_down, ternary: bool) -> tuple[np.ndarray, SwiGLUCache]:
    """x [..., D] -> (y [..., D], cache)."""
    xs = SharedInput(be, x)  # gate and up quantize x once
    g, cg = bitlinear_forward(be, xs, w_gate, ternary)
    u, cu = bitlinear_forward(be, xs, w_up, ternary)
    h, _ = be.swiglu_forward(g, u, keep_sg=False)
    y, cd = bitlinear_forward(be, h, w_down, ternary)  # ternary: cd keeps h's int8 codes, not h
    return y, SwiGLUCache(cg, cu, cd, g, u)


def swiglu_backward(be, dy: np.ndarray, c: SwiGLUCache):
    """dy [..., D] -> (dx [..., D], dw_gate, dw_up, dw_down)."""
    dh, dw_down = bitlinear_backward(be, dy, c.down)
    dg, du = be.swiglu_backward(dh, c.g, c.u)
    del dh  # [..., I] temporaries dropped once read
    dxg, dw_gate = bitlinear_backward(be, dg, c.gate)
    del dg
    dxu, dw_up = bitlinear_backward(be, du, c.up)
    dxg += dxu  # in place: dxg is this call's own array
    return dxg, dw_gate, dw_up, dw_down
