"""BitLlama: embedding, N blocks of (RMSNorm -> mixer, RMSNorm -> SwiGLU), RMSNorm, LM head.

    h = x + Mixer_i(RMSNorm(x; layers.i.norm1.weight))      Mixer_i: TTT-Linear or attention
    x = h + MLP(RMSNorm(h; layers.i.norm2.weight))
    logits = RMSNorm(x; norm_f.weight) @ lm_head^T      (lm_head = embed.weight when tied)

The tensors are those of the parameter table (bitttt.params).  Every op runs on the model's
backend, chosen once at construction: `cpu` (float32, C kernels; the default) or `numpy`
(float64, the spec; BitLlama(config, dtype=np.float64) picks it).  Training: `forward`,
`loss_and_grads`.  Inference: `new_state`, `prefill(state, tokens)`, `step(state, token)`,
`step_batch(states, tokens)` (one token of each of B sequences in one pass), the TTT state
being the model's memory (no KV cache, no context limit).

Each layer's mixer is its config type (config.types): TTT-Linear (bitttt.layers.ttt) or causal
GQA attention (bitttt.layers.attention).  A model with attention layers carries a ModelState:
the TTT state of its TTT layers (if any) and a KV cache per attention layer, which holds at most
config.max_position_embeddings tokens (reading past it is refused, nothing changed).
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from .backend import resolve
from .config import BitLlamaConfig
from .layers.attention import KVCache, attention_backward, attention_forward, attention_prefill
from .layers.common import NonFiniteError, check_finite
from .layers.loss import cross_entropy_backward, cross_entropy_forward
from .layers.swiglu import SwiGLUCache, swiglu_backward, swiglu_forward
from .layers.ttt import (
    TTTLayerState,
    blend_toward,
    token_scales,
    ttt_backward,
    ttt_forward,
    ttt_initial_state,
    ttt_prefill,
    ttt_step_batch,
)
from .params import init_params, module_params, param_shapes, param_table

__all__ = ["BitLlama", "TTTState", "ModelState", "StreamCarry", "param_shapes"]


class TTTState:
    """The recurrent state of every layer, stacked: W0 [L, H, f, f], b0 [L, H, f], the factors of
    the current mini-batch's gradient sum Kb, Gb [L, H, K, f] (rows < pos are live), Sb [L, H, f],
    pos (tokens read in the current mini-batch, 0 <= pos < K) and n_tokens (tokens read in all)."""

    def __init__(self, W0, b0, Kb, Gb, Sb, pos: int = 0, n_tokens: int = 0):
        self.W0, self.b0, self.Kb, self.Gb, self.Sb = W0, b0, Kb, Gb, Sb
        self.pos, self.n_tokens = int(pos), int(n_tokens)

    def copy(self) -> TTTState:
        return TTTState(self.W0.copy(), self.b0.copy(), self.Kb.copy(), self.Gb.copy(), self.Sb.copy(), self.pos,
                        self.n_tokens)

    def layer(self, li: int) -> TTTLayerState:
        """Layer li's part (views: the layer updates the stack in place)."""
        return TTTLayerState(self.W0[li], self.b0[li], self.Kb[li], self.Gb[li], self.Sb[li])

    def arrays(self) -> dict[str, np.ndarray]:
        """The state's tensors by name (the memory file's tensors)."""
        return {"W0": self.W0, "b0": self.b0, "Kb": self.Kb, "Gb": self.Gb, "Sb": self.Sb}

    @property
    def SW(self) -> np.ndarray:
        """The dense gradient sum of the current mini-batch, sum_{j<pos} k_j^T g_j [L, H, f, f]."""
        p = self.pos
        return np.einsum("lhji,lhjk->lhik", self.Kb[:, :, :p], self.Gb[:, :, :p]).astype(self.W0.dtype)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays().values())


class ModelState:
    """The inference state of a model with attention layers: `ttt`, the TTTState of its TTT
    layers stacked in layer order (None when it has none); `kv`, a KVCache per attention layer
    (by layer index).  Memory files hold the `ttt` part only: a hybrid's state loaded from one
    starts with empty KV caches."""

    def __init__(self, ttt: TTTState | None, kv: dict[int, KVCache]):
        self.ttt, self.kv = ttt, kv

    @property
    def context(self) -> int:
        """Tokens held by the KV caches (the next token's position in the attention layers)."""
        return next(iter(self.kv.values())).n if self.kv else 0

    @property
    def n_tokens(self) -> int:
        """Tokens read: by the TTT part when there is one (it survives a memory file), else the context."""
        return self.ttt.n_tokens if self.ttt is not None else self.context

    @property
    def pos(self) -> int:
        """The TTT layers' position in their mini-batch (0 without TTT layers)."""
        return self.ttt.pos if self.ttt is not None else 0

    def copy(self) -> ModelState:
        return ModelState(None if self.ttt is None else self.ttt.copy(), {i: c.copy() for i, c in self.kv.items()})

    def arrays(self) -> dict[str, np.ndarray]:
        """The TTT part's tensors by name (the memory file's); ValueError without TTT layers."""
        if self.ttt is None:
            raise ValueError("this model has attention layers only: it has no TTT state to save "
                             "(its context is a KV cache, kept for the session only)")
        return self.ttt.arrays()

    @property
    def nbytes(self) -> int:
        return (self.ttt.nbytes if self.ttt is not None else 0) + sum(c.nbytes for c in self.kv.values())


def _toward(a: np.ndarray, a1: np.ndarray, share: float) -> None:
    """a <- a1 + (1 - share) (a - a1), in place, in a's dtype (the state decay)."""
    blend_toward(a, a1, a.dtype.type(1.0 - share))


class StreamCarry:
    """The TTT state carried from one training window to the next (streaming training), for B
    sequences: per TTT layer li, W[li] [B, H, f, f] and b[li] [B, H, 1, f] (float32 / the model
    dtype); fresh [B] bool: the sequence's next window starts from the trained (W1, b1) instead
    (the start of a stream, or after a jump in the text).  `BitLlama.loss_and_grads(..., carry=)`
    reads it and leaves in it the state after the window."""

    def __init__(self, config: BitLlamaConfig, batch: int, dtype=np.float32):
        h, f = config.num_heads, config.head_dim
        self.layers = [li for li in range(config.num_layers) if config.types[li] != "attention"]
        self.W = {li: np.zeros((batch, h, f, f), dtype) for li in self.layers}
        self.b = {li: np.zeros((batch, h, 1, f), dtype) for li in self.layers}
        self.fresh = np.ones(batch, dtype=bool)
        self.read = np.zeros(batch, dtype=np.int64)  # tokens each sequence's state has read since its start

    @property
    def batch(self) -> int:
        return len(self.fresh)

    def arrays(self) -> dict[str, np.ndarray]:
        """The carried tensors by name (W.<layer>, b.<layer>, fresh as uint8, read as int64) for a checkpoint."""
        out = {f"W.{li}": self.W[li] for li in self.layers}
        out.update({f"b.{li}": self.b[li] for li in self.layers})
        out["fresh"] = self.fresh.astype(np.uint8)
        out["read"] = self.read
        return out

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore what arrays() gave (shapes must match: ValueError)."""
        for name, a in self.arrays().items():
            if name == "read" and name not in arrays:
                continue
            if name not in arrays or tuple(arrays[name].shape) != a.shape:
                raise ValueError(f"streaming state: {name} missing or of the wrong shape")
        for li in self.layers:
            self.W[li] = np.array(arrays[f"W.{li}"], dtype=self.W[li].dtype)
            self.b[li] = np.array(arrays[f"b.{li}"], dtype=self.b[li].dtype)
        self.fresh = np.asarray(arrays["fresh"]).astype(bool)
        self.read = np.array(arrays["read"], dtype=np.int64) if "read" in arrays else np.zeros(self.batch, np.int64)


class BlockCache(NamedTuple):
    x: np.ndarray     # the block input [B, T, D] (norm1 recomputes the TTT layer's input from it)
    norm1: tuple
    ttt: tuple        # the mixer's cache: TTTLayerCache or AttentionLayerCache
    norm2: tuple
    mlp: SwiGLUCache


class ForwardCache(NamedTuple):
    tokens: np.ndarray
    blocks: list      # BlockCache per layer
    nf: np.ndarray    # the final norm's output [B, T, D]
    norm_f: tuple


def _check_norm(where: str, cache) -> None:
    """RMSNorm's 1/rms is 0 when the squares overflow: the stream has blown up."""
    r = cache.r
    if not (np.isfinite(r).all() and (r > 0).all()):
        raise NonFiniteError(f"{where}: the residual stream overflows (values too large for the dtype)")


class BitLlama:
    """The model.  Parameters live in `self.params` (name -> ndarray of `self.dtype`; in a model
    made by `for_inference`, BitLinear weights are the backend's quantized weights)."""

    def __init__(self, config: BitLlamaConfig, dtype=None, *, backend=None, init: bool = True):
        if not isinstance(config, BitLlamaConfig):
            raise TypeError(f"config must be a BitLlamaConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.backend = resolve(backend, dtype)
        self.dtype = np.dtype(self.backend.DTYPE)
        self.params: dict[str, np.ndarray] = {}
        self.head = None          # for_inference: the LM head used by prefill/step (float or int8)
        self.inference_only = False
        self._fused = None
        self._fused_lock = threading.Lock()  # the fused decoder's scratch is shared: one token at a time
        self._fresh_ttt = None  # (W0, b0, params) of a fresh state: the target of the state decay
        self.kv_dtype = "float16"  # the KV cache of attention layers: float16 | int8 | float32
        if init:  # init=False: the caller fills self.params (for_inference)
            self.init_weights(0)

    def __repr__(self) -> str:
        c = self.config
        kind = "ternary" if c.ternary else "float"
        arch = "" if c.kind == "ttt" else f"{c.kind}, "
        return (f"BitLlama({arch}D={c.hidden_size}, layers={c.num_layers}, heads={c.num_heads}, V={c.vocab_size}, "
                f"{kind}, {self.num_params():,} parameters, backend={self.backend.NAME})")

    # -- parameters -----------------------------------------------------------------
    def init_weights(self, seed: int = 0) -> None:
        """The parameter table's init rules (normal(0, 0.02) matrices, unit norm weights, zero
        biases), deterministic in `seed`."""
        self.params = init_params(self.config, seed, self.dtype)
        self._fused = None

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, by tensor name."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, d: dict) -> None:
        """Load parameters by name; every name and shape must match the config (ValueError)."""
        shapes = param_shapes(self.config)
        missing = sorted(set(shapes) - set(d))
        unexpected = sorted(set(d) - set(shapes))
        if missing or unexpected:
            raise ValueError("state dict does not match the config: "
                             + (f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                                if missing else "")
                             + (f"unexpected {', '.join(unexpected[:5])}" if unexpected else ""))
        new = {}
        for name, shape in shapes.items():
            v = np.asarray(d[name])
            if v.shape != shape:
                raise ValueError(f"{name}: shape {v.shape} does not match the config's {shape}")
            if v.dtype.kind not in "fiu":
                raise TypeError(f"{name}: expected a numeric array, got dtype {v.dtype}")
            check_finite(name, value=v)
            new[name] = np.ascontiguousarray(v, dtype=self.dtype)
        self.params = new
        self._fused = None

    def num_params(self) -> int:
        return int(sum(int(np.prod(s)) for s in param_shapes(self.config).values()))

    @classmethod
    def for_inference(cls, config: BitLlamaConfig, params: dict, *, quantized: dict | None = None, head=None,
                      backend="cpu") -> BitLlama:
        """A model ready for generation: BitLinear weights quantized once (`quantized`: weights
        the backend made already, e.g. PackedTernary from a packed file; the others are
        quantized here), the rest in the backend's dtype (a float16 embedding stays float16 and
        its rows are converted when looked up).  `head`: the LM head used by prefill and step (a
        float [V, D] array or the backend's Int8Head; default: the model's own head)."""
        m = cls(config, backend=backend, init=False)
        be, quantized = m.backend, quantized or {}
        p = {}
        for name, spec in param_table(config).items():
            if name in quantized:
                p[name] = quantized[name]
            elif spec.kind == "linear" and config.ternary:
                p[name] = be.quantize_weight(np.ascontiguousarray(params[name], dtype=m.dtype))
            elif name == "embed.weight" and params[name].dtype == np.float16:
                p[name] = np.ascontiguousarray(params[name])
            else:
                p[name] = np.ascontiguousarray(params[name], dtype=m.dtype)
        m.params, m.inference_only = p, True
        m.head = head if head is not None else np.ascontiguousarray(m._head(), dtype=m.dtype)
        return m

    # -- forward / backward ---------------------------------------------------------
    def _check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens)
        if t.dtype.kind not in "iu":
            raise TypeError(f"tokens must be integer ids, got dtype {t.dtype}")
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.size == 0:
            raise ValueError(f"tokens must have shape [B, T] with B, T >= 1, got {np.shape(tokens)}")
        v = self.config.vocab_size
        if t.min() < 0 or t.max() >= v:
            raise ValueError(f"token ids must be in [0, {v}), got values in [{t.min()}, {t.max()}]")
        return t.astype(np.int64)

    def _head(self) -> np.ndarray:
        return self.params["embed.weight" if self.config.tie_word_embeddings else "lm_head.weight"]

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        x = self.backend.embedding_forward(self.params["embed.weight"], ids)
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def _block(self, li: int, x: np.ndarray, mixer) -> tuple[np.ndarray, BlockCache]:
        """One block on x [..., D]: `mixer(li, n1) -> (a, cache)` is the TTT layer (the training
        forward, or the recurrent read of prefill)."""
        be, cfg, p = self.backend, self.config, self.params
        pre = f"layers.{li}."
        x_in = x
        n1, c1 = be.rmsnorm_forward(x, p[pre + "norm1.weight"], cfg.rms_norm_eps)
        _check_norm(pre + "norm1", c1)
        a, ct = mixer(li, n1)
        del n1  # the training caches keep its int8 codes only (the backward recomputes it where needed)
        h = np.add(x, a, out=a)  # a is the layer's own output: no new array
        n2, c2 = be.rmsnorm_forward(h, p[pre + "norm2.weight"], cfg.rms_norm_eps)
        _check_norm(pre + "norm2", c2)
        m, cm = swiglu_forward(be, n2, p[pre + "mlp.gate_proj.weight"], p[pre + "mlp.up_proj.weight"],
                               p[pre + "mlp.down_proj.weight"], cfg.ternary)
        x = np.add(h, m, out=m)
        check_finite(pre + "mlp", output=x)
        return x, BlockCache(x_in, c1, ct, c2, cm)

    def _forward(self, tokens: np.ndarray, carry: StreamCarry | None = None,
                 resets: np.ndarray | None = None) -> tuple[np.ndarray, ForwardCache]:
        be, cfg, p = self.backend, self.config, self.params
        for name, v in p.items():
            if not np.isfinite(v).all():
                raise NonFiniteError(f"parameter {name} contains NaN or infinity")
        if carry is not None:
            nch = -(-tokens.shape[1] // cfg.mini_batch_size)
            if carry.batch != tokens.shape[0]:
                raise ValueError(f"the carried state holds {carry.batch} sequences, the batch has {tokens.shape[0]}")
            r = np.zeros((tokens.shape[0], nch), dtype=np.uint8) if resets is None else np.array(resets, np.uint8)
            r[:, 0] |= carry.fresh.astype(np.uint8)
            resets = r

        def mixer(li, n1):
            if cfg.types[li] == "attention":
                return attention_forward(be, module_params(p, cfg, li, "attn"), n1, cfg, name=f"layers.{li}.attn")
            init = None if carry is None else (carry.W[li], carry.b[li])
            return ttt_forward(be, module_params(p, cfg, li, "ttt"), n1, cfg, name=f"layers.{li}.ttt", init=init,
                               resets=resets, keep_input=not cfg.ternary)  # float: q/k/v's caches hold it

        x = self._embed(tokens)
        blocks = []
        for li in range(cfg.num_layers):
            x, bc = self._block(li, x, mixer)
            blocks.append(bc)
        nf, cf = be.rmsnorm_forward(x, p["norm_f.weight"], cfg.rms_norm_eps)
        _check_norm("norm_f", cf)
        logits = be.lm_head(nf.reshape(-1, nf.shape[-1]), self._head()).reshape(*nf.shape[:-1], -1)
        check_finite("lm_head", logits=logits)
        return logits, ForwardCache(tokens, blocks, nf, cf)

    def _trainable(self) -> None:
        if self.inference_only:
            raise RuntimeError("this model was prepared for inference (quantized weights): it has no gradients")

    def forward(self, tokens, *, carry: StreamCarry | None = None, resets=None) -> np.ndarray:
        """tokens int [B, T] (or [T]) -> logits [B, T, V] in the model dtype.  carry, resets: as in
        loss_and_grads (the carry then holds the state after these tokens)."""
        self._trainable()
        t = self._check_tokens(tokens)
        logits, fc = self._forward(t, carry, resets)
        if carry is not None:
            self._hand_on(carry, t.shape[1], self._finals(carry, fc))
        return logits if np.ndim(tokens) == 2 else logits[0]

    def loss_and_grads(self, tokens, targets, mask=None, *, carry: StreamCarry | None = None,
                       resets=None) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of logits[b, t] against targets[b, t] (weighted by a 0/1 mask)
        and its gradient for every parameter, by tensor name.

        Streaming training: `carry` (a StreamCarry for the B sequences) is the TTT state each
        sequence starts from (the trained (W1, b1) where carry.fresh); on return it holds the state
        after this window (fresh all False).  The gradient treats the carried state as a constant
        (truncated at the window edge, as truncated BPTT).  resets [B, ceil(T / K)] 0/1: mini-batches
        whose state restarts from (W1, b1) (e.g. after an <|endoftext|>)."""
        self._trainable()
        be, cfg, p = self.backend, self.config, self.params
        t = self._check_tokens(tokens)
        tg = np.asarray(targets)
        if tg.ndim == 1 and t.shape[0] == 1:
            tg = tg[None]
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == 1 and t.shape[0] == 1:
                mask = mask[None]
        if tg.dtype.kind not in "iu":
            raise TypeError(f"targets must be integer ids, got dtype {tg.dtype}")
        if (carry is not None or resets is not None) and all(ty == "attention" for ty in cfg.types):
            raise ValueError("streaming training carries the TTT state: this model has no TTT layers")
        logits, fc = self._forward(t, carry, resets)
        # the gradient is written over the logits (no second [B, T, V] array)
        loss, cl = cross_entropy_forward(be, logits, tg.astype(np.int64), mask, overwrite=True)
        del logits
        if not np.isfinite(loss):
            raise NonFiniteError(f"loss is {loss}: training diverged")
        finals = self._finals(carry, fc) if carry is not None else None
        g = {}
        dlogits = np.asarray(cross_entropy_backward(be, cl), dtype=self.dtype)
        del cl
        head, nf = self._head(), fc.nf
        dl2 = dlogits.reshape(-1, dlogits.shape[-1])
        dhead = be.matmul(dl2, nf.reshape(-1, nf.shape[-1]), trans_a=True)
        dnf = be.matmul(dl2, head).reshape(nf.shape)
        del dlogits, dl2, nf
        dx, g["norm_f.weight"] = be.rmsnorm_backward(dnf, fc.norm_f)
        del dnf
        blocks, ids = fc.blocks, fc.tokens
        fc = None  # each layer's cache is released as soon as its backward is done
        for li in reversed(range(cfg.num_layers)):
            pre = f"layers.{li}."
            x_in, c1, cmix, c2, cm = blocks[li]  # each part dropped once its backward has run
            blocks[li] = None
            dn2, dgate, dup, ddown = swiglu_backward(be, dx, cm)
            del cm
            g[pre + "mlp.gate_proj.weight"], g[pre + "mlp.up_proj.weight"] = dgate, dup
            g[pre + "mlp.down_proj.weight"] = ddown
            dh_norm, g[pre + "norm2.weight"] = be.rmsnorm_backward(dn2, c2)
            del c2, dn2
            dh = np.add(dx, dh_norm, out=dh_norm)
            del dx
            if cfg.types[li] == "attention":
                dn1, tg_grads = attention_backward(be, dh, cmix, cfg)
                module = "attn."
            else:
                # ternary: the layer's input, recomputed by the forward's own call (the same bits)
                n1 = None if cmix.x is not None else \
                    be.rmsnorm_forward(x_in, p[pre + "norm1.weight"], cfg.rms_norm_eps)[0]
                dn1, tg_grads = ttt_backward(be, dh, cmix, module_params(p, cfg, li, "ttt"), cfg, x=n1)
                del n1
                module = "ttt."
            del cmix, x_in
            for k, v in tg_grads.items():
                g[pre + module + k] = v
            dx_norm, g[pre + "norm1.weight"] = be.rmsnorm_backward(dn1, c1)
            dx = np.add(dh, dx_norm, out=dx_norm)
            del c1, dn1, dh, tg_grads
        demb = be.embedding_backward(dx, ids, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            g["embed.weight"] = demb + dhead
        else:
            g["embed.weight"] = demb
            g["lm_head.weight"] = dhead
        g = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in g.items()}
        if carry is not None:
            self._hand_on(carry, t.shape[1], finals)
        return float(loss), {k: g[k] for k in p}

    @staticmethod
    def _finals(carry: StreamCarry, fc: ForwardCache) -> dict:
        """The state after the window of each carried layer (li -> (W, b)), from the forward's caches."""
        return {li: fc.blocks[li].ttt.final for li in carry.layers}

    def _hand_on(self, carry: StreamCarry, t: int, finals: dict) -> None:
        """Leave in `carry` the state after the window of t tokens (`finals`, for the next one),
        decayed where the stream has read a multiple of config.state_decay_every tokens since its start."""
        cfg = self.config
        carry.read = np.where(carry.fresh, 0, carry.read) + t
        for li in carry.layers:
            carry.W[li], carry.b[li] = finals[li]
        carry.fresh[:] = False
        if cfg.decays:
            if cfg.state_decay_every % t:
                raise ValueError(f"config.state_decay_every ({cfg.state_decay_every}) must be a multiple of the "
                                 f"window length ({t}) to train with a carried state")
            rows = np.flatnonzero(carry.read % cfg.state_decay_every == 0)
            h, f = cfg.num_heads, cfg.head_dim
            for li in carry.layers if rows.size else ():
                p = module_params(self.params, cfg, li, "ttt")
                W1, b1 = p["W1"].astype(carry.W[li].dtype), p["b1"].reshape(h, 1, f).astype(carry.b[li].dtype)
                for r in rows:
                    _toward(carry.W[li][r], W1, cfg.state_decay)
                    _toward(carry.b[li][r], b1, cfg.state_decay)

    # -- inference --------------------------------------------------------------------
    def new_state(self, kv_dtype: str | None = None) -> TTTState | ModelState:
        """Every sequence starts from the trained (W1, b1) of each TTT layer, with empty sums: a
        TTTState for a pure-TTT model; with attention layers a ModelState that adds an empty KV
        cache per attention layer (kv_dtype "float16" | "int8" | "float32", default self.kv_dtype)."""
        cfg = self.config
        ttt = self.new_ttt_state()
        if cfg.kind == "ttt":
            return ttt
        kv = {li: KVCache(cfg.kv_heads, cfg.head_dim, cfg.max_position_embeddings, kv_dtype or self.kv_dtype)
              for li in cfg.layers_of("attention")}
        return ModelState(ttt, kv)

    def new_ttt_state(self) -> TTTState | None:
        """The fresh TTT state of the TTT layers, stacked in layer order (None without any)."""
        cfg = self.config
        layers = cfg.layers_of("ttt")
        if not layers:
            return None
        per = [ttt_initial_state(module_params(self.params, cfg, li, "ttt"), cfg, self.dtype) for li in layers]
        return TTTState(*(np.stack([s[n] for s in per]) for n in ("W0", "b0", "Kb", "Gb", "Sb")))

    def _check_ids(self, tokens) -> np.ndarray:
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("feed needs at least one token")
        v = self.config.vocab_size
        if ids.min() < 0 or ids.max() >= v:
            raise ValueError(f"token ids must be in [0, {v}), got values in [{ids.min()}, {ids.max()}]")
        return ids

    def _logits(self, x: np.ndarray) -> np.ndarray:
        nf, _ = self.backend.rmsnorm_forward(np.ascontiguousarray(x), self.params["norm_f.weight"],
                                             self.config.rms_norm_eps)
        head = self.head if self.head is not None else self._head()
        logits = self.backend.lm_head(np.ascontiguousarray(nf), head)
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model produced NaN or infinite logits")
        return logits

    def prefill(self, state: TTTState | ModelState, tokens, all_logits: bool = False) -> np.ndarray:
        """Read `tokens` (ints [T], T >= 1, one sequence) into `state` (updated in place), one
        layer at a time -> logits of the last token [V], or of every token [T, V] with all_logits.
        With attention layers, ValueError (state unchanged) when the context would pass
        config.max_position_embeddings."""
        cfg = self.config
        ids = self._check_ids(tokens)
        hybrid = isinstance(state, ModelState)
        if cfg.kind != "ttt" and not hybrid:
            raise TypeError("a model with attention layers reads into a ModelState (model.new_state())")
        if hybrid and state.context + ids.size > cfg.max_position_embeddings:
            raise ValueError(f"the context would hold {state.context + ids.size} tokens, past "
                             f"config.max_position_embeddings = {cfg.max_position_embeddings} of the attention "
                             f"layers; start a new state (or /reset) to read more")
        ttt = state.ttt if hybrid else state
        if cfg.decays and ttt is not None:  # read up to each decay point, decay there, go on
            parts, start = [], 0
            while start < ids.size:
                end = min(ids.size, start + cfg.state_decay_every - ttt.n_tokens % cfg.state_decay_every)
                parts.append(self._prefill(state, ttt, ids[start:end], all_logits))
                self._decay(ttt)
                start = end
            return np.concatenate(parts) if all_logits else parts[-1]
        return self._prefill(state, ttt, ids, all_logits)

    def _decay(self, ttt: TTTState) -> None:
        """At a decay point (config.state_decay_every tokens read; the mini-batch sums are empty
        there), move the state the share config.state_decay back to the fresh state."""
        cfg = self.config
        if not cfg.decays or ttt.n_tokens % cfg.state_decay_every:
            return
        fresh = self._fresh_ttt
        if fresh is None or fresh[2] is not self.params or not self.inference_only:
            f = self.new_ttt_state()
            fresh = (f.W0, f.b0, self.params)
            if self.inference_only:  # its parameters never change
                self._fresh_ttt = fresh
        _toward(ttt.W0, fresh[0], cfg.state_decay)
        _toward(ttt.b0, fresh[1], cfg.state_decay)

    def _prefill(self, state, ttt: TTTState | None, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        be, cfg = self.backend, self.config
        tix = {li: i for i, li in enumerate(cfg.layers_of("ttt"))}

        def mixer(li, n1):
            if cfg.types[li] == "attention":
                return attention_prefill(be, module_params(self.params, cfg, li, "attn"), n1, state.kv[li], cfg), None
            return ttt_prefill(be, module_params(self.params, cfg, li, "ttt"), n1, ttt.layer(tix[li]), ttt.pos,
                               cfg), None

        x = self._embed(ids)
        for li in range(cfg.num_layers):
            x, _ = self._block(li, x, mixer)
        if ttt is not None:
            ttt.pos = (ttt.pos + ids.size) % cfg.mini_batch_size
            ttt.n_tokens += ids.size
        logits = self._logits(x if all_logits else x[-1:])
        return logits if all_logits else logits[0]

    def step(self, state: TTTState, token: int) -> np.ndarray:
        """Read one token -> its logits [V].  The backend's fused decoder when it has one (the cpu
        backend: every layer in one C call, src_c/decode.c; TTT-only models), else prefill of
        that token (the generic path: attention and hybrid models)."""
        ids = self._check_ids([token])
        dec = self._fused_decoder()
        if dec is None:
            return self.prefill(state, ids)
        x = self._embed(ids).reshape(-1)
        logits = np.empty(self.config.vocab_size, dtype=np.float32)
        with self._fused_lock:
            dec.step(x, state.W0, state.b0, state.Kb, state.Gb, state.Sb, state.pos, logits)
        state.pos = (state.pos + 1) % self.config.mini_batch_size
        state.n_tokens += 1
        self._decay(state)
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model produced NaN or infinite logits")
        return logits

    def step_batch(self, states: list[TTTState], tokens) -> np.ndarray:
        """Read one token into each of B states (tokens ints [B]) in one pass -> logits [B, V].
        Every BitLinear is one int8 GEMM over the B rows (the weights read once per step, not
        once per sequence), norms, SwiGLU and the head run over [B, .], and each state reads its
        token through the TTT layer's inner loop.  Rows never mix: the result equals stepping
        the states one by one, bit for bit (tests/test_serve_batch.py)."""
        be, cfg = self.backend, self.config
        if cfg.kind != "ttt":
            raise ValueError(f"step_batch reads TTT states only; this model has {cfg.kind} layers: step each state")
        ids = self._check_ids(tokens)
        if len(states) != ids.size:
            raise ValueError(f"step_batch needs one token per state, got {ids.size} tokens for {len(states)} states")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("step_batch: a state appears twice in the batch")
        positions = [s.pos for s in states]
        layer_params = self._ttt_params()

        def mixer(li, n1):
            return ttt_step_batch(be, layer_params[li], n1, [s.layer(li) for s in states], positions, cfg), None

        x = self._embed(ids)
        for li in range(cfg.num_layers):
            x, _ = self._block(li, x, mixer)
        for s in states:
            s.pos = (s.pos + 1) % cfg.mini_batch_size
            s.n_tokens += 1
            self._decay(s)
        return self._logits(x)

    def _ttt_params(self) -> list[dict]:
        """Each layer's TTT parameters by local name (kept once for a model made for inference,
        whose parameters do not change)."""
        cached = getattr(self, "_ttt_local", None)
        if cached is not None and cached[0] is self.params:
            return cached[1]
        per = [module_params(self.params, self.config, li, "ttt") for li in range(self.config.num_layers)]
        if self.inference_only:
            self._ttt_local = (self.params, per)
        return per

    def _fused_decoder(self):
        """The backend's one-call decoder over this model's weights (built once), or None."""
        be, cfg = self.backend, self.config
        if self._fused is None and self.inference_only and cfg.ternary and cfg.kind == "ttt" and \
                hasattr(be, "fused_decoder"):
            self._fused = be.fused_decoder(*self._decoder_args())
        return self._fused

    def _decoder_args(self) -> tuple[dict, list[dict], dict]:
        cfg, p, f = self.config, self.params, self.config.head_dim
        layers = []
        for li in range(cfg.num_layers):
            t = module_params(p, cfg, li, "ttt")
            m = module_params(p, cfg, li, "mlp")

            def w(q):
                return (q.codes, q.cols, q.scale, q.fmt)

            _, tok = token_scales(t, cfg.mini_batch_size, np.dtype(np.float32))
            layers.append({"wq": w(t["q_proj.weight"]), "wk": w(t["k_proj.weight"]), "wv": w(t["v_proj.weight"]),
                           "wo": w(t["o_proj.weight"]), "wgate": w(m["gate_proj.weight"]),
                           "wup": w(m["up_proj.weight"]), "wdown": w(m["down_proj.weight"]),
                           "norm1": p[f"layers.{li}.norm1.weight"], "norm2": p[f"layers.{li}.norm2.weight"],
                           "lr_w": t["learnable_ttt_lr_weight"][:, 0, :], "lr_b": t["learnable_ttt_lr_bias"],
                           "gamma": t["ttt_norm_weight"], "beta": t["ttt_norm_bias"], "tok": tok,
                           "post_w": t["post_norm.weight"], "post_b": t["post_norm.bias"]})
        cos, sin = self.backend.rope_tables(np.arange(cfg.mini_batch_size), f, cfg.rope_theta, np.float32)
        dims = {"D": cfg.hidden_size, "H": cfg.num_heads, "f": f, "I": cfg.intermediate_size,
                "K": cfg.mini_batch_size, "rms_eps": cfg.rms_norm_eps, "lr_scale": cfg.ttt_base_lr / f,
                "cos": cos, "sin": sin}
        head = self.head
        if isinstance(head, self.backend.Int8Head):
            hd = {"norm_w": p["norm_f.weight"], "Wq": head.q, "wscale": head.scale}
        else:
            hd = {"norm_w": p["norm_f.weight"], "Wf": np.ascontiguousarray(head, np.float32)}
        return dims, layers, hd

