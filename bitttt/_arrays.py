"""Input checks shared by the kernel wrappers: one place for the error messages."""
from __future__ import annotations

import numpy as np

ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype, align: int = ALIGN) -> np.ndarray:
    """Uninitialised C-contiguous array whose data starts on an `align`-byte boundary."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off : off + nbytes].view(dtype).reshape(shape)


def check_array(x, name: str, dtype, ndim: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """Return x if it is a C-contiguous, non-empty ndarray of `dtype`; else raise.

    TypeError: not an ndarray, or wrong dtype.  ValueError: wrong rank, empty, or
    not C-contiguous.
    """
    dtype = np.dtype(dtype)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {dtype}, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {x.dtype} (convert with .astype(np.{dtype}))")
    if x.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); every dimension must be at least 1")
    if not x.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass numpy.ascontiguousarray({name})")
    return x
