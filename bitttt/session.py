"""Inference: a BitLlama prepared for generation, and sessions that carry the TTT state.

The TTT state is the model's recurrent memory; there is no KV cache and no context limit.
Per layer and head it holds the inner model at the start of the current mini-batch (W0
[f, f], b0 [f]), the learning-rate-weighted gradients of the tokens read so far in that
mini-batch (g_j = lr_j dL/dz_j, with their keys k_j: SW = sum_j k_j^T g_j is kept as these
factors, Kb and Gb [K, f], and Sb = sum_j g_j), plus the position in the mini-batch.  Token i
of a mini-batch reads the inner model

    W_i = W0 - tok_i * SW_{<=i},   b_i = b0 - tok_i * Sb_{<=i}      (tok_i the position scale)
    out_i = q_i + LN(q_i W_i + b_i)

which is the dual form of the training forward written token by token: the gradients g_j are
taken at (W0, b0), and when a mini-batch is full (W0, b0) <- (W_{K-1}, b_{K-1}).  Keeping SW
as factors means a decoded token reads W0 once and never writes it, except once per
mini-batch.  A prompt is read one layer at a time: GEMMs over all its tokens, then the inner
loop in C token by token, heads in parallel (the same arithmetic as decoding, so a prompt read
at once or token by token gives the same bits); a decoded token goes through every layer in
one C call (bitttt._core.Decoder, src_c/decode.c).

    from bitttt.session import InferenceModel
    m = InferenceModel.from_checkpoint("runs/default/checkpoints/best.safetensors")
    s = m.new_state()
    logits = m.feed(s, token_ids)          # [V] for the last token ([T, V] with all_logits=True)
"""
from __future__ import annotations

import os
import threading

import numpy as np

from . import _core, kernels
from .config import BitLlamaConfig
from .formats import (
    CheckpointError,
    MemoryFileError,  # noqa: F401  (raised by load_memory through read_memory; importable from here as before)
    load_checkpoint,
    read_memory,
    read_metadata,
    read_model_file,
    weights_id,
    write_memory,
)
from .formats.model_file import MODEL_FORMAT
from .layers.norms import layernorm_forward, rmsnorm_forward
from .layers.rope import rope_apply, rope_tables
from .ternary import PackedTernary

LN_EPS = 1e-6
_LINEARS = ("ttt.q_proj", "ttt.k_proj", "ttt.v_proj", "ttt.o_proj", "mlp.gate_proj", "mlp.up_proj",
            "mlp.down_proj")


class TTTState:
    """The recurrent state of every layer: W0 [L, H, f, f], b0 [L, H, f], the factors of the
    current mini-batch's gradient sum Kb, Gb [L, H, K, f] (rows < pos are live), Sb [L, H, f],
    pos (tokens read in the current mini-batch, 0 <= pos < K) and n_tokens (tokens read in all)."""

    def __init__(self, W0, b0, Kb, Gb, Sb, pos: int = 0, n_tokens: int = 0):
        self.W0, self.b0, self.Kb, self.Gb, self.Sb = W0, b0, Kb, Gb, Sb
        self.pos, self.n_tokens = int(pos), int(n_tokens)

    def copy(self) -> TTTState:
        return TTTState(self.W0.copy(), self.b0.copy(), self.Kb.copy(), self.Gb.copy(), self.Sb.copy(), self.pos,
                        self.n_tokens)

    @property
    def SW(self) -> np.ndarray:
        """The dense gradient sum of the current mini-batch, sum_{j<pos} k_j^T g_j [L, H, f, f]."""
        p = self.pos
        return np.einsum("lhji,lhjk->lhik", self.Kb[:, :, :p], self.Gb[:, :, :p]).astype(np.float32)

    @property
    def nbytes(self) -> int:
        return self.W0.nbytes + self.b0.nbytes + self.Kb.nbytes + self.Gb.nbytes + self.Sb.nbytes


class InferenceModel:
    """A BitLlama ready for generation: ternary weights packed once (2 bits per weight),
    float32 everywhere else.  `tokenizer` (bitttt.Tokenizer) is optional."""

    def __init__(self, config: BitLlamaConfig, params: dict[str, np.ndarray], tokenizer=None, source: str = "",
                 packed: dict[str, PackedTernary] | None = None, model_id: str | None = None,
                 head_int8: tuple[np.ndarray, np.ndarray] | None = None):
        """params: every tensor of bitttt.model.param_shapes (float), except the BitLinear weights
        given already packed in `packed` (a packed model file).  model_id: the identity memory
        files are tagged with (default: a hash of the config and the float weights).
        head_int8: (int8 [V, D], float32 [V] row scales) for an int8 LM head (bitttt._core.gemm_s8)."""
        from .model import param_shapes

        config.validate()
        self.config, self.tokenizer, self.source = config, tokenizer, source
        packed = packed or {}
        shapes = param_shapes(config)
        for name, shape in shapes.items():
            if name in packed:
                if (packed[name].rows, packed[name].cols) != shape:
                    raise ValueError(f"{source or 'model'}: packed {name} is {packed[name].rows}x{packed[name].cols}, "
                                     f"the config needs {shape}")
                continue
            if name not in params:
                raise ValueError(f"{source or 'model'}: missing tensor {name}")
            if tuple(params[name].shape) != shape:
                raise ValueError(f"{source or 'model'}: {name} has shape {params[name].shape}, "
                                 f"the config needs {shape}")
        p = {k: np.ascontiguousarray(params[k], dtype=np.float16 if k == "embed.weight" and
                                     params[k].dtype == np.float16 else np.float32)
             for k in shapes if k not in packed}
        for k, v in p.items():
            flat = v.reshape(-1)
            step = 1 << 20  # in slices: no full-size temporary for a large embedding
            if not all(np.isfinite(flat[i:i + step]).all() for i in range(0, flat.size, step)):
                raise ValueError(f"{source or 'model'}: parameter {k} contains NaN or infinity")
        self.p = p
        self.lin: dict[str, PackedTernary | np.ndarray] = {}
        for li in range(config.num_layers):
            for n in _LINEARS:
                name = f"layers.{li}.{n}.weight"
                if name in packed:
                    self.lin[name] = packed[name]
                else:
                    self.lin[name] = PackedTernary.quantize(p[name]) if config.ternary else p[name]
        self.embed = p["embed.weight"]
        self.head_q = self.head_scale = None
        if head_int8 is not None:
            self.head_q = np.ascontiguousarray(head_int8[0], dtype=np.int8)
            self.head_scale = np.ascontiguousarray(head_int8[1], dtype=np.float32)
            if self.head_q.shape != (config.vocab_size, config.hidden_size) or \
                    self.head_scale.shape != (config.vocab_size,) or int(self.head_q.min()) == -128:
                raise ValueError(f"{source or 'model'}: the int8 LM head does not match the config")
            self.head = None
        else:
            head = params.get("head.weight")  # a packed file may carry its own head
            self.head = np.ascontiguousarray(head, np.float32) if head is not None else \
                p["embed.weight" if config.tie_word_embeddings else "lm_head.weight"]
        k, f = config.mini_batch_size, config.head_dim
        self.cos, self.sin = rope_tables(np.arange(k), f, config.rope_theta, np.float32)
        self.tok_scale = [np.maximum(np.float32(1.0) / np.arange(1, k + 1, dtype=np.float32)
                                     + p[f"layers.{li}.ttt.learnable_token_idx"], np.float32(0.0))
                          for li in range(config.num_layers)]
        self.model_id = model_id or weights_id(config, p)
        if config.ternary:  # the float copies of packed weights are not needed any more
            for name in self.lin:
                p.pop(name, None)
        self._dec = self._decoder() if config.ternary else None
        self._dec_lock = threading.Lock()  # the decoder's scratch is shared: one token at a time

    def _decoder(self):
        """The C decode path (one call per layer): packed weights and float parameters by pointer."""
        cfg, p, f = self.config, self.p, self.config.head_dim
        layers = []
        for li in range(cfg.num_layers):
            pre = f"layers.{li}."

            def w(n, pre=pre):
                t = self.lin[pre + n + ".weight"]
                return (t.codes, t.cols, t.scale)

            layers.append({"wq": w("ttt.q_proj"), "wk": w("ttt.k_proj"), "wv": w("ttt.v_proj"), "wo": w("ttt.o_proj"),
                           "wgate": w("mlp.gate_proj"), "wup": w("mlp.up_proj"), "wdown": w("mlp.down_proj"),
                           "norm1": p[pre + "norm1.weight"], "norm2": p[pre + "norm2.weight"],
                           "lr_w": p[pre + "ttt.learnable_ttt_lr_weight"][:, 0, :],
                           "lr_b": p[pre + "ttt.learnable_ttt_lr_bias"], "gamma": p[pre + "ttt.ttt_norm_weight"],
                           "beta": p[pre + "ttt.ttt_norm_bias"], "tok": self.tok_scale[li],
                           "post_w": p[pre + "ttt.post_norm.weight"], "post_b": p[pre + "ttt.post_norm.bias"]})
        dims = {"D": cfg.hidden_size, "H": cfg.num_heads, "f": f, "I": cfg.intermediate_size,
                "K": cfg.mini_batch_size, "rms_eps": cfg.rms_norm_eps, "lr_scale": cfg.ttt_base_lr / f,
                "cos": self.cos, "sin": self.sin}
        if self.head_q is not None:
            head = {"norm_w": p["norm_f.weight"], "Wq": self.head_q, "wscale": self.head_scale}
        else:
            head = {"norm_w": p["norm_f.weight"], "Wf": np.ascontiguousarray(self.head, np.float32)}
        return _core.Decoder(dims, layers, head)

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str) -> InferenceModel:
        """A training checkpoint (weights, config and tokenizer inside)."""
        from .tokenizer import Tokenizer

        ck = load_checkpoint(path)
        tok = Tokenizer.from_bytes(ck.tokenizer) if ck.tokenizer else None
        return cls(ck.config, ck.params, tok, source=os.fspath(path))

    @classmethod
    def from_file(cls, path: str) -> InferenceModel:
        """A packed model file (python -m bitttt.export) or a training checkpoint."""
        path = os.fspath(path)
        if read_metadata(path, what="model file").get("format") == MODEL_FORMAT:
            return cls.from_model_file(path)
        return cls.from_checkpoint(path)

    @classmethod
    def from_model_file(cls, path: str) -> InferenceModel:
        """A packed model file (python -m bitttt.export); CheckpointError naming it when it is damaged."""
        from .tokenizer import Tokenizer

        path = os.fspath(path)
        mf = read_model_file(path)
        cfg = mf.config
        try:
            tok = Tokenizer.from_bytes(mf.tokenizer)
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: corrupted metadata ({e})") from None
        params = dict(mf.params)
        if mf.head is not None:
            params["head.weight"] = mf.head
        if not cfg.tie_word_embeddings:  # the constructor wants every name; the head used is the one above
            params["lm_head.weight"] = mf.head if mf.head_int8 is None else \
                np.zeros((cfg.vocab_size, cfg.hidden_size), np.float32)
        try:
            return cls(cfg, params, tok, source=path, packed=mf.packed, model_id=mf.model_id, head_int8=mf.head_int8)
        except ValueError as e:
            raise CheckpointError(str(e)) from None

    @classmethod
    def from_model(cls, model, tokenizer=None) -> InferenceModel:
        """From a bitttt.BitLlama in memory."""
        return cls(model.config, model.params, tokenizer, source="BitLlama")

    # -- state -------------------------------------------------------------------------
    def new_state(self) -> TTTState:
        """Every sequence starts from the trained (W1, b1) of each layer, with empty sums."""
        cfg = self.config
        L, h, f = cfg.num_layers, cfg.num_heads, cfg.head_dim
        W0 = np.stack([self.p[f"layers.{li}.ttt.W1"] for li in range(L)])
        b0 = np.stack([self.p[f"layers.{li}.ttt.b1"].reshape(h, f) for li in range(L)])
        Kb = np.zeros((L, h, cfg.mini_batch_size, f), dtype=np.float32)
        return TTTState(W0, b0, Kb, np.zeros_like(Kb), np.zeros_like(b0))

    # -- forward -----------------------------------------------------------------------
    def _linear(self, name: str, x: np.ndarray, xq=None) -> np.ndarray:
        w = self.lin[name]
        if isinstance(w, PackedTernary):
            if xq is None:
                xq = kernels.quantize_activations(x)
            return kernels.gemm_i8(w, xq[0], xq[1])
        return kernels.sgemm(x, w, trans_b=True)

    def _quant(self, x: np.ndarray):
        return kernels.quantize_activations(x) if self.config.ternary else None

    def _ttt(self, li: int, x: np.ndarray, st: TTTState) -> np.ndarray:
        """x [T, D] (normalized layer input) -> TTT output [T, D]; updates layer li of st."""
        cfg, p = self.config, self.p
        T, D = x.shape
        H, f, K = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
        pre = f"layers.{li}."
        xq = self._quant(x)
        q = self._linear(pre + "ttt.q_proj.weight", x, xq).reshape(T, H, f)
        k = self._linear(pre + "ttt.k_proj.weight", x, xq).reshape(T, H, f)
        v = self._linear(pre + "ttt.v_proj.weight", x, xq)
        pos = (st.pos + np.arange(T)) % K
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        q = rope_apply(q, cos, sin).reshape(T, D)
        k = rope_apply(k, cos, sin).reshape(T, D)
        merged = np.empty((T, D), dtype=np.float32)  # the inner loop in C, token by token, heads in parallel
        _core.ttt_prefill(st.pos, q, k, v, x, p[pre + "ttt.learnable_ttt_lr_weight"][:, 0, :],
                          p[pre + "ttt.learnable_ttt_lr_bias"].reshape(-1), cfg.ttt_base_lr / f, self.tok_scale[li],
                          p[pre + "ttt.ttt_norm_weight"],
                          p[pre + "ttt.ttt_norm_bias"], st.W0[li], st.b0[li], st.Kb[li], st.Gb[li], st.Sb[li], merged)
        normed, _ = layernorm_forward(merged, p[pre + "ttt.post_norm.weight"], p[pre + "ttt.post_norm.bias"], LN_EPS)
        return self._linear(pre + "ttt.o_proj.weight", np.ascontiguousarray(normed))

    def _mlp(self, li: int, x: np.ndarray) -> np.ndarray:
        pre = f"layers.{li}.mlp."
        xq = self._quant(x)
        g = self._linear(pre + "gate_proj.weight", x, xq)
        u = self._linear(pre + "up_proj.weight", x, xq)
        h, sg = np.empty_like(g), np.empty_like(g)  # the training forward's fused gate (src_c/ops.c)
        _core.swiglu_fwd(g.reshape(-1), u.reshape(-1), h.reshape(-1), sg.reshape(-1))
        return self._linear(pre + "down_proj.weight", np.ascontiguousarray(h))

    def feed(self, st: TTTState, tokens, all_logits: bool = False) -> np.ndarray:
        """Read `tokens` (ints [T], T >= 1) into state `st` (updated in place).
        -> logits of the last token [V] (float32), or of every token [T, V] with all_logits."""
        cfg = self.config
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise ValueError("feed needs at least one token")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size}), got values in [{ids.min()}, {ids.max()}]")
        x = self.embed[ids].astype(np.float32)
        eps = cfg.rms_norm_eps
        if ids.size == 1 and self._dec is not None:  # decoding: every layer in C
            logits = np.empty(cfg.vocab_size, dtype=np.float32)
            with self._dec_lock:
                self._dec.step(x.reshape(-1), st.W0, st.b0, st.Kb, st.Gb, st.Sb, st.pos, logits)
            st.pos = (st.pos + 1) % cfg.mini_batch_size
            st.n_tokens += 1
            if not np.isfinite(logits).all():
                raise FloatingPointError("the model produced NaN or infinite logits")
            return logits[None] if all_logits else logits
        for li in range(cfg.num_layers):
            pre = f"layers.{li}."
            n1, _ = rmsnorm_forward(x, self.p[pre + "norm1.weight"], eps)
            x = x + self._ttt(li, np.ascontiguousarray(n1), st)
            n2, _ = rmsnorm_forward(x, self.p[pre + "norm2.weight"], eps)
            x = x + self._mlp(li, np.ascontiguousarray(n2))
        st.pos = (st.pos + ids.size) % cfg.mini_batch_size
        st.n_tokens += ids.size
        last = x if all_logits else x[-1:]
        nf, _ = rmsnorm_forward(np.ascontiguousarray(last), self.p["norm_f.weight"], eps)
        nf = np.ascontiguousarray(nf)
        if self.head_q is not None:
            xq, a = kernels.quantize_activations(nf)
            logits = np.empty((nf.shape[0], self.config.vocab_size), dtype=np.float32)
            _core.gemm_s8(self.head_q, self.head_scale, xq, a, logits)
        else:
            logits = kernels.sgemm(nf, self.head, trans_b=True)
        if not np.isfinite(logits).all():
            raise FloatingPointError("the model produced NaN or infinite logits")
        return logits if all_logits else logits[0]

    # -- memory files ------------------------------------------------------------------
    def save_memory(self, st: TTTState, path: str, note: str = "") -> None:
        """Write the state to a memory file tagged with this model's identity (atomic; bitttt.formats.memory)."""
        write_memory(path, {"W0": st.W0, "b0": st.b0, "Kb": st.Kb, "Gb": st.Gb, "Sb": st.Sb}, model_id=self.model_id,
                     config=self.config, pos=st.pos, n_tokens=st.n_tokens, note=note)

    def load_memory(self, path: str) -> TTTState:
        """Read a state saved by save_memory; MemoryFileError when it is damaged or from another model."""
        m = read_memory(path, model_id=self.model_id, config=self.config)
        a = m.arrays
        return TTTState(a["W0"], a["b0"], a["Kb"], a["Gb"], a["Sb"], m.pos, m.n_tokens)
