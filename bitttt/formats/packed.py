"""PackedTernary tensor sets and files.

A matrix stored under prefix P is three tensors (layout of the codes: src_c/bt_ternary.h):
  P.codes     uint8   [rows, stride]  format t2: 2-bit codes, stride = ceil(cols / 256) * 64
  or P.codes_t1 uint8 [rows, stride]  format t1: five codes per byte, stride = ceil(cols / 80) * 16
  P.scale     float32 [1]             s, so that W ~= s * w, w in {-1, 0, +1}
  P.shape     int64   [2]             (rows, cols)
The name of the codes tensor says the format; a set holding both (or neither) is refused.
A packed ternary file holds one matrix with no prefix, metadata "bitttt.format" =
"bitttt.ternary/2", written and checked by bitttt.formats.safetensors (CRC-32 per tensor).

Still read: "bitttt.ternary/1" files (written with the safetensors package), whose metadata
"P.crc32" held one CRC-32 (8 hex digits) of codes, scale and shape together; packed model
files written before that scheme was dropped carry these entries next to the per-tensor
`crc32` entry, which covers the same bytes (they are ignored there).
"""
from __future__ import annotations

import errno
import os
import zlib

import numpy as np

from .. import _core
from ..ternary import PackedTernary
from .errors import PackedFormatError
from .safetensors import check_crc32, read_tagged, write_safetensors

FORMAT = "bitttt.ternary/2"
FORMAT_V1 = "bitttt.ternary/1"  # one CRC per matrix in the metadata; still read
_PARTS = ("codes", "scale", "shape")
CODES = {"t2": "codes", "t1": "codes_t1"}  # packed format -> the name of its codes tensor


def _pre(prefix: str) -> str:
    return f"{prefix}." if prefix else ""


def packed_tensors(p: PackedTernary, prefix: str = "") -> dict[str, np.ndarray]:
    """The tensors `prefix.codes|scale|shape` of a packed matrix (`prefix.codes_t1` for format t1;
    codes not copied)."""
    pre = _pre(prefix)
    return {f"{pre}{CODES[p.format]}": p.codes, f"{pre}scale": np.array([p.scale], dtype=np.float32),
            f"{pre}shape": np.array([p.rows, p.cols], dtype=np.int64)}


def packed_from_tensors(tensors: dict[str, np.ndarray], prefix: str = "", source: str = "tensors",
                        metadata: dict[str, str] | None = None) -> PackedTernary:
    """Rebuild the matrix stored under `prefix`; PackedFormatError (naming `source`) when a tensor
    is missing, of the wrong dtype or shape, or the codes are invalid, or when `metadata` holds
    a first-format `prefix.crc32` checksum that does not match."""
    p = _from_tensors(tensors, prefix, source)
    if metadata is not None:
        check_v1_checksum(p, metadata, prefix, source)
    return p


def tensor_names(tensors, prefix: str = "") -> tuple[str, ...]:
    """The names of the tensors of the matrix under `prefix` in a set holding them: its codes
    tensor by the format found (t2 when neither or both are there: the reader then says so)."""
    pre = _pre(prefix)
    fmt = "t1" if f"{pre}codes_t1" in tensors and f"{pre}codes" not in tensors else "t2"
    return (f"{pre}{CODES[fmt]}", f"{pre}scale", f"{pre}shape")


def _from_tensors(tensors: dict[str, np.ndarray], prefix: str, source: str) -> PackedTernary:
    pre = _pre(prefix)
    if f"{pre}codes" in tensors and f"{pre}codes_t1" in tensors:
        raise PackedFormatError(f"{source}: both {pre}codes and {pre}codes_t1: one packed format per matrix")
    names = tensor_names(tensors, prefix)
    fmt = "t1" if names[0].endswith("codes_t1") else "t2"
    missing = [k for k in names if k not in tensors]
    if missing:
        raise PackedFormatError(f"{source}: missing tensor(s) {', '.join(missing)}")
    codes, scale, shape = (tensors[k] for k in names)
    if codes.dtype != np.uint8 or codes.ndim != 2:
        raise PackedFormatError(f"{source}: {names[0]} must be uint8 [rows, stride], got {codes.dtype} {codes.shape}")
    if scale.dtype != np.float32 or scale.shape != (1,):
        raise PackedFormatError(f"{source}: {pre}scale must be float32 [1], got {scale.dtype} {scale.shape}")
    if shape.dtype != np.int64 or shape.shape != (2,):
        raise PackedFormatError(f"{source}: {pre}shape must be int64 [2], got {shape.dtype} {shape.shape}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows != codes.shape[0] or not 1 <= cols <= _core.MAX_COLS or \
            codes.shape[1] != _core.row_stride(cols, _core.FMT_T1 if fmt == "t1" else _core.FMT_T2):
        raise PackedFormatError(f"{source}: {pre}shape {rows}x{cols} does not match {names[0]} {codes.shape}")
    try:
        return PackedTernary(np.ascontiguousarray(codes), float(scale[0]), cols, fmt)
    except ValueError as e:
        raise PackedFormatError(f"{source}: {pre}: {e}") from None


def v1_checksum(p: PackedTernary) -> str:
    """The bitttt.ternary/1 checksum: CRC-32 of codes, scale and shape together, 8 hex digits."""
    crc = zlib.crc32(p.codes)
    crc = zlib.crc32(np.float32(p.scale).tobytes(), crc)
    crc = zlib.crc32(np.array([p.rows, p.cols], dtype=np.int64).tobytes(), crc)
    return f"{crc:08x}"


def check_v1_checksum(p: PackedTernary, metadata: dict[str, str], prefix: str = "", source: str = "tensors",
                      required: bool = False) -> None:
    """Check the bitttt.ternary/1 entry `prefix.crc32` when the metadata has one (PackedFormatError);
    a per-tensor `crc32` JSON entry (today's scheme, checked when the file is read) is no such entry."""
    pre = _pre(prefix)
    want = metadata.get(f"{pre}crc32")
    if want is None or want.lstrip().startswith("{"):
        if required:
            raise PackedFormatError(f"{source}: no checksum {pre}crc32 in the metadata")
        return
    if want != v1_checksum(p):
        raise PackedFormatError(f"{source}: checksum mismatch for {pre}codes (the data is corrupted)")


def write_packed(path: str | os.PathLike, p: PackedTernary) -> None:
    """Write one matrix as a packed ternary file (atomic; CRC-32 per tensor)."""
    write_safetensors(path, packed_tensors(p), {"bitttt.format": FORMAT})


def read_packed(path: str | os.PathLike) -> PackedTernary:
    """Read a packed ternary file (bitttt.ternary/2 or /1).  FileNotFoundError when there is no
    file; PackedFormatError naming the file on any damage or a foreign file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    tensors, meta, fmt = read_tagged(path, (FORMAT, FORMAT_V1), error=PackedFormatError, what="packed ternary file",
                                     key="bitttt.format", verify=False,
                                   old_keys=())
    if fmt == FORMAT and "crc32" in meta:  # damage first, then what is missing or malformed
        check_crc32(tensors, meta, path, PackedFormatError)
    extra = sorted(set(tensors) - set(tensor_names(tensors)))
    if extra:
        raise PackedFormatError(f"{path}: unexpected tensor(s) {', '.join(extra[:5])}")
    p = packed_from_tensors(tensors, source=path)
    if fmt == FORMAT_V1:
        check_v1_checksum(p, meta, source=path, required=True)
    elif "crc32" not in meta:
        raise PackedFormatError(f"{path}: no checksums (crc32) in the metadata")
    return p
