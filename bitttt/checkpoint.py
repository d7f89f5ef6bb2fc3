"""Training checkpoints: one safetensors file with the weights, the optimizer moments and metadata.

Layout
    tensors   the model's parameters by their names (see bitttt.model.param_shapes),
              `optim.m.<name>` and `optim.v.<name>` (AdamW moments)
    metadata  format "bitttt-checkpoint/1"; config (model config JSON); train (training config
              JSON); state (JSON: step, optimizer t, data loader position, best validation loss,
              tokens seen, elapsed seconds); tokenizer (base64 of the SentencePiece model) and
              tokenizer_sha256; crc32 (JSON: name -> CRC-32 of the tensor's bytes)

The file is written tensor by tensor into a temporary file in the same folder, fsync'ed and
renamed over the target: a crash or SIGKILL at any moment leaves either the old file or the
new one, never a half-written checkpoint under the final name.  Reading checks the format,
every CRC and every shape against the config, and names the file in any error.
"""
from __future__ import annotations

import base64
import json
import os
import struct
import time
import zlib

import numpy as np

from .config import BitLlamaConfig
from .fileio import atomic_writer

FORMAT = "bitttt-checkpoint/1"
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
           np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
           np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32"}


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted, foreign or does not match the config."""


def _pause_for_tests() -> None:
    # Test hook: hold the write half way so that a test can SIGKILL the writer mid-file.
    t = os.environ.get("BITTTT_TEST_CKPT_PAUSE")
    if t:
        time.sleep(float(t))


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (temporary file, fsync, rename), streaming each
    tensor so that no second copy of the whole checkpoint is built in memory.

    A `crc32` entry (JSON name -> CRC-32) is added to the metadata."""
    header: dict = {}
    offset = 0
    arrays = []
    crcs = {}
    # tensors whose size is a multiple of 64 bytes go first and the header is padded to a multiple of
    # 64 bytes, so that they all start 64-byte aligned in the file (packed codes can then be used in
    # place from a memory map)
    order = sorted(tensors, key=lambda k: np.asarray(tensors[k]).nbytes % 64 != 0)
    for name in order:
        a = tensors[name]
        a = np.ascontiguousarray(a)
        if a.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} cannot be stored")
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": _DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
        crcs[name] = zlib.crc32(memoryview(a).cast("B")) if a.nbytes else 0
    meta = dict(metadata)
    meta["crc32"] = json.dumps(crcs, separators=(",", ":"))
    header["__metadata__"] = meta
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-(len(hb) + 8) % 64)
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        half = len(arrays) // 2
        for i, arr in enumerate(arrays):
            if i == half:
                f.flush()
                _pause_for_tests()
            if arr.nbytes:
                f.write(memoryview(arr).cast("B"))


def read_safetensors(path: str | os.PathLike, *, verify: bool = True, header_only: bool = False,
                     mmap: bool = False) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata; CheckpointError naming the file when it is missing,
    truncated, not safetensors, or a CRC does not match.  header_only: ({}, metadata).
    mmap: the tensors are read-only views of a memory map of the file (no copy in memory)."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a checkpoint (file of {size} bytes is too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 * 2**20):
                raise CheckpointError(f"{path}: truncated or not a safetensors file (header of {n} bytes, "
                                      f"file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise CheckpointError(f"{path}: corrupted header (not valid JSON)") from None
            meta = header.pop("__metadata__", {}) or {}
            end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
            if 8 + n + end > size:
                raise CheckpointError(f"{path}: truncated: {size} bytes, the header promises {8 + n + end}")
            if header_only:
                return {}, meta
            if mmap and end:
                data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(end,))
            else:  # 64-byte aligned, so that packed codes stored aligned in the file are used in place
                from ._arrays import aligned_empty

                data = aligned_empty((end,), np.uint8)
                if f.readinto(memoryview(data)) != end:
                    raise CheckpointError(f"{path}: truncated while reading")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file") from None
    except (KeyError, TypeError, IndexError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{path}: corrupted header ({e})") from None
    rev = {v: k for k, v in _DTYPES.items()}
    crcs = json.loads(meta.get("crc32", "{}")) if verify else {}
    out = {}
    for name, info in header.items():
        try:
            dt = rev[info["dtype"]].newbyteorder("<")
            lo, hi = (int(x) for x in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupted header entry for {name}") from None
        raw = data[lo:hi]
        if verify and name in crcs and zlib.crc32(raw) != crcs[name]:
            raise CheckpointError(f"{path}: tensor {name} is corrupted (CRC-32 mismatch)")
        if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != hi - lo:
            raise CheckpointError(f"{path}: tensor {name}: {hi - lo} bytes do not hold shape {shape}")
        out[name] = raw.view(dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)
    if verify and set(crcs) != set(out):
        raise CheckpointError(f"{path}: the tensor list does not match its checksums (corrupted header)")
    return out, meta


def save_checkpoint(path: str | os.PathLike, *, params: dict[str, np.ndarray], optim: dict[str, np.ndarray],
                    config: BitLlamaConfig, train: dict, state: dict, tokenizer: bytes | None) -> None:
    """Write a training checkpoint (see the module docstring)."""
    meta = {"format": FORMAT, "config": config.to_json(), "train": json.dumps(train, sort_keys=True),
            "state": json.dumps(state, sort_keys=True)}
    if tokenizer is not None:
        import hashlib

        meta["tokenizer"] = base64.b64encode(tokenizer).decode()
        meta["tokenizer_sha256"] = hashlib.sha256(tokenizer).hexdigest()
    tensors = dict(params)
    tensors.update(optim)
    write_safetensors(path, tensors, meta)


class Checkpoint:
    """A checkpoint read back: `params`, `optim` (moments), `config`, `train` (dict), `state` (dict),
    `tokenizer` (bytes or None), `path`."""

    def __init__(self, path, params, optim, config, train, state, tokenizer):
        self.path, self.params, self.optim, self.config = path, params, optim, config
        self.train, self.state, self.tokenizer = train, state, tokenizer


def load_checkpoint(path: str | os.PathLike, config: BitLlamaConfig | None = None) -> Checkpoint:
    """Read and verify a checkpoint.  Every parameter's shape is checked against the
    checkpoint's config, and that config against `config` when given (CheckpointError)."""
    from .model import param_shapes

    path = os.fspath(path)
    tensors, meta = read_safetensors(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a bitttt training checkpoint (format {meta.get('format')!r})")
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
    for name, a in tensors.items():
        if name.startswith("optim."):
            base = name.split(".", 2)[2]
            if base not in shapes or a.shape != shapes[base]:
                raise CheckpointError(f"{path}: optimizer tensor {name} does not match the model")
            optim[name] = a
        elif name not in shapes:
            raise CheckpointError(f"{path}: unexpected tensor {name}")
    tok = base64.b64decode(meta["tokenizer"]) if "tokenizer" in meta else None
    return Checkpoint(path, params, optim, cfg, train, state, tok)
