"""Backends: one fixed set of ops, the same names in every backend module.

  numpy  float64, plain NumPy: the readable, executable spec every other backend is checked against
  cpu    float32 on bitttt's C kernels (AVX-512 / AVX2 / scalar, chosen at run time)
  cuda   float32 on NVIDIA GPUs: PTX kernels loaded with pycuda (pip install "bitttt[cuda]")

Layers and the model receive a backend module and call its ops (`be.rmsnorm_forward(...)`);
they never import the C bridge.  A backend is chosen once, when a model is built:
`get("cpu")`, `get("numpy")`, or `for_dtype(np.float32)` for the one that computes in a dtype.
"""
from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

NAMES = ("numpy", "cpu", "cuda")
# The op set: every backend module defines each of these with the numpy backend's signature.
OPS = ("matmul", "quantize_weight", "is_quantized", "quantize_act", "qlinear", "qlinear_dx", "qlinear_dw",
       "rmsnorm_forward", "rmsnorm_backward", "layernorm_forward", "layernorm_backward", "sigmoid",
       "swiglu_forward", "swiglu_backward", "rope_tables", "rope_apply", "embedding_forward", "embedding_backward",
       "cross_entropy_forward", "cross_entropy_backward", "ttt_forward", "ttt_backward", "ttt_prefill",
       "attention_forward", "attention_backward", "attention_cached", "lm_head", "adamw", "sumsq")
# Optional: fused_decoder(dims, layers, head), a one-call decode step over packed weights.
_DTYPES = {np.dtype(np.float64): "numpy", np.dtype(np.float32): "cpu"}


def get(name: str | ModuleType) -> ModuleType:
    """The backend module called `name` ("numpy", "cpu" or "cuda"); a backend module is returned as is.
    "cuda" opens the GPU first: bitttt.backend.cuda.CudaUnavailable (a RuntimeError) names the
    cause when pycuda, the driver or a device is missing or the PTX does not load."""
    if isinstance(name, ModuleType):
        return name
    key = str(name).strip().lower()
    if key not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}")
    mod = importlib.import_module(f"{__name__}.{key}")
    if key == "cuda":
        mod.device()
    return mod


def for_dtype(dtype) -> ModuleType:
    """The backend that computes in `dtype`: float64 -> numpy, float32 -> cpu."""
    dt = np.dtype(dtype)
    if dt not in _DTYPES:
        raise TypeError(f"dtype must be float32 (cpu backend) or float64 (numpy backend), got {dt}")
    return get(_DTYPES[dt])


def resolve(backend=None, dtype=None) -> ModuleType:
    """The backend a model asks for by `backend` (name or module) and/or `dtype`; they must agree."""
    if backend is None:
        return for_dtype(np.float32 if dtype is None else dtype)
    be = get(backend)
    if dtype is not None and np.dtype(dtype) != be.DTYPE:
        raise TypeError(f"the {be.NAME} backend computes in {be.DTYPE}, not {np.dtype(dtype)}")
    return be
