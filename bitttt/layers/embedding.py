"""Token embedding: x[b, t] = W[ids[b, t]].  W [V, D]."""
from __future__ import annotations

import numpy as np


def embedding_forward(w: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """ids int [B, T] -> x [B, T, D] (a copy of the rows of w)."""
    return w[ids]


def embedding_backward(dx: np.ndarray, ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """dx [B, T, D] -> dW [V, D]: rows scatter-added (repeated ids accumulate)."""
    dw = np.zeros((vocab_size, dx.shape[-1]), dtype=dx.dtype)
    np.add.at(dw, ids.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    return dw
