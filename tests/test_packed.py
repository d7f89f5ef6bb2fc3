"""PackedTernary: quantization rule, layout, dequantize, size, save/load and file damage."""
import os

import numpy as np
import pytest
import refimpl

import bitttt
from bitttt import PackedFormatError, PackedTernary
from bitttt.formats.packed import FORMAT as PACKED_FORMAT
from bitttt.formats.packed import packed_from_tensors, packed_tensors, read_packed, write_packed

SHAPES = [(1, 1), (1, 7), (1, 4096), (7, 1), (3, 255), (3, 256), (5, 257), (17, 300), (64, 1024), (33, 777)]


@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_absmean_rule(shape, rng):
    w = rng.standard_normal(shape).astype(np.float32) * 0.02
    p = PackedTernary.quantize(w)
    s = refimpl.absmean_scale(w)
    assert np.float32(p.scale) == pytest.approx(s, rel=1e-6)
    assert np.array_equal(p.ternary().astype(np.int64), refimpl.ternarize(w, p.scale))
    assert np.array_equal(p.dequantize(), np.float32(p.scale) * refimpl.ternarize(w, p.scale).astype(np.float32))
    assert p.shape == shape and p.stride == -(-shape[1] // 256) * 64


def test_quantize_float64_and_float16_inputs(rng):
    w = rng.standard_normal((9, 300))
    assert PackedTernary.quantize(w) == PackedTernary.quantize(w.astype(np.float32))
    assert PackedTernary.quantize(w.astype(np.float16)) == PackedTernary.quantize(
        w.astype(np.float16).astype(np.float32))


def test_round_half_to_even_and_clip():
    # with s = 1 exactly: 0.5 -> 0, 1.5 -> 2 -> clip 1, -0.5 -> 0, -2.7 -> -1
    w = np.array([[0.5, 1.5, -0.5, -2.7, 0.49, -0.51, 1.0, 0.0]], dtype=np.float32)
    p = PackedTernary.quantize(w, scale=1.0)
    assert p.ternary().tolist() == [[0, 1, 0, -1, 0, -1, 1, 0]]


def test_all_zero_matrix_has_tiny_scale_and_zero_codes():
    p = PackedTernary.quantize(np.zeros((4, 100), np.float32))
    assert p.scale == pytest.approx(1e-5)
    assert not p.ternary().any()


def test_all_plus_minus_one():
    t = np.where(np.arange(5 * 300).reshape(5, 300) % 3 == 0, 1, -1)
    p = PackedTernary.from_ternary(t, scale=0.5)
    assert np.array_equal(p.ternary(), t)
    assert np.array_equal(p.dequantize(), 0.5 * t.astype(np.float32))


def test_layout_documented_in_header():
    # weight k of a row lives in byte (k // 256) * 64 + k % 64, bits 2 * ((k % 256) // 64)
    t = np.zeros((1, 512), np.int64)
    t[0, 0], t[0, 64], t[0, 130], t[0, 255], t[0, 256] = 1, -1, 1, -1, 1
    p = PackedTernary.from_ternary(t)
    c = p.codes[0]
    # byte 0: k=0 (+1 -> code 2, bits 0-1), k=64 (-1 -> code 0, bits 2-3), k=128, k=192 (0 -> code 1)
    assert c[0] == 0b01_01_00_10
    assert (c[2] >> 4) & 3 == 2  # k=130: byte 2, plane 2
    assert (c[63] >> 6) & 3 == 0  # k=255: byte 63, plane 3
    assert c[64] & 3 == 2  # k=256: second block, byte 0, plane 0
    assert c[1] == 0x55  # untouched bytes hold four zero weights


def test_size_at_most_2_1_bits_at_4096(rng):
    p = PackedTernary.quantize(rng.standard_normal((4096, 4096), dtype=np.float32))
    assert p.nbytes == 4096 * 4096 // 4 + 4
    assert p.bits_per_weight <= 2.1
    assert p.codes.ctypes.data % 64 == 0


def test_save_load_round_trip(tmp_path, rng):
    for shape in [(1, 1), (5, 257), (64, 1024)]:
        p = PackedTernary.quantize(rng.standard_normal(shape).astype(np.float32))
        f = tmp_path / f"w{shape[0]}x{shape[1]}.safetensors"
        write_packed(f, p)
        q = read_packed(f)
        assert q == p and q.scale == p.scale and np.array_equal(q.codes, p.codes)
        assert q.codes.ctypes.data % 64 == 0
        x = rng.standard_normal((3, shape[1])).astype(np.float32)
        assert np.array_equal(bitttt.bitlinear(p, x), bitttt.bitlinear(q, x))
    assert sorted(os.listdir(tmp_path)) == sorted(
        f"w{a}x{b}.safetensors" for a, b in [(1, 1), (5, 257), (64, 1024)])  # no temp files left


def test_to_from_tensors_with_prefix(rng):
    p = PackedTernary.quantize(rng.standard_normal((6, 70)).astype(np.float32))
    tensors = packed_tensors(p, "layers.0.mlp.up_proj.weight")
    assert set(tensors) == {f"layers.0.mlp.up_proj.weight.{k}" for k in ("codes", "scale", "shape")}
    assert tensors["layers.0.mlp.up_proj.weight.codes"].dtype == np.uint8
    assert tensors["layers.0.mlp.up_proj.weight.scale"].dtype == np.float32
    assert packed_from_tensors(tensors, "layers.0.mlp.up_proj.weight") == p


def _saved(tmp_path, rng, shape=(8, 300)):
    p = PackedTernary.quantize(rng.standard_normal(shape).astype(np.float32))
    f = tmp_path / "w.safetensors"
    write_packed(f, p)
    return p, f


def test_truncated_file_raises_and_names_file(tmp_path, rng):
    _, f = _saved(tmp_path, rng)
    data = f.read_bytes()
    for cut in (0, 5, 8, 40, len(data) // 2, len(data) - 1):
        f.write_bytes(data[:cut])
        with pytest.raises(PackedFormatError, match="w.safetensors"):
            read_packed(f)


def test_flipped_code_byte_is_detected(tmp_path, rng):
    p, f = _saved(tmp_path, rng)
    data = bytearray(f.read_bytes())
    # flip a code 0b00 <-> 0b10 inside the last row: stays a valid code, only the checksum sees it
    pos = len(data) - 20
    data[pos] ^= 0b10
    f.write_bytes(bytes(data))
    with pytest.raises(PackedFormatError, match="checksum|corrupted"):
        read_packed(f)


def test_invalid_codes_are_rejected(rng):
    p = PackedTernary.quantize(rng.standard_normal((4, 300)).astype(np.float32))
    tensors = packed_tensors(p)
    bad = tensors["codes"].copy()
    bad[1, 3] = 0xFF  # four 0b11 codes
    tensors["codes"] = bad
    with pytest.raises(PackedFormatError, match="corrupted"):
        packed_from_tensors(tensors)
    pad = p.codes.copy()
    pad[0, -1] = 0x00  # padding weights (k >= 300) must be zero (code 0b01)
    with pytest.raises(ValueError, match="padding"):
        PackedTernary(pad, p.scale, p.cols)


def test_wrong_tensors_and_format(tmp_path, rng):
    from safetensors.numpy import save_file

    p = PackedTernary.quantize(rng.standard_normal((4, 300)).astype(np.float32))
    tensors, meta = packed_tensors(p), {"bitttt.format": PACKED_FORMAT}
    f = tmp_path / "x.safetensors"
    save_file({"codes": tensors["codes"]}, str(f), metadata=meta)
    with pytest.raises(PackedFormatError, match="missing"):
        read_packed(f)
    save_file(tensors, str(f))  # no metadata: not our format
    with pytest.raises(PackedFormatError, match="not a bitttt"):
        read_packed(f)
    wrong = dict(tensors, shape=np.array([4, 600], np.int64))
    save_file(wrong, str(f), metadata=meta)
    with pytest.raises(PackedFormatError, match="does not match"):
        read_packed(f)
    wrong = dict(tensors, scale=np.array([-1.0], np.float32))
    with pytest.raises(PackedFormatError, match="scale"):
        packed_from_tensors(wrong)
    f.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(PackedFormatError, match="x.safetensors"):
        read_packed(f)
    with pytest.raises(FileNotFoundError):
        read_packed(tmp_path / "missing.safetensors")


def test_failed_save_leaves_previous_file(tmp_path, rng, monkeypatch):
    p, f = _saved(tmp_path, rng)
    before = f.read_bytes()
    q = PackedTernary.quantize(rng.standard_normal((8, 300)).astype(np.float32))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        write_packed(f, q)
    assert f.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_raise(bad, rng):
    w = rng.standard_normal((4, 300)).astype(np.float32)
    w[2, 123] = bad
    with pytest.raises(ValueError, match="NaN or infinity"):
        PackedTernary.quantize(w)
    with pytest.raises(ValueError, match="NaN or infinity"):
        PackedTernary.quantize(w, scale=0.5)


def test_bad_weight_inputs():
    with pytest.raises(TypeError, match="floating-point"):
        PackedTernary.quantize(np.ones((3, 3), dtype=np.int32))
    with pytest.raises(TypeError, match="ndarray"):
        PackedTernary.quantize([[1.0, 2.0]])
    with pytest.raises(ValueError, match="2-D"):
        PackedTernary.quantize(np.ones(5, np.float32))
    for shape in [(0, 5), (5, 0), (0, 0)]:
        with pytest.raises(ValueError, match="empty"):
            PackedTernary.quantize(np.ones(shape, np.float32))
    with pytest.raises(ValueError, match="scale"):
        PackedTernary.quantize(np.ones((2, 2), np.float32), scale=0.0)
    with pytest.raises(ValueError, match="-1, 0 or \\+1"):
        PackedTernary.from_ternary(np.array([[2, 0]]))
    with pytest.raises(ValueError, match="bytes per row"):
        PackedTernary(np.zeros((2, 32), np.uint8), 1.0, 300)


def test_noncontiguous_weights_are_accepted_as_values(rng):
    # quantize() reads values (it copies to float32 anyway): a transposed view packs its values
    w = rng.standard_normal((300, 8)).astype(np.float32)
    assert PackedTernary.quantize(w.T) == PackedTernary.quantize(np.ascontiguousarray(w.T))
