"""Packed model files (python -m bitttt.export): one safetensors file, for inference only.

    <BitLinear weight>.{codes,scale,shape}   every tensor of kind "linear" (bitttt.params), 2-bit
                                             packed (bitttt.formats.packed; float32 by its own
                                             name when the model is not ternary); with packing
                                             "t1", .codes_t1 instead of .codes (1.6 bits per weight)
    embed.weight                             float16 [V, D]
    head.weight.int8 + head.weight.scale     the LM head, int8 [V, D] per row with a float32 [V]
                                             absmax scale per row; or head.weight float16|float32
                                             [V, D] (head "float16" / "float32")
    everything else (norms, TTT inner parameters)   float32, by the model's names
metadata: format "bitttt-model/1", config, tokenizer (base64) and its sha256, model_id (the
identity memory files are tagged with: that of the source checkpoint, so memories move between the
checkpoint and its export), head format, packing (the BitLinear weights' packed format, "t2" or
"t1"; files without the entry are t2, and every matrix's codes tensor must agree), source (the
checkpoint's file name, never a path), step and seq_len (the training sequence length; "" when
unknown: eval's default --reset-every); the
per-tensor `crc32` of bitttt.formats.safetensors.  Files written before per-matrix checksums
were dropped also carry `<name>.crc32` entries (covered by `crc32` as well; ignored).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import numpy as np

from ..config import BitLlamaConfig
from ..params import param_table
from ..ternary import PackedTernary
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import load_checkpoint, tokenizer_metadata
from .errors import CheckpointError, FormatError
from .packed import CODES, packed_from_tensors, packed_tensors
from .runs import checkpoint_step, resolve
from .safetensors import read_metadata, read_tagged, write_safetensors
from .validate import check_limits, check_tensors, parse_config, read_tokenizer

MODEL_FORMAT = "bitttt-model/1"
HEAD_FORMATS = ("int8", "float16", "float32")
PACKINGS = ("t2", "t1")  # packed formats of the BitLinear weights (bitttt.ternary)


def weights_id(config: BitLlamaConfig, params: dict[str, np.ndarray]) -> str:
    """The identity of a model: sha256 of its config and float32 weights (memory files carry it)."""
    h = hashlib.sha256(config.to_json().encode())
    for name in sorted(params):
        h.update(name.encode())
        h.update(np.ascontiguousarray(params[name], dtype=np.float32).tobytes())
    return h.hexdigest()


def _check_head(head: str) -> None:
    if head not in HEAD_FORMATS:
        raise ValueError(f"head format must be one of {', '.join(HEAD_FORMATS)}, got {head!r}")


def _check_packing(packing: str) -> None:
    if packing not in PACKINGS:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, got {packing!r}")


def quantize_head(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8: w [V, D] -> (q int8 [V, D], scale float32 [V]) with w ~ q * scale."""
    amax = np.max(np.abs(w), axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


@dataclass
class ModelFile:
    """A packed model file read back.  `params`: every float tensor by its model name (embed.weight
    float16 [V, D], the rest float32), without the packed BitLinear weights (in `packed`) and
    without the LM head, which is `head_int8` (int8 [V, D], float32 [V] row scales) or `head`
    (float32 [V, D]).  `tokenizer`: the SentencePiece model's bytes.  `metadata`: all of it."""

    path: str
    config: BitLlamaConfig
    params: dict[str, np.ndarray]
    packed: dict[str, PackedTernary]
    tokenizer: bytes
    model_id: str | None = None
    head_int8: tuple[np.ndarray, np.ndarray] | None = None
    head: np.ndarray | None = None
    metadata: dict[str, str] = field(default_factory=dict)


def write_model_file(path: str | os.PathLike, config: BitLlamaConfig, params: dict[str, np.ndarray], *,
                     tokenizer: bytes, model_id: str, head: str = "int8", source: str = "",
                     step: str = "", seq_len: int | None = None, packing: str = "t2") -> dict[str, str]:
    """Write a packed model file (atomic) from float parameters (every tensor of the config's
    param_table); returns its metadata.  `source`: where the weights came from (a file name);
    `packing`: the BitLinear weights' format, "t2" (2 bits per weight) or "t1" (1.6)."""
    _check_head(head)
    _check_packing(packing)
    tensors: dict[str, np.ndarray] = {}
    for name, spec in param_table(config).items():
        w = np.ascontiguousarray(params[name], dtype=np.float32)
        if spec.kind == "linear" and config.ternary:
            tensors.update(packed_tensors(PackedTernary.quantize(w, format=packing), name))
        elif spec.kind == "embedding":
            tensors[name] = w.astype(np.float16)
        elif spec.kind != "head":
            tensors[name] = w
    hw = np.asarray(params["embed.weight" if config.tie_word_embeddings else "lm_head.weight"], dtype=np.float32)
    if head == "int8":
        tensors["head.weight.int8"], tensors["head.weight.scale"] = quantize_head(hw)
    else:
        tensors["head.weight"] = hw.astype(np.float16) if head == "float16" else hw
    meta = {"format": MODEL_FORMAT, "config": config.to_json(), **tokenizer_metadata(tokenizer),
            "model_id": model_id, "head": head, "packing": packing, "source": os.path.basename(source), "step": step,
            "seq_len": "" if seq_len is None else str(int(seq_len))}
    write_safetensors(path, tensors, meta)
    return meta


def export_checkpoint(src: str | os.PathLike, out: str | os.PathLike, head: str = "int8",
                      force: bool = False, packing: str = "t2") -> dict[str, str]:
    """Write the packed model file `out` for a checkpoint or run directory `src` (its best, else its
    newest intact checkpoint); returns the file's metadata, plus `path`: the file written.  `out`
    may be a directory: the file is then <out>/<run or checkpoint name>.safetensors.  ValueError
    when the checkpoint carries no tokenizer, or when `out` is the source, a training checkpoint,
    a name in a run's checkpoints/ folder or (unless `force`) any existing file that is not a
    bitttt model file (it is never overwritten); CheckpointError when the checkpoint is damaged.
    `packing`: the BitLinear weights' format, "t2" (default) or "t1" (1.6 bits per weight)."""
    _check_head(head)
    _check_packing(packing)
    path = resolve(os.fspath(src))
    out = _export_target(os.fspath(src), path, os.fspath(out), force)
    ck = load_checkpoint(path)
    if ck.tokenizer is None:
        raise ValueError(f"{path}: the checkpoint carries no tokenizer")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    meta = write_model_file(out, ck.config, ck.params, tokenizer=ck.tokenizer,
                            model_id=weights_id(ck.config, ck.params), head=head, packing=packing,
                            source=os.path.basename(path), step=str(ck.state.get("step", "")),
                            seq_len=ck.train.get("seq_len") if isinstance(ck.train.get("seq_len"), int) else None)
    return {**meta, "path": out}


def _export_target(src: str, ckpt: str, out: str, force: bool = False) -> str:
    """Where an export may write (see export_checkpoint); ValueError for a file it must not replace."""
    if os.path.isdir(out):
        stem = os.path.basename(os.path.normpath(src)) if os.path.isdir(src) else \
            os.path.splitext(os.path.basename(ckpt))[0]
        out = os.path.join(out, f"{stem}.safetensors")
    if os.path.exists(out) and os.path.samefile(out, ckpt):
        raise ValueError(f"{out}: is the checkpoint being exported; choose another --out")
    parent = os.path.basename(os.path.dirname(os.path.abspath(out)))
    if parent == "checkpoints" and (checkpoint_step(out) >= 0 or os.path.basename(out) == "best.safetensors"):
        raise ValueError(f"{out}: is a training checkpoint's name in a run directory; choose another --out")
    if os.path.lexists(out):
        if not os.path.isfile(out):
            raise ValueError(f"{out}: exists and is not a regular file; choose another --out")
        try:
            fmt = read_metadata(out, what="model file").get("format")
        except FormatError:
            fmt = None
        if fmt == CHECKPOINT_FORMAT or (fmt != MODEL_FORMAT and not force):
            kind = "a training checkpoint" if fmt == CHECKPOINT_FORMAT else "not a bitttt model file"
            raise ValueError(f"{out}: exists and is {kind}; it is not overwritten: choose another --out")
    return out


def read_model_file(path: str | os.PathLike) -> ModelFile:
    """Read and verify a packed model file (every CRC, every tensor against the config).
    CheckpointError naming the file when it is damaged, foreign or incomplete; PackedFormatError
    for a malformed packed matrix."""
    path = os.fspath(path)
    t, meta, _ = read_tagged(path, (MODEL_FORMAT,), error=CheckpointError, what="model file",
                             old_keys=("config", "tokenizer", "tokenizer_sha256", "model_id", "head", "source", "step"))
    cfg = parse_config(meta, path, CheckpointError)
    tok = read_tokenizer(meta, path, CheckpointError)
    if tok is None:
        raise CheckpointError(f"{path}: metadata has no 'tokenizer' entry")
    check_limits(cfg, path, CheckpointError, n_tensors=len(t), data_bytes=sum(a.nbytes for a in t.values()),
                 kind="model")
    packing = meta.get("packing", "t2")
    if packing not in PACKINGS:
        raise CheckpointError(f"{path}: metadata 'packing' is {packing[:40]!r}, not one of {', '.join(PACKINGS)}")
    want: dict = {}
    table = param_table(cfg)
    for name, spec in table.items():
        if spec.kind == "linear" and cfg.ternary:
            want.update({f"{name}.{CODES[packing]}": (np.uint8, None), f"{name}.scale": (np.float32, (1,)),
                         f"{name}.shape": (np.int64, (2,))})  # their shapes: packed_from_tensors
        elif spec.kind == "embedding":
            want[name] = ((np.float16, np.float32), spec.shape)
        elif spec.kind != "head":
            want[name] = (np.float32, spec.shape)
    vd = (cfg.vocab_size, cfg.hidden_size)
    if "head.weight" in t:
        want["head.weight"] = ((np.float16, np.float32), vd)
    else:
        want.update({"head.weight.int8": (np.int8, vd), "head.weight.scale": (np.float32, (cfg.vocab_size,))})
    check_tensors(t, want, path, CheckpointError)
    packed, params = {}, {}
    for name, spec in table.items():
        if spec.kind == "linear" and cfg.ternary:
            packed[name] = packed_from_tensors(t, prefix=name, source=path)
            if (packed[name].rows, packed[name].cols) != spec.shape:
                raise CheckpointError(f"{path}: packed {name} is {packed[name].rows}x{packed[name].cols}, "
                                      f"the config needs {spec.shape}")
        elif spec.kind == "embedding":
            params[name] = t[name]  # float16 rows, converted when looked up
        elif spec.kind != "head":
            params[name] = t[name].astype(np.float32)
    head_int8 = head = None
    if "head.weight" in t:
        head = t["head.weight"].astype(np.float32)
    else:
        head_int8 = (t["head.weight.int8"], t["head.weight.scale"])
    return ModelFile(path, cfg, params, packed, tok, meta.get("model_id"), head_int8, head, meta)
