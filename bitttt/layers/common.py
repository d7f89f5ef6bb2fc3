"""Helpers shared by the layers: finiteness checks that name the layer, and the base of the
layers that also work on their own (TTTLinear, Attention)."""
from __future__ import annotations

import numpy as np


class NonFiniteError(FloatingPointError, ValueError):
    """NaN or infinity found in a layer's input, parameters or output."""


def check_finite(where: str, **arrays: np.ndarray) -> None:
    """Raise NonFiniteError naming `where` and the array if any holds NaN or inf."""
    for name, a in arrays.items():
        if a is not None and not np.isfinite(a).all():
            raise NonFiniteError(f"{where}: {name} contains NaN or infinity")


class StandaloneLayer:
    """A layer used on its own: its parameters by local name (drawn by its parameter-table block,
    `block(config)`), forward and backward on the backend of `dtype` (float32: cpu, float64: numpy)
    or `backend`.  Subclasses set NAME and block and define _forward(x) -> (y, cache) and
    _backward(dy, cache) -> (dx, grads)."""

    NAME = "layer"

    @staticmethod
    def block(config) -> list:
        raise NotImplementedError

    def __init__(self, config, dtype=None, params: dict | None = None, backend=None):
        from ..backend import resolve

        self.config = config
        self.backend = resolve(backend, dtype)
        self.dtype = np.dtype(self.backend.DTYPE)
        self.params = params if params is not None else self._fresh(0)
        self._cache = None

    def _fresh(self, seed: int) -> dict:
        from ..params import draw

        rng = np.random.default_rng(seed)
        return {local: draw(init, shape, rng).astype(self.dtype) for local, shape, _, init in self.block(self.config)}

    def init_weights(self, seed: int = 0) -> None:
        self.params = self._fresh(seed)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x [B, T, D] in the layer's dtype -> y [B, T, D]."""
        x = np.asarray(x)
        if x.ndim != 3 or x.shape[-1] != self.config.hidden_size:
            raise ValueError(f"{self.NAME} expects x [B, T, {self.config.hidden_size}], got {x.shape}")
        if x.dtype != self.dtype:
            raise TypeError(f"{self.NAME} computes in {self.dtype}, got x of {x.dtype}")
        y, self._cache = self._forward(x)
        return y

    def backward(self, dy: np.ndarray):
        """dy [B, T, D] -> (dx [B, T, D], grads by parameter name)."""
        if self._cache is None:
            raise RuntimeError(f"{self.NAME}.backward needs a forward first")
        return self._backward(np.asarray(dy, dtype=self.dtype), self._cache)
