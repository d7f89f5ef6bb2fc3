"""Helpers shared by the layers: finiteness checks that name the layer."""
from __future__ import annotations

import numpy as np

from ..kernels import sgemm


class NonFiniteError(FloatingPointError, ValueError):
    """NaN or infinity found in a layer's input, parameters or output."""


def check_finite(where: str, **arrays: np.ndarray) -> None:
    """Raise NonFiniteError naming `where` and the array if any holds NaN or inf."""
    for name, a in arrays.items():
        if a is not None and not np.isfinite(a).all():
            raise NonFiniteError(f"{where}: {name} contains NaN or infinity")


def mm(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """op(a) @ op(b) for 2-D arrays: float32 on bitttt's own GEMM (one thread pool, no BLAS
    threads spinning against ours), float64 in NumPy (the gradient-check path)."""
    if a.dtype == np.float32 and b.dtype == np.float32:
        return sgemm(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a, trans_b)
    return (a.T if trans_a else a) @ (b.T if trans_b else b)
