"""Layers of BitLlama (TTT-Linear, attention, SwiGLU), each with its forward and backward side
by side; every op they use comes from the backend passed as their first argument (bitttt.backend)."""
from .attention import Attention, KVCache, attention_backward, attention_forward, attention_prefill
from .bit_linear import SharedInput, bitlinear_backward, bitlinear_forward
from .common import NonFiniteError, check_finite
from .loss import cross_entropy_backward, cross_entropy_forward
from .swiglu import swiglu_backward, swiglu_forward
from .ttt import TTTLinear, ttt_backward, ttt_forward, ttt_prefill

__all__ = [
    "Attention", "KVCache", "attention_forward", "attention_backward", "attention_prefill",
    "TTTLinear", "NonFiniteError", "SharedInput", "check_finite",
    "bitlinear_forward", "bitlinear_backward", "cross_entropy_forward", "cross_entropy_backward",
    "swiglu_forward", "swiglu_backward", "ttt_forward", "ttt_backward", "ttt_prefill",
]
