"""Layers of BitLlama-TTT, each with its forward and backward side by side."""
from .bit_linear import bitlinear_backward, bitlinear_forward
from .common import NonFiniteError
from .embedding import embedding_backward, embedding_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .norms import layernorm_backward, layernorm_forward, rmsnorm_backward, rmsnorm_forward
from .swiglu import swiglu_backward, swiglu_forward
from .ttt import TTTLinear, ttt_backward, ttt_forward

__all__ = [
    "TTTLinear", "NonFiniteError",
    "bitlinear_forward", "bitlinear_backward", "embedding_forward", "embedding_backward",
    "cross_entropy_forward", "cross_entropy_backward", "rmsnorm_forward", "rmsnorm_backward",
    "layernorm_forward", "layernorm_backward", "swiglu_forward", "swiglu_backward",
    "ttt_forward", "ttt_backward",
]
