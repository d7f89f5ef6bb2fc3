"""Memory files: the TTT state of a session (its recurrent memory), tagged with the model's identity.

TTT layers only: L below counts the model's TTT layers (all of them in a TTT model; those of a
hybrid, in layer order, whose KV caches are not saved); a pure attention model has no memory file.

Format "bitttt-memory/2" (safetensors, bitttt.formats.safetensors: atomic write, CRC-32 per tensor)
    W0 float32 [L, H, f, f]   the inner weights at the start of the current mini-batch
    b0 float32 [L, H, f]      the inner bias
    Kb, Gb float32 [L, H, K, f]   keys and lr-weighted gradients of the mini-batch so far (rows < pos)
    Sb float32 [L, H, f]      the sum of those gradients
    metadata: format, model_id, config (JSON), pos (0 <= pos < K), n_tokens, note, and slept
    (JSON list, optional: what /sleep has replayed into the state, one mark per chat log:
    {"log": path when replayed, "bytes": length of the log prefix replayed, "records": its
    lines, "sha256": hash of that prefix}; a file without it has replayed nothing)
Still read: "bitttt-memory/1", which held the gradient sum as one dense SW [L, H, f, f] instead
of Kb and Gb; it is factored on reading (exact to rounding: SW has rank <= pos).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from .. import locks
from ..config import BitLlamaConfig
from .errors import MemoryFileError
from .safetensors import read_tagged, write_safetensors
from .validate import check_limits, check_tensors, nesting_ok, parse_config

MEMORY_FORMAT = "bitttt-memory/2"
MEMORY_FORMAT_V1 = "bitttt-memory/1"  # dense SW; still read
MEMORY_TENSORS = ("W0", "b0", "Kb", "Gb", "Sb")
WRITE_WAIT = 10.0  # seconds a writer waits for another process's lock on the file
MAX_SLEPT = 64  # log marks kept in a memory file (the most recent)
_MARK_KEYS = {"log": str, "bytes": int, "records": int, "sha256": str}


def memory_shapes(config: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a memory file for `config` (L layers, H heads, f head dim, K
    mini-batch; L counts the TTT layers only): W0 [L, H, f, f], b0 and Sb [L, H, f], Kb and Gb [L, H, K, f]."""
    L, H, f, K = len(config.layers_of("ttt")), config.num_heads, config.head_dim, config.mini_batch_size
    return {"W0": (L, H, f, f), "b0": (L, H, f), "Kb": (L, H, K, f), "Gb": (L, H, K, f), "Sb": (L, H, f)}


@dataclass
class MemoryData:
    """A memory file read back: `arrays` (float32 W0, b0, Kb, Gb, Sb by name, shapes of memory_shapes;
    a bitttt-memory/1 file's SW already factored into Kb and Gb), `pos`, `n_tokens`, `note`,
    `model_id`, `config` (the model's config as a dict, {} when unreadable), `format` (the file's),
    `slept` (the log marks of /sleep, see the module docstring; [] for a file without them)."""

    path: str
    arrays: dict[str, np.ndarray]
    pos: int
    n_tokens: int
    note: str
    model_id: str | None
    config: dict
    format: str
    slept: list[dict] = field(default_factory=list)


def write_memory(path: str | os.PathLike, arrays: dict[str, np.ndarray], *, model_id: str, config: BitLlamaConfig,
                 pos: int, n_tokens: int, note: str = "", slept: list[dict] | None = None) -> None:
    """Write a memory file (atomic): `arrays` holds W0, b0, Kb, Gb, Sb (see memory_shapes); `slept`
    the log marks of what /sleep replayed (the last MAX_SLEPT kept; ValueError for a bad one).  The
    file's lock (bitttt.locks) is taken for the write: a process that holds it for a whole session
    (infer --memory) makes other writers wait WRITE_WAIT seconds, then fail with LockedError."""
    meta = {"format": MEMORY_FORMAT, "model_id": model_id, "config": config.to_json(),
            "pos": str(pos), "n_tokens": str(n_tokens), "note": note,
            "slept": json.dumps([check_mark(m, ValueError, "slept") for m in (slept or [])[-MAX_SLEPT:]])}
    with locks.hold(path, "memory file", wait=WRITE_WAIT):  # one writer at a time (bitttt.locks)
        write_safetensors(path, {n: arrays[n] for n in MEMORY_TENSORS}, meta)


def _factor(sw: np.ndarray, pos: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Dense SW [L, H, f, f] of rank <= pos -> (Kb, Gb) [L, H, K, f] with SW = Kb[:pos]^T Gb[:pos]."""
    kb, gb = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    if pos:
        u, sv, vt = np.linalg.svd(sw.astype(np.float64))
        kb[:, :, :pos] = (u[..., :pos] * sv[..., None, :pos]).transpose(0, 1, 3, 2)
        gb[:, :, :pos] = vt[..., :pos, :]
    return kb, gb


def check_mark(mark: object, error: type[Exception], where: str) -> dict:
    """A /sleep log mark as stored in a memory file (see the module docstring), checked: a copy
    with exactly its keys, or `error` saying what is wrong."""
    if not isinstance(mark, dict) or set(mark) != set(_MARK_KEYS):
        raise error(f"{where}: a log mark must have exactly the keys {', '.join(_MARK_KEYS)}")
    for k, typ in _MARK_KEYS.items():
        v = mark[k]
        if not isinstance(v, typ) or isinstance(v, bool) or (typ is int and not 0 <= v < 1 << 62):
            raise error(f"{where}: log mark {k!r} is not a {'non-negative integer' if typ is int else 'string'}")
    h = mark["sha256"]
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise error(f"{where}: log mark 'sha256' is not 64 lowercase hex digits")
    return dict(mark)


def _slept(meta: dict[str, str], path: str) -> list[dict]:
    raw = meta.get("slept", "[]")
    where = f"{path}: metadata 'slept'"
    try:
        marks = json.loads(raw) if nesting_ok(raw) else None
    except (ValueError, RecursionError):
        marks = None
    if not isinstance(marks, list) or len(marks) > MAX_SLEPT:
        raise MemoryFileError(f"{where} is not a list of at most {MAX_SLEPT} log marks")
    return [check_mark(m, MemoryFileError, where) for m in marks]


def _count(meta: dict[str, str], key: str, path: str) -> int:
    v = meta.get(key, "0")
    if not (v.isascii() and v.isdigit()) or len(v) > 18:
        raise MemoryFileError(f"{path}: metadata {key!r} is not a non-negative integer ({v[:20]!r})")
    return int(v)


def read_memory(path: str | os.PathLike, *, model_id: str | None = None,
                config: BitLlamaConfig | None = None) -> MemoryData:
    """Read and verify a memory file (bitttt-memory/2 or /1).  MemoryFileError naming the file when
    it is damaged or foreign, when `model_id` is given and the file belongs to another model, or
    when its position or tensors do not fit `config` (default: the config stored in the file)."""
    path = os.fspath(path)
    t, meta, fmt = read_tagged(path, (MEMORY_FORMAT, MEMORY_FORMAT_V1), error=MemoryFileError, what="memory file",
                                   old_keys=("model_id", "config", "pos", "n_tokens", "note"))
    try:
        other = json.loads(meta.get("config", "{}")) if nesting_ok(meta.get("config", "")) else {}
    except (ValueError, RecursionError):
        other = {}
    if not isinstance(other, dict):
        other = {}
    mid = meta.get("model_id", "?")
    if model_id is not None and mid != model_id:
        raise MemoryFileError(f"{path}: this memory belongs to another model (id {mid[:12]}, "
                              f"D={other.get('hidden_size', '?')}, {other.get('num_layers', '?')} layers), "
                              f"not to this one (id {model_id[:12]})")
    cfg = config or parse_config(meta, path, MemoryFileError)
    if config is None:
        check_limits(cfg, path, MemoryFileError, n_tensors=len(t), data_bytes=sum(a.nbytes for a in t.values()),
                     kind="memory")
    pos, n_tokens = (_count(meta, k, path) for k in ("pos", "n_tokens"))
    if not 0 <= pos < cfg.mini_batch_size:
        raise MemoryFileError(f"{path}: metadata 'pos': invalid mini-batch position {pos}")
    shapes = memory_shapes(cfg)
    names = MEMORY_TENSORS if fmt == MEMORY_FORMAT else ("W0", "b0", "SW", "Sb")
    check_tensors(t, {n: (np.float32, shapes["W0" if n == "SW" else n]) for n in names}, path, MemoryFileError)
    a = {n: np.ascontiguousarray(t[n], np.float32) for n in names}
    if fmt == MEMORY_FORMAT_V1:
        a["Kb"], a["Gb"] = _factor(a.pop("SW"), pos, shapes["Kb"])
    return MemoryData(path, {n: a[n] for n in MEMORY_TENSORS}, pos, n_tokens, meta.get("note", ""),
                      meta.get("model_id"), other, fmt, _slept(meta, path))
