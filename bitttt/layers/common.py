"""Helpers shared by the layers: finiteness checks that name the layer."""
from __future__ import annotations

import numpy as np


class NonFiniteError(FloatingPointError, ValueError):
    """NaN or infinity found in a layer's input, parameters or output."""


def check_finite(where: str, **arrays: np.ndarray) -> None:
    """Raise NonFiniteError naming `where` and the array if any holds NaN or inf."""
    for name, a in arrays.items():
        if a is not None and not np.isfinite(a).all():
            raise NonFiniteError(f"{where}: {name} contains NaN or infinity")
