"""The one safetensors reader and writer of bitttt's files, with a CRC-32 per tensor.

Layout (the standard safetensors layout: https://github.com/huggingface/safetensors)
    8 bytes    little-endian u64 n, the header's length
    n bytes    JSON header: name -> {dtype, shape, data_offsets}, plus "__metadata__" (str -> str)
    data       the tensors' little-endian bytes at their offsets

bitttt adds one metadata entry, `crc32`: JSON name -> CRC-32 of the tensor's bytes, written by
write_safetensors and checked by read_safetensors (verify=True) or check_crc32.  Tensors whose
size is a multiple of 64 bytes go first and the header is padded to a multiple of 64 bytes, so
that they start 64-byte aligned in the file (packed codes are then used in place, also from a
memory map).  The file is written tensor by tensor into a temporary file in the same folder,
fsync'ed and renamed over the target (bitttt.fileio.atomic_writer): a crash at any moment leaves
the old file or the new one.  Every error names the file and is of the class the caller asks for.
"""
from __future__ import annotations

import json
import os
import struct
import time
import zlib

import numpy as np

from .._arrays import aligned_empty
from ..fileio import atomic_writer
from .errors import CheckpointError, FormatError

DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
          np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
          np.dtype(np.uint16): "U16", np.dtype(np.uint32): "U32"}
_NAMES = {v: k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # bytes


def _pause_for_tests() -> None:
    # Test hook: hold the write half way so that a test can SIGKILL the writer mid-file.
    t = os.environ.get("BITTTT_TEST_CKPT_PAUSE")
    if t:
        time.sleep(float(t))


def _le(a: np.ndarray) -> np.ndarray:
    """a as a C-contiguous little-endian array (no copy when it already is one)."""
    a = np.ascontiguousarray(a)
    return a.astype(a.dtype.newbyteorder("<"), copy=False)


def crc32(a: np.ndarray) -> int:
    """CRC-32 of an array's little-endian bytes (0 for an empty array)."""
    a = _le(a)
    return zlib.crc32(a.reshape(-1).view(np.uint8)) if a.nbytes else 0


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically (temporary file, fsync, rename), streaming each
    tensor so that no second copy of the whole file is built in memory.

    A `crc32` entry (JSON name -> CRC-32) is added to the metadata.  TypeError for a dtype
    safetensors cannot hold."""
    header: dict = {}
    offset = 0
    arrays = []
    crcs = {}
    order = sorted(tensors, key=lambda k: np.asarray(tensors[k]).nbytes % 64 != 0)  # aligned ones first
    for name in order:
        a = np.ascontiguousarray(tensors[name])
        if a.dtype not in DTYPES:
            raise TypeError(f"{name}: dtype {a.dtype} cannot be stored")
        a = _le(a)
        header[name] = {"dtype": DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
        crcs[name] = crc32(a)
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


def check_crc32(tensors: dict[str, np.ndarray], metadata: dict[str, str], path: str,
                error: type[FormatError] = CheckpointError) -> None:
    """Check every tensor against the metadata's `crc32` entry, which must list exactly these
    tensors; `error` naming the file otherwise."""
    try:
        crcs = json.loads(metadata.get("crc32", "{}"))
    except ValueError:
        crcs = None
    if not isinstance(crcs, dict):
        raise error(f"{path}: corrupted checksums (the crc32 entry is not a JSON object)")
    for name, a in tensors.items():
        if name in crcs and crc32(a) != crcs[name]:
            raise error(f"{path}: tensor {name} is corrupted (CRC-32 mismatch)")
    if set(crcs) != set(tensors):
        raise error(f"{path}: the tensor list does not match its checksums (corrupted header)")


def read_safetensors(path: str | os.PathLike, *, verify: bool = True, header_only: bool = False, mmap: bool = False,
                     error: type[FormatError] = CheckpointError,
                     what: str = "checkpoint file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata -> (tensors by name, metadata).

    `error` (naming the file, `what` saying what it should have been) when the file is missing,
    truncated, not safetensors, or (verify) a CRC does not match.  header_only: ({}, metadata).
    mmap: the tensors are read-only views of a memory map of the file (no copy in memory);
    otherwise they are views of one 64-byte aligned buffer."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{path}: not a {what} (file of {size} bytes is too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise error(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size} bytes)")
            try:
                header = json.loads(f.read(n))
            except (ValueError, UnicodeDecodeError):
                raise error(f"{path}: corrupted header (not valid JSON)") from None
            meta = header.pop("__metadata__", {}) or {}
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise error(f"{path}: corrupted header (the metadata is not a str -> str map)")
            end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
            if 8 + n + end > size:
                raise error(f"{path}: truncated: {size} bytes, the header promises {8 + n + end}")
            if header_only:
                return {}, meta
            if mmap and end:
                data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n, shape=(end,))
            else:
                data = aligned_empty((end,), np.uint8)
                if f.readinto(memoryview(data)) != end:
                    raise error(f"{path}: truncated while reading")
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise error(f"{path}: is a directory, not a {what}") from None
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as e:
        if isinstance(e, FormatError):
            raise
        raise error(f"{path}: corrupted header ({e})") from None
    out = {}
    for name, info in header.items():
        try:
            dt = _NAMES[info["dtype"]].newbyteorder("<")
            lo, hi = (int(x) for x in info["data_offsets"])
            shape = tuple(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError):
            raise error(f"{path}: corrupted header entry for {name}") from None
        if not 0 <= lo <= hi or int(np.prod(shape, dtype=np.int64)) * dt.itemsize != hi - lo:
            raise error(f"{path}: tensor {name}: {hi - lo} bytes do not hold shape {shape}")
        out[name] = data[lo:hi].view(dt).reshape(shape).astype(dt.newbyteorder("="), copy=False)
    if verify:
        check_crc32(out, meta, path, error)
    return out, meta


def read_tagged(path: str | os.PathLike, formats: tuple[str, ...], *, error: type[FormatError], what: str,
                label: str = "", key: str = "format",
                verify: bool = True) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """read_safetensors, then the format tag metadata[key] must be one of `formats` (`error`
    "not a bitttt <label>" otherwise; label defaults to `what`) -> (tensors, metadata, format)."""
    tensors, meta = read_safetensors(path, verify=verify, error=error, what=what)
    fmt = meta.get(key)
    if fmt not in formats:
        raise error(f"{os.fspath(path)}: not a bitttt {label or what} (format {fmt!r}, expected {formats[0]!r})")
    return tensors, meta, fmt


def read_metadata(path: str | os.PathLike, *, error: type[FormatError] = CheckpointError,
                  what: str = "checkpoint file") -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors (errors as read_safetensors)."""
    return read_safetensors(path, verify=False, header_only=True, error=error, what=what)[1]
