"""bitttt: BitLlama language models with 1.58-bit ternary weights and Test-Time-Training layers.

Public API:
  BitLlamaConfig, BitLlama, layers.TTTLinear     the model, forward and backward in NumPy + C
  PackedTernary                          packed 2-bit ternary matrix (quantize, save/load)
  quantize_activations, dot_i8, gemm_i8, bitlinear, matmul, matmul_t   CPU kernels
  set_num_threads, get_num_threads, set_kernel, get_kernel, available_kernels, cpu_info
  Tokenizer                              SentencePiece unigram / BPE with byte fallback and chat tokens
  Trainer, TrainConfig                   the training loop (python -m bitttt.train)
  load                                   a model for generation (python -m bitttt.infer)
  bitttt.data.prepare, bitttt.loader     token files and the memory-mapped batch loader
  bitttt.monitor.Monitor                 RAM / CPU / GPU use
"""
from . import (
    _omp_env,  # noqa: F401  (before the C core loads libgomp)
    layers,  # bitttt.layers.TTTLinear
)
from .config import BitLlamaConfig
from .formats import CheckpointError, MemoryFileError, PackedFormatError
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

__version__ = "0.1.0"

__all__ = [
    "BitLlama",
    "BitLlamaConfig",
    "layers",
    "PackedTernary",
    "PackedFormatError",
    "CheckpointError",
    "MemoryFileError",
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
