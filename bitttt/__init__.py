"""bitttt: BitLlama language models with 1.58-bit ternary weights and Test-Time-Training layers.

Public API:
  BitLlamaConfig, BitLlama, layers.TTTLinear, layers.Attention   the model (TTT, attention or hybrid)
  PackedTernary, write_packed, read_packed   packed ternary matrix (2 or 1.6 bits per weight) and its files
  quantize_activations, dot_i8, gemm_i8, bitlinear, matmul, matmul_t   CPU kernels
  set_num_threads, get_num_threads, set_kernel, get_kernel, available_kernels, cpu_info
  Tokenizer                              SentencePiece unigram / BPE with byte fallback and chat tokens
  Trainer, TrainConfig                   the training loop (python -m bitttt.train)
  load                                   a model for generation (python -m bitttt.infer)
  bitttt.data.prepare, bitttt.data.TokenData   token files and the memory-mapped batch loader
  bitttt.monitor.Monitor                 RAM / CPU / GPU use
"""
from . import _omp_env  # noqa: F401  (before the C core loads libgomp)

try:
    from . import _core  # noqa: F401  (the compiled C core)
except ImportError as _e:  # a source tree that was never built, or a build for another Python
    import glob as _glob
    import os as _os

    _here = _os.path.dirname(_os.path.abspath(__file__))
    _built = _glob.glob(_os.path.join(_here, "_core*.so")) + _glob.glob(_os.path.join(_here, "_core*.pyd"))
    _why = f"does not load ({_e})" if _built else "is not built"
    raise ImportError(
        f"bitttt: the compiled C core (bitttt._core) in {_here} {_why}. Build it: `pip install -e .` in "
        f"{_os.path.dirname(_here)} (needs a C compiler with OpenMP), or install bitttt with pip and run "
        "Python outside the source tree.") from None

from . import layers  # noqa: E402  (bitttt.layers.TTTLinear)
from .config import BitLlamaConfig
from .formats import (
    CheckpointError,
    FormatError,
    MemoryFileError,
    PackedFormatError,
    TokenFileError,
    read_packed,
    write_packed,
)
from .kernels import bitlinear, dot_i8, gemm_i8, matmul, matmul_t, quantize_activations, sgemm
from .model import BitLlama
from .runtime import (
    available_kernels,
    cpu_info,
    get_kernel,
    get_num_threads,
    set_kernel,
    set_num_threads,
)
from .ternary import PackedTernary
from .tokenizer import Tokenizer
from .trainer import TrainConfig, Trainer


def load(path: str):
    """A model for generation from a packed model file, a training checkpoint or a run directory:
    `.generate(prompt, **sampling)`, `.stream(prompt, **sampling)`, `.session()` (bitttt.generation)."""
    from .generation import load as _load

    return _load(path)

def __getattr__(name: str):
    """SessionBusyError, from bitttt.generation (imported when first asked for, as `load` does)."""
    if name == "SessionBusyError":
        from .generation import SessionBusyError

        return SessionBusyError
    raise AttributeError(f"module 'bitttt' has no attribute {name!r}")


__version__ = "0.1.0"

__all__ = [
    "BitLlama",
    "BitLlamaConfig",
    "layers",
    "PackedTernary",
    "PackedFormatError",
    "read_packed",
    "write_packed",
    "FormatError",
    "CheckpointError",
    "MemoryFileError",
    "TokenFileError",
    "SessionBusyError",
    "quantize_activations",
    "dot_i8",
    "gemm_i8",
    "bitlinear",
    "matmul",
    "matmul_t",
    "sgemm",
    "set_num_threads",
    "get_num_threads",
    "set_kernel",
    "get_kernel",
    "available_kernels",
    "cpu_info",
    "Tokenizer",
    "Trainer",
    "TrainConfig",
    "load",
]
