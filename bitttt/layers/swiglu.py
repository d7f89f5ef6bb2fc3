"""SwiGLU MLP: y = down(silu(gate(x)) * up(x)); gate, up [I, D], down [D, I], all BitLinear."""
from __future__ import annotations

import numpy as np

from .. import _core
from .bit_linear import SharedInput, bitlinear_backward, bitlinear_forward


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow, in z's dtype: (1 + tanh(z / 2)) / 2."""
    half = z.dtype.type(0.5)
    out = np.tanh(z * half)
    out *= half
    out += half
    return out


def swiglu_forward(x: np.ndarray, w_gate: np.ndarray, w_up: np.ndarray, w_down: np.ndarray, ternary: bool):
    """x [..., D] -> (y [..., D], cache)."""
    xs = SharedInput(x)  # gate and up quantize x once
    g, cg = bitlinear_forward(xs, w_gate, ternary)
    u, cu = bitlinear_forward(xs, w_up, ternary)
    if g.dtype == np.float32:  # fused in C (src_c/ops.c)
        g, u = np.ascontiguousarray(g), np.ascontiguousarray(u)
        h, sg = np.empty_like(g), np.empty_like(g)
        _core.swiglu_fwd(g.reshape(-1), u.reshape(-1), h.reshape(-1), sg.reshape(-1))
    else:
        sg = _sigmoid(g)
        h = g * sg
        h *= u
    y, cd = bitlinear_forward(h, w_down, ternary)
    return y, (cg, cu, cd, g, sg, u)


def swiglu_backward(dy: np.ndarray, cache):
    """dy [..., D] -> (dx [..., D], dw_gate, dw_up, dw_down)."""
    cg, cu, cd, g, sg, u = cache
    dh, dw_down = bitlinear_backward(dy, cd)
    if g.dtype == np.float32:
        dh = np.ascontiguousarray(dh, dtype=np.float32)
        dg, du = np.empty_like(g), np.empty_like(g)
        _core.swiglu_bwd(dh.reshape(-1), g.reshape(-1), u.reshape(-1), sg.reshape(-1), dg.reshape(-1), du.reshape(-1))
        dxg, dw_gate = bitlinear_backward(dg, cg)
        dxu, dw_up = bitlinear_backward(du, cu)
        dxg += dxu  # in place: dxg is this call's own array
        return dxg, dw_gate, dw_up, dw_down
    du = dh * g
    du *= sg
    one = g.dtype.type(1.0)
    dg = one - sg
    dg *= g
    dg += one
    dg *= sg
    dg *= u
    dg *= dh
    dxg, dw_gate = bitlinear_backward(dg, cg)
    dxu, dw_up = bitlinear_backward(du, cu)
    dxg += dxu
    return dxg, dw_gate, dw_up, dw_down
