"""PackedTernary: a 1.58-bit weight matrix held as packed codes plus one float32 scale.

Two packed formats (layouts documented in src_c/bt_ternary.h and docs/formats.md): "t2", 2 bits
per weight (four per byte, the default), and "t1", 1.6 bits per weight (five per byte); every
kernel gives the same results on both.  On disk (safetensors), a matrix stored under prefix P
is three tensors, P.codes (t2) or P.codes_t1 (t1), P.scale and P.shape: see bitttt.formats.packed.
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._arrays import aligned_empty, check_array

FORMATS = {"t2": _core.FMT_T2, "t1": _core.FMT_T1}  # packed format name -> the C core's tag


def check_format(format: str) -> int:
    """The C core's tag of a packed format name ("t2" or "t1"); ValueError for any other."""
    if not isinstance(format, str) or format not in FORMATS:
        raise ValueError(f"packed format must be one of {', '.join(FORMATS)}, got {format!r}")
    return FORMATS[format]


class PackedTernary:
    """Ternary matrix [rows, cols] packed at 2 bits per weight ("t2") or 1.6 ("t1") (layouts:
    src_c/bt_ternary.h).

    Build one with PackedTernary.quantize(W) (BitNet b1.58 absmean rule) or read one with
    bitttt.read_packed(path) (files and tensor sets: bitttt.formats.packed).  `codes` is a 64-byte aligned uint8 array
    [rows, stride]; `scale` is the float32 s with W ~= s * ternary(); `format` is "t2" or "t1"
    (to_format converts).
    """

    __slots__ = ("codes", "scale", "rows", "cols", "format", "_frozen")

    def __init__(self, codes: np.ndarray, scale: float, cols: int, format: str = "t2"):
        fmt = check_format(format)
        codes = check_array(codes, "codes", np.uint8, ndim=(2,))
        rows = codes.shape[0]
        cols = int(cols)
        if not 1 <= cols <= _core.MAX_COLS:
            raise ValueError(f"cols must be in [1, {_core.MAX_COLS}], got {cols}")
        if codes.shape[1] != _core.row_stride(cols, fmt):
            raise ValueError(
                f"codes must have {_core.row_stride(cols, fmt)} bytes per row for {cols} columns "
                f"(format {format}), got {codes.shape[1]}"
            )
        scale = np.float32(scale)
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        if codes.ctypes.data % _core.ALIGN:
            aligned = aligned_empty(codes.shape, np.uint8)
            aligned[...] = codes
            codes = aligned
        _core.check_codes(codes, cols, fmt)
        self.codes = codes
        self.scale = float(scale)
        self.rows = rows
        self.cols = cols
        self.format = format
        self._frozen = True  # the kernels trust rows and cols against the codes: no later change

    # -- construction ---------------------------------------------------------------
    @classmethod
    def quantize(cls, w: np.ndarray, scale: float | None = None, format: str = "t2") -> PackedTernary:
        """Pack W [rows, cols] (float16/32/64; computed in float32) in `format` ("t2" or "t1").

        s = mean|W| + 1e-5 (summed in float64) unless `scale` is given;
        codes = clip(round(W / s), -1, 1) with round half to even.
        Raises TypeError for a non-float array, ValueError for NaN/inf or an empty matrix.
        """
        fmt = check_format(format)
        if not isinstance(w, np.ndarray):
            raise TypeError(f"W must be a numpy.ndarray, got {type(w).__name__}")
        if w.dtype.kind != "f":
            raise TypeError(f"W must be a floating-point array, got dtype {w.dtype}")
        if w.ndim != 2:
            raise ValueError(f"W must be 2-D [rows, cols], got shape {w.shape}")
        if w.size == 0:
            raise ValueError(f"W is empty (shape {w.shape}); every dimension must be at least 1")
        if w.shape[1] > _core.MAX_COLS:
            raise ValueError(f"W has {w.shape[1]} columns; at most {_core.MAX_COLS} are supported")
        w32 = np.ascontiguousarray(w, dtype=np.float32)
        if scale is None:
            s = _core.absmean_scale(w32)
        else:
            s = np.float32(scale)
            if not (np.isfinite(s) and s > 0):
                raise ValueError(f"scale must be a positive finite number, got {scale}")
        rows, cols = w32.shape
        codes = aligned_empty((rows, _core.row_stride(cols, fmt)), np.uint8)
        _core.pack(w32, float(s), codes, fmt)
        return cls._trusted(codes, float(np.float32(s)), rows, cols, format)

    @classmethod
    def _trusted(cls, codes: np.ndarray, scale: float, rows: int, cols: int, format: str) -> PackedTernary:
        out = cls.__new__(cls)
        out.codes, out.scale, out.rows, out.cols, out.format = codes, scale, rows, cols, format
        out._frozen = True
        return out

    @classmethod
    def from_ternary(cls, t: np.ndarray, scale: float = 1.0, format: str = "t2") -> PackedTernary:
        """Pack an integer matrix of -1/0/+1 values exactly (ValueError on other values)."""
        t = np.asarray(t)
        if t.dtype.kind not in "iu":
            raise TypeError(f"ternary values must be an integer array, got dtype {t.dtype}")
        if t.size and (t.min() < -1 or t.max() > 1):
            raise ValueError("ternary values must all be -1, 0 or +1")
        return PackedTernary(cls.quantize(t.astype(np.float32), scale=1.0, format=format).codes, scale,
                             t.shape[1], format)

    def to_format(self, format: str) -> PackedTernary:
        """The same matrix (weights and scale) packed in `format` ("t2" or "t1"); self when it is already."""
        fmt = check_format(format)
        if format == self.format:
            return self
        codes = aligned_empty((self.rows, _core.row_stride(self.cols, fmt)), np.uint8)
        _core.transcode(self.codes, self.cols, self.fmt, codes, fmt)
        return type(self)._trusted(codes, self.scale, self.rows, self.cols, format)

    # -- views ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def fmt(self) -> int:
        """The C core's tag of the format (bitttt._core.FMT_T2 or FMT_T1)."""
        return FORMATS[self.format]

    @property
    def stride(self) -> int:
        """Bytes per packed row."""
        return self.codes.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of codes plus the 4-byte scale."""
        return int(self.codes.nbytes) + 4

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / (self.rows * self.cols)

    def ternary(self) -> np.ndarray:
        """The int8 matrix w [rows, cols] in {-1, 0, +1}."""
        out = aligned_empty((self.rows, self.cols), np.float32)
        _core.unpack(self.codes, self.cols, 1.0, out, self.fmt)
        return out.astype(np.int8)

    def dequantize(self) -> np.ndarray:
        """float32 [rows, cols] = scale * ternary()."""
        out = np.empty((self.rows, self.cols), dtype=np.float32)
        _core.unpack(self.codes, self.cols, self.scale, out, self.fmt)
        return out

    def __repr__(self) -> str:
        return (f"PackedTernary(shape={self.shape}, format={self.format}, scale={self.scale:.6g}, "
                f"{self.nbytes} bytes, {self.bits_per_weight:.3f} bits/weight)")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PackedTernary):
            return NotImplemented
        return (self.shape == other.shape and self.format == other.format
                and np.float32(self.scale) == np.float32(other.scale) and np.array_equal(self.codes, other.codes))

    __hash__ = None  # mutable arrays inside

    def __setattr__(self, name: str, value) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"PackedTernary.{name} is read-only (the kernels trust rows and cols against the "
                                 "codes): build a new matrix with PackedTernary.quantize or from_ternary")
        object.__setattr__(self, name, value)
