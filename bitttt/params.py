"""The parameter table: every tensor of a BitLlama with its shape, kind and init rule.

It is the one contract between the model, its initialisation, state dicts, checkpoints,
packed model files, the inference state and memory files: the tensor names are the file
format.  Nothing else spells a parameter name out or slices one apart.

Kinds:
  linear     a BitLinear weight [N, K] (ternary when config.ternary; packed in model files)
  embedding  the token embedding [V, D] (also the LM head when tied)
  head       the untied LM head [V, D]
  norm       an RMSNorm / LayerNorm weight or bias [D]
  ttt_inner  the TTT inner model's initial weights W1 [H, f, f] and b1 [H, 1, f]: the start of
             every sequence's recurrent state
Each layer's mixer is chosen by its type (config.types): a TTT layer's tensors are
`layers.{i}.ttt.*` (ttt_block), an attention layer's `layers.{i}.attn.*` (attention_block).
  float      any other float parameter (the TTT learning-rate gate, token scales, inner norm)
Init rules: ("normal", std), ("ones",), ("zeros",).  Drawn in table order from one generator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import BitLlamaConfig

KINDS = ("linear", "embedding", "head", "norm", "ttt_inner", "float")


@dataclass(frozen=True)
class ParamSpec:
    """One tensor: `name` (the file name), `shape`, `kind` (KINDS), `init` rule, and where it
    sits: `layer` (None outside the blocks), `module` ("ttt", "mlp", "" ...) and `local`, the
    name inside that module (e.g. "q_proj.weight")."""

    name: str
    shape: tuple[int, ...]
    kind: str
    init: tuple
    layer: int | None = None
    module: str = ""
    local: str = ""

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        """A float64 array drawn by this spec's rule."""
        return draw(self.init, self.shape, rng)


def draw(init: tuple, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A float64 array by an init rule (draws from `rng` only for "normal")."""
    if init[0] == "normal":
        return rng.normal(0.0, init[1], shape)
    return np.ones(shape) if init[0] == "ones" else np.zeros(shape)


def ttt_block(cfg: BitLlamaConfig) -> list[tuple[str, tuple[int, ...], str, tuple]]:
    """The TTT-Linear layer's own tensors: (local name, shape, kind, init), in init order."""
    d, h, f, k = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    n02 = ("normal", 0.02)
    return [
        ("q_proj.weight", (d, d), "linear", n02), ("k_proj.weight", (d, d), "linear", n02),
        ("v_proj.weight", (d, d), "linear", n02), ("o_proj.weight", (d, d), "linear", n02),
        ("W1", (h, f, f), "ttt_inner", n02), ("b1", (h, 1, f), "ttt_inner", ("zeros",)),
        ("ttt_norm_weight", (h, f), "float", ("ones",)), ("ttt_norm_bias", (h, f), "float", ("zeros",)),
        ("learnable_ttt_lr_weight", (h, 1, d), "float", n02), ("learnable_ttt_lr_bias", (h, 1), "float", ("zeros",)),
        ("learnable_token_idx", (k,), "float", ("zeros",)),
        ("post_norm.weight", (d,), "norm", ("ones",)), ("post_norm.bias", (d,), "norm", ("zeros",)),
    ]


def attention_block(cfg: BitLlamaConfig) -> list[tuple[str, tuple[int, ...], str, tuple]]:
    """The attention layer's tensors: q/o [D, D], k/v [Hkv f, D] (GQA: Hkv = cfg.kv_heads)."""
    d, kv = cfg.hidden_size, cfg.kv_heads * cfg.head_dim
    n02 = ("normal", 0.02)
    return [("q_proj.weight", (d, d), "linear", n02), ("k_proj.weight", (kv, d), "linear", n02),
            ("v_proj.weight", (kv, d), "linear", n02), ("o_proj.weight", (d, d), "linear", n02)]


MIXERS = {"ttt": ttt_block, "attention": attention_block}
MIXER_MODULE = {"ttt": "ttt", "attention": "attn"}  # the module name of each layer kind in tensor names


def mlp_block(cfg: BitLlamaConfig) -> list[tuple[str, tuple[int, ...], str, tuple]]:
    """The SwiGLU MLP's tensors (the down projection's std scaled by 1/sqrt(2 L), as GPT-2 does)."""
    d, i = cfg.hidden_size, cfg.intermediate_size
    return [("gate_proj.weight", (i, d), "linear", ("normal", 0.02)),
            ("up_proj.weight", (i, d), "linear", ("normal", 0.02)),
            ("down_proj.weight", (d, i), "linear", ("normal", 0.02 / math.sqrt(2 * cfg.num_layers)))]


def param_table(cfg: BitLlamaConfig) -> dict[str, ParamSpec]:
    """Every tensor of the model by name, in init (and file) order."""
    v, d = cfg.vocab_size, cfg.hidden_size
    specs = [ParamSpec("embed.weight", (v, d), "embedding", ("normal", 0.02))]
    for li in range(cfg.num_layers):
        pre = f"layers.{li}."
        specs.append(ParamSpec(pre + "norm1.weight", (d,), "norm", ("ones",), li, "", "norm1.weight"))
        specs.append(ParamSpec(pre + "norm2.weight", (d,), "norm", ("ones",), li, "", "norm2.weight"))
        kind = cfg.types[li]
        for module, block in ((MIXER_MODULE[kind], MIXERS[kind](cfg)), ("mlp", mlp_block(cfg))):
            for local, shape, kind, init in block:
                specs.append(ParamSpec(f"{pre}{module}.{local}", shape, kind, init, li, module, local))
    specs.append(ParamSpec("norm_f.weight", (d,), "norm", ("ones",)))
    if not cfg.tie_word_embeddings:
        specs.append(ParamSpec("lm_head.weight", (v, d), "head", ("normal", 0.02)))
    return {s.name: s for s in specs}


def param_shapes(cfg: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """name -> shape of every tensor (the table's shapes)."""
    return {name: s.shape for name, s in param_table(cfg).items()}


def module_params(params: dict[str, np.ndarray], cfg: BitLlamaConfig, layer: int, module: str) -> dict[str, np.ndarray]:
    """The tensors of one module of one layer, by their local names (views, not copies)."""
    return {s.local: params[s.name] for s in param_table(cfg).values() if s.layer == layer and s.module == module}


def init_params(cfg: BitLlamaConfig, seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Fresh parameters by the table's rules, deterministic in `seed` (float64 draws, cast)."""
    rng = np.random.default_rng(seed)
    return {name: np.ascontiguousarray(s.initial(rng), dtype=dtype) for name, s in param_table(cfg).items()}
