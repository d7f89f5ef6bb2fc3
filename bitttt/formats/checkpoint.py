"""Training checkpoints: one safetensors file with the weights, the optimizer moments and metadata.

Layout
    tensors   the model's parameters by their names (bitttt.params.param_table),
              `optim.m.<name>` and `optim.v.<name>` (AdamW moments); a streaming run (train.stream)
              also its carried TTT state, `stream.<group>.W.<layer>`, `.b.<layer>`, `.fresh` (stream_shapes)
    metadata  format "bitttt-checkpoint/1"; config (model config JSON); train (training config
              JSON); state (JSON: step, optimizer t, data loader position, best validation loss,
              tokens seen, elapsed seconds); tokenizer (base64 of the SentencePiece model) and
              tokenizer_sha256; crc32 (JSON: name -> CRC-32 of the tensor's bytes)

Written and read by bitttt.formats.safetensors (atomic write, CRC-32 per tensor).  Reading checks
the header (bitttt.formats.safetensors), the metadata checksum, every CRC, the config (JSON
only, range-checked against the file size: bitttt.formats.validate), the tokenizer's sha256, and
every tensor's dtype and shape against the parameter table; every error names the file.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import BitLlamaConfig
from ..params import param_shapes
from .errors import CheckpointError
from .safetensors import read_tagged, write_safetensors
from .validate import check_limits, check_tensors, json_object, parse_config, read_tokenizer

FORMAT = "bitttt-checkpoint/1"


def tokenizer_metadata(tokenizer: bytes) -> dict[str, str]:
    """The metadata entries that carry a tokenizer: base64 of its bytes and their sha256."""
    return {"tokenizer": base64.b64encode(tokenizer).decode(),
            "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest()}


def save_checkpoint(path: str | os.PathLike, *, params: dict[str, np.ndarray], optim: dict[str, np.ndarray],
                    config: BitLlamaConfig, train: dict, state: dict, tokenizer: bytes | None,
                    extra: dict[str, np.ndarray] | None = None) -> None:
    """Write a training checkpoint (see the module docstring); `extra`: the streaming state
    (`stream.<group>.W.<layer>` ...), see stream_shapes."""
    meta = {"format": FORMAT, "config": config.to_json(), "train": json.dumps(train, sort_keys=True),
            "state": json.dumps(state, sort_keys=True)}
    if tokenizer is not None:
        meta.update(tokenizer_metadata(tokenizer))
    tensors = dict(params)
    tensors.update(optim)
    tensors.update(extra or {})
    write_safetensors(path, tensors, meta)


def stream_shapes(cfg: BitLlamaConfig, train: dict) -> dict[str, tuple[type, tuple[int, ...]]]:
    """The streaming state a checkpoint of a `train.stream` run holds: per micro-batch group g (of
    grad_accum) and TTT layer li, `stream.g.W.li` [B, H, f, f] and `stream.g.b.li` [B, H, 1, f]
    (float32), `stream.g.fresh` [B] (uint8), `stream.g.read` [B] (int64, tokens read since the
    stream's state started); B = batch_size.  Empty for other runs."""
    if not train.get("stream"):
        return {}
    try:
        bsz, groups = int(train["batch_size"]), int(train.get("grad_accum", 1))
    except (KeyError, TypeError, ValueError):
        return {}
    h, f = cfg.num_heads, cfg.head_dim
    out: dict = {}
    for g in range(groups):
        for li in range(cfg.num_layers):
            if cfg.types[li] != "attention":
                out[f"stream.{g}.W.{li}"] = (np.float32, (bsz, h, f, f))
                out[f"stream.{g}.b.{li}"] = (np.float32, (bsz, h, 1, f))
        out[f"stream.{g}.fresh"] = (np.uint8, (bsz,))
        out[f"stream.{g}.read"] = (np.int64, (bsz,))
    return out


@dataclass
class Checkpoint:
    """A checkpoint read back: `params` (float32 by name), `optim` (the moments, by their
    `optim.m.|optim.v.` names), `config`, `train` (dict), `state` (dict), `tokenizer` (bytes or None)."""

    path: str
    params: dict[str, np.ndarray]
    optim: dict[str, np.ndarray]
    config: BitLlamaConfig
    train: dict
    state: dict
    tokenizer: bytes | None
    extra: dict = field(default_factory=dict)  # the streaming state (stream_shapes), empty for other runs


def load_checkpoint(path: str | os.PathLike, config: BitLlamaConfig | None = None) -> Checkpoint:
    """Read and verify a checkpoint.  Every parameter's shape is checked against the
    checkpoint's config, and that config against `config` when given (CheckpointError)."""
    path = os.fspath(path)
    tensors, meta, _ = read_tagged(path, (FORMAT,), error=CheckpointError, what="checkpoint file",
                                   label="training checkpoint",
                                   old_keys=("config", "train", "state", "tokenizer", "tokenizer_sha256"))
    cfg = parse_config(meta, path, CheckpointError)
    train = json_object(meta, "train", path, CheckpointError)
    state = json_object(meta, "state", path, CheckpointError)
    tok = read_tokenizer(meta, path, CheckpointError)
    if config is not None and cfg != config:
        diff = [f"{k}: checkpoint {v!r} vs {getattr(config, k)!r}" for k, v in cfg.to_dict().items()
                if getattr(config, k) != v]
        raise CheckpointError(f"{path}: the checkpoint's model config does not match ({'; '.join(diff)})")
    check_limits(cfg, path, CheckpointError, n_tensors=len(tensors),
                 data_bytes=sum(a.nbytes for a in tensors.values()), kind="checkpoint")
    shapes = param_shapes(cfg)
    want: dict = {name: (np.float32, shape) for name, shape in shapes.items()}
    moments = [f"optim.{m}.{name}" for m in "mv" for name in shapes]
    want.update({name: (np.float32, shapes[name.split(".", 2)[2]]) for name in moments})
    streams = stream_shapes(cfg, train)
    want.update(streams)
    # stream.g.read came a few hours after the first streaming checkpoints (of this project's own runs)
    check_tensors(tensors, want, path, CheckpointError,
                  optional=tuple(moments) + tuple(n for n in streams if n.endswith(".read")))
    params = {name: tensors[name] for name in shapes}
    optim = {name: tensors[name] for name in moments if name in tensors}
    return Checkpoint(path, params, optim, cfg, train, state, tok,
                      {name: tensors[name] for name in streams if name in tensors})
