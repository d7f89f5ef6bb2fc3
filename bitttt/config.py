"""BitLlamaConfig: the shape of a BitLlama model (TTT, attention or a hybrid), with validation and JSON round-trip."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields


def known_fields(cls, d: dict, what: str) -> dict:
    """`d` when it is a dict whose keys are all fields of dataclass `cls`; else TypeError /
    ValueError naming `what` and the unknown keys."""
    if not isinstance(d, dict):
        raise TypeError(f"a {what} must be a JSON object, got {type(d).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {what} key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
    return d


ARCHS = ("ttt", "attention")
ARCH_FIELDS = ("arch", "layer_types", "num_kv_heads", "max_position_embeddings")
# Fields a config writes only when set (older configs, files and model ids stay as they were).
DECAY_FIELDS = ("state_decay", "state_decay_every")
# Upper bounds of a sane model (far above any we train; a file claiming more is damaged or hostile).
LIMITS = {"vocab_size": 2**24, "hidden_size": 2**16, "num_layers": 2**12, "num_heads": 2**12,
          "intermediate_size": 2**18, "mini_batch_size": 2**12, "ttt_base_lr": 1e4, "rope_theta": 1e12,
          "rms_norm_eps": 1.0}


@dataclass
class BitLlamaConfig:
    """Model hyper-parameters.  D = hidden_size, H = num_heads, f = D / H, K = mini_batch_size.

    Architecture: `arch` "ttt" (every layer TTT-Linear, the default) or "attention" (every
    layer causal GQA softmax attention); `layer_types` (one "ttt" | "attention" per layer)
    makes a hybrid and overrides `arch`.  Attention layers use `num_kv_heads` key/value heads
    (GQA; it divides num_heads; None = num_heads) and hold at most `max_position_embeddings`
    tokens of context.  Configs written before these fields existed load as "ttt", and a
    pure-TTT config writes none of them (its JSON, hence the model's identity, is unchanged).

    Memory: every `state_decay_every` tokens read (a multiple of mini_batch_size; 0: never) the
    TTT state moves the share `state_decay` (0 <= d < 1) of the way back to the trained initial
    state, W <- W1 + (1 - d) (W - W1) (and b alike), so that a state that has read any amount of
    text stays in the range training saw.  Off (0, 0) by default; written to the JSON only when on.

    Invalid values raise ValueError (TypeError for a wrong type) naming the field.
    """

    vocab_size: int = 4096
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 688
    mini_batch_size: int = 16
    ttt_base_lr: float = 1.0
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    ternary: bool = True
    arch: str = "ttt"
    layer_types: list | None = None
    num_kv_heads: int | None = None
    max_position_embeddings: int = 4096
    state_decay: float = 0.0
    state_decay_every: int = 0

    def __post_init__(self) -> None:
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads of the attention layers (num_kv_heads, or num_heads when None)."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def types(self) -> tuple[str, ...]:
        """The mixer of every layer: "ttt" or "attention" (layer_types, else arch for all)."""
        return tuple(self.layer_types) if self.layer_types is not None else (self.arch,) * self.num_layers

    @property
    def kind(self) -> str:
        """"ttt", "attention" or "hybrid" (both kinds of layer)."""
        t = set(self.types)
        return t.pop() if len(t) == 1 else "hybrid"

    def layers_of(self, kind: str) -> list[int]:
        """The indices of the layers whose mixer is `kind` ("ttt" or "attention")."""
        return [i for i, t in enumerate(self.types) if t == kind]

    def validate(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in DECAY_FIELDS:
                continue
            if f.type in ("int", int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise TypeError(f"config.{f.name} must be an integer, got {v!r}")
                if v < 1:
                    raise ValueError(f"config.{f.name} must be >= 1, got {v}")
            elif f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise TypeError(f"config.{f.name} must be a number, got {v!r}")
                v = float(v)
                setattr(self, f.name, v)
                if not math.isfinite(v) or v <= 0:
                    raise ValueError(f"config.{f.name} must be a positive finite number, got {v}")
            elif f.type in ("bool", bool) and not isinstance(v, bool):
                raise TypeError(f"config.{f.name} must be true or false, got {v!r}")
        for k, hi in LIMITS.items():
            if getattr(self, k) > hi:
                raise ValueError(f"config.{k} must be <= {hi}, got {getattr(self, k)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"config.hidden_size ({self.hidden_size}) must be divisible by "
                             f"config.num_heads ({self.num_heads})")
        if self.head_dim % 2:
            raise ValueError(f"head dim hidden_size / num_heads = {self.head_dim} must be even (RoPE pairs)")
        if self.rope_theta <= 1:
            raise ValueError(f"config.rope_theta must be > 1, got {self.rope_theta}")
        self._validate_arch()
        self._validate_decay()

    def _validate_decay(self) -> None:
        d, every = self.state_decay, self.state_decay_every
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d):
            raise TypeError(f"config.state_decay must be a number, got {d!r}")
        self.state_decay = d = float(d)
        if isinstance(every, bool) or not isinstance(every, int):
            raise TypeError(f"config.state_decay_every must be an integer, got {every!r}")
        if not 0 <= d < 1:
            raise ValueError(f"config.state_decay must be in [0, 1), got {d}")
        if every < 0 or every > 2**30:
            raise ValueError(f"config.state_decay_every must be in [0, 2**30], got {every}")
        if (d > 0) != (every > 0):
            raise ValueError("config.state_decay and config.state_decay_every go together: set both (or neither)")
        if every % self.mini_batch_size:
            raise ValueError(f"config.state_decay_every ({every}) must be a multiple of config.mini_batch_size "
                             f"({self.mini_batch_size})")

    @property
    def decays(self) -> bool:
        """True when the TTT state decays toward its initial value (state_decay set)."""
        return self.state_decay > 0

    def _validate_arch(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"config.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        if self.layer_types is not None:
            if not isinstance(self.layer_types, (list, tuple)) or isinstance(self.layer_types, str):
                raise TypeError(f"config.layer_types must be a list of layer kinds, got {self.layer_types!r}")
            self.layer_types = list(self.layer_types)
            if len(self.layer_types) != self.num_layers:
                raise ValueError(f"config.layer_types has {len(self.layer_types)} entries, "
                                 f"config.num_layers is {self.num_layers}")
            bad = [t for t in self.layer_types if t not in ARCHS]
            if bad:
                raise ValueError(f"config.layer_types: unknown layer kind {bad[0]!r}; "
                                 f"choose from {', '.join(ARCHS)}")
        for name in ("num_kv_heads", "max_position_embeddings"):
            v = getattr(self, name)
            if v is None and name == "num_kv_heads":
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"config.{name} must be an integer, got {v!r}")
            if v < 1:
                raise ValueError(f"config.{name} must be >= 1, got {v}")
        if self.num_heads % self.kv_heads:
            raise ValueError(f"config.num_kv_heads ({self.kv_heads}) must divide "
                             f"config.num_heads ({self.num_heads})")

    # -- JSON ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Every field, except the attention fields of a pure-TTT config and the decay fields left at
        their defaults (such a config reads and hashes as it did before those existed)."""
        d = dataclasses.asdict(self)
        for f in fields(self):
            if (f.name in DECAY_FIELDS or (self.kind == "ttt" and f.name in ARCH_FIELDS)) and d[f.name] == f.default:
                del d[f.name]
        return d

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"
        if path is not None:
            from .fileio import atomic_write_bytes

            atomic_write_bytes(path, text.encode())
        return text

    @classmethod
    def from_dict(cls, d: dict) -> BitLlamaConfig:
        return cls(**known_fields(cls, d, "config"))

    @classmethod
    def from_json(cls, text_or_path: str | os.PathLike) -> BitLlamaConfig:
        """Parse JSON text, or read it from a file path."""
        s = os.fspath(text_or_path)
        if not s.lstrip().startswith("{"):
            with open(s, encoding="utf-8") as f:
                s = f.read()
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"config is not valid JSON: {e}") from None
        return cls.from_dict(d)
