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
import stat
import struct
import time
import zlib

import numpy as np

from .._arrays import aligned_empty
from ..fileio import atomic_writer
from .errors import CheckpointError, FormatError
from .validate import nesting_ok, safe_json

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
    meta["meta_crc32"] = meta_crc32(header)
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
    text = metadata.get("crc32", "{}")
    try:  # a nesting bomb is no JSON object either (and would exhaust json's recursion)
        crcs = json.loads(text) if nesting_ok(text) else None
    except (ValueError, RecursionError):
        crcs = None
    if not isinstance(crcs, dict):
        raise error(f"{path}: corrupted checksums (the crc32 entry is not a JSON object)")
    for name, a in tensors.items():
        if name in crcs and crc32(a) != crcs[name]:
            raise error(f"{path}: tensor {name} is corrupted (CRC-32 mismatch)")
    if set(crcs) != set(tensors):
        raise error(f"{path}: the tensor list does not match its checksums (corrupted header)")


def meta_crc32(header: dict) -> str:
    """The `meta_crc32` entry: CRC-32 (8 hex digits) of the header -- every tensor's dtype, shape
    and offsets and every metadata entry (config, tokenizer, ids, crc32) -- as sorted compact
    JSON, without the meta_crc32 entry itself."""
    h = dict(header)
    meta = {k: v for k, v in h.get("__metadata__", {}).items() if k != "meta_crc32"}
    h["__metadata__"] = meta
    return f"{zlib.crc32(json.dumps(h, sort_keys=True, separators=(',', ':')).encode()):08x}"


def _int(v) -> bool:
    return type(v) is int and 0 <= v < 2**63


def _header(path: str, raw: bytes, data_len: int, error: type[FormatError]) -> tuple[dict, dict[str, str]]:
    """Parse and check a header: a JSON object of tensor entries (known dtype, shape of non-negative
    ints, offsets that tile the data section exactly) and a str -> str `__metadata__`."""
    header = safe_json(raw, f"{path}: the header", error)
    if not isinstance(header, dict):
        raise error(f"{path}: corrupted header (a JSON {type(header).__name__}, not an object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise error(f"{path}: corrupted header (__metadata__ is not a str -> str object)")
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise error(f"{path}: corrupted header entry for tensor {name!r} (needs dtype, shape, data_offsets)")
        dt, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dt, str) or dt not in _NAMES:
            raise error(f"{path}: tensor {name!r}: unknown dtype {dt!r} (known: {', '.join(sorted(_NAMES))})")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_int(d) for d in shape):
            raise error(f"{path}: tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
        if not isinstance(offs, list) or len(offs) != 2 or not all(_int(o) for o in offs) or offs[0] > offs[1]:
            raise error(f"{path}: tensor {name!r}: data_offsets {offs!r} are not two increasing integers")
        nbytes = _NAMES[dt].itemsize
        for d in shape:
            nbytes *= d  # Python ints: no wrap-around
        if nbytes != offs[1] - offs[0]:
            raise error(f"{path}: tensor {name!r}: {offs[1] - offs[0]} bytes do not hold {dt} {shape}")
        spans.append((offs[0], offs[1], name))
    at = 0
    for lo, hi, name in sorted(spans):
        if lo != at:
            what = "overlaps another tensor" if lo < at else "leaves a gap before it"
            raise error(f"{path}: tensor {name!r}: data_offsets [{lo}, {hi}] {what} (corrupted header)")
        at = hi
    if at != data_len:
        state = "truncated" if at > data_len else "has trailing bytes"
        raise error(f"{path}: {state}: the header promises {at} bytes of tensor data, the file holds {data_len}")
    if "meta_crc32" in meta and meta["meta_crc32"] != meta_crc32(header):
        raise error(f"{path}: the header is corrupted (meta_crc32 mismatch: config, tokenizer or tensor list damaged)")
    return header, meta


def read_safetensors(path: str | os.PathLike, *, verify: bool = True, header_only: bool = False, mmap: bool = False,
                     error: type[FormatError] = CheckpointError,
                     what: str = "checkpoint file") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every tensor and the metadata -> (tensors by name, metadata).

    `error` (naming the file, `what` saying what it should have been) when the file is missing,
    not a regular file, truncated, not safetensors, when the header breaks a rule of _header (or
    its `meta_crc32` does not match), or (verify) a tensor's CRC does not match.  header_only:
    ({}, metadata).  mmap: the tensors are read-only views of a memory map of the file (no copy
    in memory); otherwise they are views of one 64-byte aligned buffer."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise error(f"{path}: not a regular file, not a {what}")
            size = st.st_size
            head = f.read(8)
            if len(head) < 8:
                raise error(f"{path}: not a {what} (file of {size} bytes is too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, MAX_HEADER):
                raise error(f"{path}: truncated or not a safetensors file (header of {n} bytes, file of {size} bytes)")
            raw = f.read(n)
            if len(raw) != n:
                raise error(f"{path}: truncated while reading the header")
            header, meta = _header(path, raw, size - 8 - n, error)
            end = size - 8 - n
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
    except PermissionError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror})") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = _NAMES[info["dtype"]].newbyteorder("<")
        lo, hi = info["data_offsets"]
        out[name] = data[lo:hi].view(dt).reshape(info["shape"]).astype(dt.newbyteorder("="), copy=False)
    if verify:
        check_crc32(out, meta, path, error)
    return out, meta


def read_tagged(path: str | os.PathLike, formats: tuple[str, ...], *, error: type[FormatError], what: str,
                label: str = "", key: str = "format", verify: bool = True,
                old_keys: tuple[str, ...] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str], str]:
    """read_safetensors, then the format tag metadata[key] must be one of `formats` (`error`
    "not a bitttt <label>" otherwise; label defaults to `what`) -> (tensors, metadata, format).
    A file without `meta_crc32` (written before it) may hold only the entries `old_keys` (when
    given), crc32 and `<name>.crc32`: a damaged key name is refused there too."""
    tensors, meta = read_safetensors(path, verify=verify, error=error, what=what)
    fmt = meta.get(key)
    if fmt not in formats:
        raise error(f"{os.fspath(path)}: not a bitttt {label or what} (format {fmt!r}, expected {formats[0]!r})")
    if old_keys is not None and "meta_crc32" not in meta:  # an old file: its keys are known, none renamed
        unknown = sorted(k for k in meta if k not in old_keys and k not in (key, "crc32") and not k.endswith(".crc32"))
        if unknown:
            raise error(f"{os.fspath(path)}: unknown metadata entry {unknown[0]!r} in a file without meta_crc32 "
                        "(corrupted header)")
    return tensors, meta, fmt


def read_metadata(path: str | os.PathLike, *, error: type[FormatError] = CheckpointError,
                  what: str = "checkpoint file") -> dict[str, str]:
    """The metadata of a safetensors file, without reading its tensors (errors as read_safetensors)."""
    return read_safetensors(path, verify=False, header_only=True, error=error, what=what)[1]
