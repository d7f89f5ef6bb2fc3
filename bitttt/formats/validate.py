"""The checks every reader of bitttt's files applies to what a file claims, before anything is built.

    safe_json          JSON text -> value; no NaN/Infinity, no duplicate keys, bounded nesting
    nesting_ok         the linear scan of the nesting depth that safe_json does first
    parse_config       a metadata `config` entry -> BitLlamaConfig (JSON text only, never a path)
    check_limits       what a config implies (tensor count, bytes, TTT state) against the file
    read_tokenizer     the base64 tokenizer entry, checked against its `tokenizer_sha256`
    check_tensors      every tensor of a file against the dtypes and shapes it must have
    json_object        a metadata entry holding a JSON object (train, state)

Every failure raises the caller's FormatError subclass naming the file and the field.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json

import numpy as np

from ..config import BitLlamaConfig
from ..params import param_table
from .errors import FormatError

MAX_DEPTH = 64  # nesting of any JSON we read (ours is at most 3 deep)


def nesting_ok(text: str) -> bool:
    """True when the brackets of `text` (outside strings) nest at most MAX_DEPTH deep: a linear
    scan, so that json.loads never recurses deeply."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return True
    depth, in_str, esc = 0, False, False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def _no_duplicates(pairs: list) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r}")
    return d


def safe_json(text: str | bytes, what: str, error: type[FormatError], constants: bool = False):
    """json.loads with no duplicate keys, nesting at most MAX_DEPTH and (unless `constants`) no
    NaN / Infinity; `error` "<what> is not valid JSON (...)" otherwise (`what` names the file
    and the field)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        if not nesting_ok(text):
            raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
        return json.loads(text, parse_constant=None if constants else _no_constant, object_pairs_hook=_no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise error(f"{what} is not valid JSON ({e})") from None


def json_object(meta: dict[str, str], key: str, path: str, error: type[FormatError], default: str = "{}") -> dict:
    """The metadata entry `key` parsed as a JSON object (`default` when absent; Infinity allowed:
    a best validation loss not yet measured)."""
    v = safe_json(meta.get(key, default), f"{path}: metadata {key!r}", error, constants=True)
    if not isinstance(v, dict):
        raise error(f"{path}: metadata {key!r} is not a JSON object")
    return v


def parse_config(meta: dict[str, str], path: str, error: type[FormatError]) -> BitLlamaConfig:
    """The model config of a file's metadata: JSON text only (never opened as a path), every
    field type- and range-checked by BitLlamaConfig.validate."""
    if "config" not in meta:
        raise error(f"{path}: metadata has no 'config' entry")
    d = safe_json(meta["config"], f"{path}: metadata 'config'", error)
    if not isinstance(d, dict):
        raise error(f"{path}: metadata 'config' is not a JSON object")
    try:
        return BitLlamaConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise error(f"{path}: metadata 'config': {e}") from None


@dataclasses.dataclass(frozen=True)
class Size:
    """What a config implies: tensors, parameters (as numbers), of them in BitLinear weights,
    and the float32 TTT state of one sequence (numbers)."""

    tensors: int
    params: int
    linear: int
    state: int


def implied_size(cfg: BitLlamaConfig) -> Size:
    """Counted from one layer's parameter table per layer kind, times the layers of that kind:
    cheap for any num_layers (the TTT state counts the TTT layers only)."""
    kinds = list(cfg.types)
    t = p = lin = 0
    for i, kind in enumerate(sorted(set(kinds))):
        one_layer = dataclasses.replace(cfg, num_layers=1,
                                        layer_types=None if cfg.layer_types is None else [kind])
        for s in param_table(one_layer).values():
            if s.layer is None and i:  # the embedding, final norm and head: once
                continue
            n = int(np.prod(s.shape, dtype=object))
            k = kinds.count(kind) if s.layer is not None else 1
            t, p = t + k, p + k * n
            lin += k * n if s.kind == "linear" else 0
    L, H, f, K = kinds.count("ttt"), cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    return Size(t, p, lin, L * H * (f * f + 2 * K * f + 2 * f))


def check_limits(cfg: BitLlamaConfig, path: str, error: type[FormatError], *, n_tensors: int, data_bytes: int,
                 kind: str) -> None:
    """Refuse a config that the file cannot hold, before any table or array is built: more
    parameter tensors than the file has, fewer bytes than its weights need at the smallest
    encoding of `kind` ("checkpoint": float32, "model": 1.6 bits per BitLinear weight (packed
    format t1) and 1 byte for the rest, "memory": the float32 state), or a TTT state larger than
    the model itself."""
    if kind != "memory" and cfg.num_layers > n_tensors:  # a memory file has 5 tensors for any depth
        raise error(f"{path}: config num_layers={cfg.num_layers} needs more tensors than the file's {n_tensors}")
    sz = implied_size(cfg)
    if kind == "memory":  # format /2: the state; /1: W0, b0, one dense SW, Sb
        L, H, f = cfg.num_layers, cfg.num_heads, cfg.head_dim
        need = 4 * min(sz.state, L * H * (2 * f * f + 2 * f))
    else:
        if sz.tensors > n_tensors:
            raise error(f"{path}: config implies {sz.tensors} parameter tensors, the file holds {n_tensors}")
        need = 4 * sz.params if kind == "checkpoint" else sz.linear // 5 + (sz.params - sz.linear)
        if sz.state > 4 * sz.params:
            raise error(f"{path}: config mini_batch_size={cfg.mini_batch_size} implies a TTT state of "
                        f"{4 * sz.state} bytes, larger than the model: refused")
    if need > data_bytes:
        raise error(f"{path}: config implies at least {need} bytes of tensors, the file holds {data_bytes} "
                    "(the config or the file is damaged)")


def read_tokenizer(meta: dict[str, str], path: str, error: type[FormatError]) -> bytes | None:
    """The tokenizer's bytes from the base64 `tokenizer` entry (None when absent), which must
    match the file's `tokenizer_sha256` entry when it has one."""
    if "tokenizer" not in meta:
        return None
    try:
        tok = base64.b64decode(meta["tokenizer"], validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{path}: metadata 'tokenizer' is not valid base64 (corrupted)") from None
    want = meta.get("tokenizer_sha256")
    if want is not None and hashlib.sha256(tok).hexdigest() != want:
        raise error(f"{path}: metadata 'tokenizer' does not match its tokenizer_sha256 (corrupted)")
    return tok


def check_tensors(tensors: dict[str, np.ndarray], want: dict[str, tuple[np.dtype | tuple, tuple[int, ...] | None]],
                  path: str, error: type[FormatError], optional: tuple[str, ...] = ()) -> None:
    """Every tensor of `want` (name -> (dtype or tuple of dtypes, shape or None for any)) is in
    `tensors` with that dtype and shape, and `tensors` holds nothing else (names in `optional`
    may be missing)."""
    for name, (dt, shape) in want.items():
        a = tensors.get(name)
        if a is None:
            if name in optional:
                continue
            raise error(f"{path}: missing tensor {name}")
        dts = dt if isinstance(dt, tuple) else (dt,)
        if a.dtype not in [np.dtype(d) for d in dts]:
            raise error(f"{path}: tensor {name} is {a.dtype}, must be {' or '.join(str(np.dtype(d)) for d in dts)}")
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise error(f"{path}: tensor {name} has shape {tuple(a.shape)}, the config needs {tuple(shape)}")
    extra = sorted(set(tensors) - set(want))
    if extra:
        raise error(f"{path}: unexpected tensor(s) {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
