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

Models with attention layers (config.arch "attention", or a hybrid's layer_types) carry a
ModelState instead: the TTT state of their TTT layers and a KV cache per attention layer
(float16 by default; `im.kv_dtype = "int8"` for int8 with per-head, per-token scales), at most
config.max_position_embeddings tokens long (past it, reading is refused: start a new state).
Their tokens take the generic path (prefill of one token): the fused C decoder is TTT-only.

    from bitttt.session import InferenceModel
    m = InferenceModel.from_checkpoint("runs/default/checkpoints/best.safetensors")
    s = m.new_state()
    logits = m.feed(s, token_ids)          # [V] for the last token ([T, V] with all_logits=True)
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .backend.numpy import Int8Head
from .config import BitLlamaConfig
from .formats import (
    CheckpointError,
    MemoryData,
    MemoryFileError,
    load_checkpoint,
    read_memory,
    read_metadata,
    read_model_file,
    weights_id,
    write_memory,
)
from .formats.model_file import MODEL_FORMAT
from .model import BitLlama, ModelState, TTTState
from .params import param_shapes
from .ternary import PackedTernary

FEED_CHUNK = 512  # tokens read per prefill call: memory independent of the input's length


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
        self.model_id = model_id or weights_id(config, p)
        if head_int8 is not None:
            head = Int8Head(np.ascontiguousarray(head_int8[0], dtype=np.int8),
                            np.ascontiguousarray(head_int8[1], dtype=np.float32))
            if head.q.shape != (config.vocab_size, config.hidden_size) or \
                    head.scale.shape != (config.vocab_size,) or int(head.q.min()) == -128:
                raise ValueError(f"{source or 'model'}: the int8 LM head does not match the config")
        else:
            hw = params.get("head.weight")  # a packed file may carry its own head
            head = np.ascontiguousarray(hw, np.float32) if hw is not None else \
                p["embed.weight" if config.tie_word_embeddings else "lm_head.weight"]
        self.model = BitLlama.for_inference(config, p, quantized=packed, head=head, backend="cpu")

    def num_params(self) -> int:
        """Parameters of the model (every weight counted once, packed or not)."""
        return int(sum(int(np.prod(s)) for s in param_shapes(self.config).values()))

    def __repr__(self) -> str:
        c = self.config
        src = os.path.basename(self.source) if self.source else "in memory"
        return (f"InferenceModel({src}: D={c.hidden_size}, layers={c.num_layers}, heads={c.num_heads}, "
                f"V={c.vocab_size}, {'ternary' if c.ternary else 'float'}, {self.num_params():,} parameters)")

    # -- loading -----------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str) -> InferenceModel:
        """A training checkpoint (weights, config and tokenizer inside)."""
        from .tokenizer import Tokenizer

        ck = load_checkpoint(path)
        try:
            tok = Tokenizer.from_bytes(ck.tokenizer) if ck.tokenizer else None
            return cls(ck.config, ck.params, tok, source=os.fspath(path))
        except (KeyError, ValueError, TypeError) as e:  # a tokenizer or weights that cannot be used
            msg = str(e)
            raise CheckpointError(msg if msg.startswith(os.fspath(path)) else f"{os.fspath(path)}: {msg}") from None

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

    # -- state and reading ------------------------------------------------------------
    @property
    def kv_dtype(self) -> str:
        """The KV cache of attention layers: "float16" (default), "int8" or "float32"."""
        return self.model.kv_dtype

    @kv_dtype.setter
    def kv_dtype(self, value: str) -> None:
        from .layers.attention import KV_DTYPES

        if value not in KV_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {', '.join(KV_DTYPES)}, got {value!r}")
        self.model.kv_dtype = value

    @property
    def has_memory(self) -> bool:
        """True when the model has TTT layers: memory files (and /sleep) hold their state."""
        return bool(self.config.layers_of("ttt"))

    def new_state(self) -> TTTState | ModelState:
        """Every sequence starts from the trained (W1, b1) of each TTT layer, with empty sums (and,
        with attention layers, empty KV caches: a ModelState)."""
        return self.model.new_state()

    def feed(self, st: TTTState, tokens, all_logits: bool = False) -> np.ndarray:
        """Read `tokens` (ints [T], T >= 1) into state `st` (updated in place): one token is a
        model step (the fused C decoder), more a prefill, FEED_CHUNK tokens at a time (memory
        bounded for any length, the same bits as one call).
        -> logits of the last token [V] (float32), or of every token [T, V] with all_logits."""
        ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
        if ids.size == 1:
            logits = self.model.step(st, ids)
            return logits[None] if all_logits else logits
        if ids.size <= FEED_CHUNK:
            return self.model.prefill(st, ids, all_logits)
        # a long input in chunks: the activations stay bounded, the bits are those of one prefill
        # (the recurrent read is token by token, the GEMMs row by row)
        out = np.empty((ids.size, self.config.vocab_size), np.float32) if all_logits else None
        for i in range(0, ids.size, FEED_CHUNK):
            part = ids[i:i + FEED_CHUNK]
            logits = self.model.prefill(st, part, all_logits) if part.size > 1 else self.model.step(st, part)
            if out is not None:
                out[i:i + part.size] = logits
        return out if out is not None else logits

    def reset_interval(self, reset_every: int = 0) -> int:
        """The reset interval a read with `reset_every` (0: never) really uses: a model with attention
        layers resets at least every config.max_position_embeddings tokens, its longest context."""
        if self.config.kind != "ttt":
            limit = self.config.max_position_embeddings
            return min(reset_every, limit) if reset_every else limit
        return reset_every

    def token_losses(self, pieces: Iterable[Sequence[int]], reset_every: int = 0,
                     chunk: int = 512) -> Iterator[np.ndarray]:
        """Next-token losses (nats, float64) of the token stream made of `pieces` (int sequences,
        concatenated; the stream's first token is only read), read `chunk` tokens at a time, the state
        reset every `reset_every` tokens of the stream (0: never; see reset_interval).  Yields one array
        per model call, in order: together they hold the loss of stream token 1, 2, ... (position 0, 1, ...).
        Memory holds one piece and one chunk's logits [chunk, V], whatever the stream's length."""
        reset_every = self.reset_interval(reset_every)
        st = self.new_state()
        it = iter(pieces)
        buf = np.empty(0, np.int64)  # stream tokens pos, pos + 1, ...
        pos, done = 0, False
        while True:
            while not done and len(buf) < chunk + 1:
                piece = next(it, None)
                if piece is None:
                    done = True
                else:
                    buf = np.concatenate([buf, np.asarray(piece, dtype=np.int64).reshape(-1)])
            if len(buf) < 2:
                return
            if reset_every and pos and pos % reset_every == 0:
                st = self.new_state()
            n = min(chunk, len(buf) - 1)
            if reset_every:
                n = min(n, (pos // reset_every + 1) * reset_every - pos)
            logits = self.feed(st, buf[:n], all_logits=True).astype(np.float64)
            tgt = buf[1:n + 1]
            m = logits.max(axis=1)
            lse = m + np.log(np.exp(logits - m[:, None]).sum(axis=1))
            yield lse - logits[np.arange(n), tgt]
            buf = buf[n:]
            pos += n

    def score(self, ids: Sequence[int], reset_every: int = 0, chunk: int = 512) -> tuple[float, int]:
        """(sum of next-token losses in nats, tokens scored) over the stream `ids`, read `chunk`
        tokens at a time, the state reset every `reset_every` tokens (0: never; a model with attention
        layers resets at least every config.max_position_embeddings tokens, its longest context).
        The sum is that of the token_losses arrays, each summed, in order."""
        total, n = 0.0, 0
        for losses in self.token_losses([ids], reset_every, chunk):
            total += float(losses.sum())
            n += len(losses)
        return total, n

    # -- memory files ------------------------------------------------------------------
    def save_memory(self, st: TTTState | ModelState, path: str, note: str = "",
                    slept: list[dict] | None = None) -> None:
        """Write the state to a memory file tagged with this model's identity (atomic; bitttt.formats.memory),
        with `slept`, the marks of the chat logs /sleep replayed into it (bitttt.chatlog).
        TTT layers only: a hybrid's KV caches are not saved; an attention model has no memory
        (MemoryFileError, nothing written)."""
        self._check_memory()
        write_memory(path, st.arrays(), model_id=self.model_id,
                     config=self.config, pos=st.pos, n_tokens=st.n_tokens, note=note, slept=slept)

    def load_memory(self, path: str) -> TTTState:
        """Read a state saved by save_memory; MemoryFileError when it is damaged or from another model."""
        return self.open_memory(path)[0]

    def open_memory(self, path: str) -> tuple[TTTState | ModelState, MemoryData]:
        """(the state, the file as read: its note, n_tokens, slept marks...) of a memory file
        saved by save_memory; MemoryFileError when it is damaged or from another model."""
        self._check_memory()
        m = read_memory(path, model_id=self.model_id, config=self.config)
        a = m.arrays
        ttt = TTTState(a["W0"], a["b0"], a["Kb"], a["Gb"], a["Sb"], m.pos, m.n_tokens)
        if self.config.kind == "ttt":
            return ttt, m
        st = self.new_state()  # a hybrid: the TTT part from the file, empty KV caches
        st.ttt = ttt
        return st, m

    def _check_memory(self) -> None:
        if not self.has_memory:
            raise MemoryFileError("memory files and /sleep hold the TTT state, and this model has attention "
                                  "layers only: its context is a KV cache, kept for the session only")
