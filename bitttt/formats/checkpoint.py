"""Training checkpoints: one safetensors file with the weights, the optimizer moments and metadata.

Layout
    tensors   the model's parameters by their names (bitttt.params.param_table),
              `optim.m.<name>` and `optim.v.<name>` (AdamW moments)
    metadata  format "bitttt-checkpoint/1"; config (model config JSON); train (training config
              JSON); state (JSON: step, optimizer t, data loader position, best validation loss,
              tokens seen, elapsed seconds); tokenizer (base64 of the SentencePiece model) and
              tokenizer_sha256; crc32 (JSON: name -> CRC-32 of the tensor's bytes)

Written and read by bitttt.formats.safetensors (atomic write, CRC-32 per tensor).  Reading checks
the format, every CRC and every shape against the config, and names the file in any error.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from ..config import BitLlamaConfig
from ..params import param_shapes
from .errors import CheckpointError
from .safetensors import read_tagged, write_safetensors

FORMAT = "bitttt-checkpoint/1"


def tokenizer_metadata(tokenizer: bytes) -> dict[str, str]:
    """The metadata entries that carry a tokenizer: base64 of its bytes and their sha256."""
    return {"tokenizer": base64.b64encode(tokenizer).decode(),
            "tokenizer_sha256": hashlib.sha256(tokenizer).hexdigest()}


def save_checkpoint(path: str | os.PathLike, *, params: dict[str, np.ndarray], optim: dict[str, np.ndarray],
                    config: BitLlamaConfig, train: dict, state: dict, tokenizer: bytes | None) -> None:
    """Write a training checkpoint (see the module docstring)."""
    meta = {"format": FORMAT, "config": config.to_json(), "train": json.dumps(train, sort_keys=True),
            "state": json.dumps(state, sort_keys=True)}
    if tokenizer is not None:
        meta.update(tokenizer_metadata(tokenizer))
    tensors = dict(params)
    tensors.update(optim)
    write_safetensors(path, tensors, meta)


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


def load_checkpoint(path: str | os.PathLike, config: BitLlamaConfig | None = None) -> Checkpoint:
    """Read and verify a checkpoint.  Every parameter's shape is checked against the
    checkpoint's config, and that config against `config` when given (CheckpointError)."""
    path = os.fspath(path)
    tensors, meta, _ = read_tagged(path, (FORMAT,), error=CheckpointError, what="checkpoint file",
                                   label="training checkpoint")
    try:
        cfg = BitLlamaConfig.from_json(meta["config"])
        train = json.loads(meta.get("train", "{}"))
        state = json.loads(meta.get("state", "{}"))
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupted metadata ({e})") from None
    if config is not None and cfg != config:
        diff = [f"{k}: checkpoint {v!r} vs {getattr(config, k)!r}" for k, v in cfg.to_dict().items()
                if getattr(config, k) != v]
        raise CheckpointError(f"{path}: the checkpoint's model config does not match ({'; '.join(diff)})")
    shapes = param_shapes(cfg)
    params, optim = {}, {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise CheckpointError(f"{path}: missing tensor {name}")
        if tensors[name].shape != shape:
            raise CheckpointError(f"{path}: {name} has shape {tensors[name].shape}, the config needs {shape}")
        params[name] = tensors[name]
    moments = {f"optim.{k}.{n}": shape for n, shape in shapes.items() for k in ("m", "v")}  # AdamW's names
    for name, a in tensors.items():
        if name in moments:
            if a.shape != moments[name]:
                raise CheckpointError(f"{path}: optimizer tensor {name} does not match the model")
            optim[name] = a
        elif name not in shapes:
            raise CheckpointError(f"{path}: unexpected tensor {name}")
    tok = base64.b64decode(meta["tokenizer"]) if "tokenizer" in meta else None
    return Checkpoint(path, params, optim, cfg, train, state, tok)
