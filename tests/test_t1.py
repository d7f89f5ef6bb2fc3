"""The 1.6-bit packed format t1 (five ternary weights per byte, src_c/bt_ternary.h): its layout,
its validation, and every kernel equal to the 2-bit format t2 bit for bit on every ISA path."""
import numpy as np
import pytest
import refimpl

import bitttt
from bitttt import PackedTernary, _core

# K across the 320-weight t1 blocks and their narrow tails (16, 32, 48 bytes), the 256-weight t2
# blocks, the 1024-block flush of the AVX-512 kernel, and N across the 4-row tiles
SHAPES = [(1, 1), (1, 79), (3, 80), (5, 81), (4, 160), (7, 240), (6, 241), (9, 255), (8, 256), (5, 300),
          (2, 319), (13, 320), (11, 321), (17, 641), (31, 777), (24, 1024), (5, 2048), (3, 5632),
          (2, 1024 * 320 + 17)]
TOKENS = [1, 2, 3, 4, 5, 13, 17, 70]


def pair(rng, n, k):
    t2 = PackedTernary.quantize(rng.standard_normal((n, k)).astype(np.float32))
    return t2, t2.to_format("t1")


def encode(c):
    """The reference t1 byte of five codes (bt_ternary.h): ceil(256 v / 243)."""
    v = 81 * c[0] + 27 * c[1] + 9 * c[2] + 3 * c[3] + c[4]
    return (256 * v + 242) // 243


def t1_reference(t: np.ndarray) -> np.ndarray:
    """t1 codes of a ternary matrix t [N, K] straight from the layout's description."""
    n, k = t.shape
    nblk = -(-k // 320)
    tb = 16 * -(-(k - 320 * (nblk - 1)) // 80)
    stride = 64 * (nblk - 1) + tb
    out = np.zeros((n, stride), np.uint8)
    c = np.ones((n, 320 * nblk), np.int64)
    c[:, :k] = t + 1
    for b in range(nblk):
        wb = 64 if b < nblk - 1 else tb
        for j in range(wb):
            planes = [c[:, 320 * b + wb * i + j] for i in range(5)]
            out[:, 64 * b + j] = encode(planes)
    return out


def test_byte_code_decodes_every_value():
    valid = set()
    for v in range(243):
        digits = [v // 3 ** (4 - i) % 3 for i in range(5)]
        q = encode(digits)
        p, got = q, []
        for _ in range(5):
            p *= 3
            got.append(p >> 8)
            p &= 255
        assert got == digits
        valid.add(q)
    assert len(valid) == 243 and encode([1] * 5) == 0x80


@pytest.mark.parametrize("n,k", SHAPES[:14])
def test_layout_matches_the_description(n, k, rng):
    t = rng.integers(-1, 2, (n, k)).astype(np.int8)
    p = PackedTernary.from_ternary(t, format="t1")
    assert p.stride == _core.row_stride(k, _core.FMT_T1) == -(-k // 80) * 16
    assert np.array_equal(p.codes, t1_reference(t))
    assert np.array_equal(p.ternary(), t)
    assert p.to_format("t2") == PackedTernary.from_ternary(t)


@pytest.mark.parametrize("n,k", SHAPES)
def test_round_trip_and_quantize_agree(n, k, rng):
    w = rng.standard_normal((n, k)).astype(np.float32)
    t2 = PackedTernary.quantize(w)
    t1 = PackedTernary.quantize(w, format="t1")
    assert t1.format == "t1" and t1.scale == t2.scale
    assert t1 == t2.to_format("t1") and t1.to_format("t2") == t2
    assert np.array_equal(t1.ternary(), t2.ternary())
    assert np.array_equal(t1.dequantize(), t2.dequantize())
    assert t1.nbytes < t2.nbytes or k <= 320


@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_products_equal_t2(kernel, n, k, rng):
    t2, t1 = pair(rng, n, k)
    t = t2.ternary()
    for m in TOKENS if k < 100000 else (1, 3):
        x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10)
        xq, a = bitttt.quantize_activations(x)
        ref = refimpl.dot_i8(t, xq)
        assert np.array_equal(bitttt.dot_i8(t1, xq), ref)
        assert np.array_equal(bitttt.dot_i8(t2, xq), ref)
        y2 = bitttt.gemm_i8(t2, xq, a)
        assert np.array_equal(bitttt.gemm_i8(t1, xq, a), y2)
        assert np.array_equal(bitttt.bitlinear(t1, x), bitttt.bitlinear(t2, x))
        if m == 1:
            xi, ai = bitttt.quantize_activations(x[0])
            assert np.array_equal(bitttt.gemm_i8(t1, xi, ai), y2[0])


@pytest.mark.parametrize("n,k", [(5, 300), (31, 777), (64, 1024)])
def test_float_paths_equal_t2(kernel, n, k, rng):
    t2, t1 = pair(rng, n, k)
    for m in (1, 9):
        x = rng.standard_normal((m, k)).astype(np.float32)
        dy = rng.standard_normal((m, n)).astype(np.float32)
        assert np.array_equal(bitttt.matmul(t1, x), bitttt.matmul(t2, x))
        assert np.array_equal(bitttt.matmul_t(t1, dy), bitttt.matmul_t(t2, dy))


def test_extreme_values_do_not_overflow(kernel):
    # every product at its extreme over rows long enough to need the AVX-512 kernel's flushes
    k = 1024 * 320 * 2 + 300
    for sign in (1, -1):
        p = PackedTernary.from_ternary(np.full((5, k), sign), format="t1")
        for v in (-128, 127):
            xq = np.full((1, k), v, dtype=np.int8)
            assert np.array_equal(bitttt.dot_i8(p, xq), np.full((1, 5), v * k * sign))


def test_threads_do_not_change_results(rng):
    t2, t1 = pair(rng, 301, 2000)
    x = rng.standard_normal((20, 2000)).astype(np.float32)
    before = bitttt.get_num_threads()
    try:
        outs = []
        for nt in (1, 2):
            bitttt.set_num_threads(nt)
            outs += [bitttt.bitlinear(t1, x), bitttt.bitlinear(t1, x[:1])]
        assert np.array_equal(outs[0], outs[2]) and np.array_equal(outs[1], outs[3])
        assert np.array_equal(outs[0], bitttt.bitlinear(t2, x))
    finally:
        bitttt.set_num_threads(before)


def test_invalid_bytes_and_padding_are_rejected(rng):
    p = PackedTernary.from_ternary(rng.integers(-1, 2, (3, 300)), format="t1")  # one block, 20 padding weights
    for bad in (1, 20, 237):  # 3 of the 13 bytes no codes encode to
        codes = p.codes.copy()
        codes[1, 5] = bad
        with pytest.raises(ValueError, match="corrupted"):
            PackedTernary(codes, p.scale, p.cols, "t1")
    codes = p.codes.copy()
    codes[2, -1] = encode([1, 1, 1, 1, 2])  # plane 4 of byte 63 is weight 319 >= 300: padding must be 0
    with pytest.raises(ValueError, match="corrupted"):
        PackedTernary(codes, p.scale, p.cols, "t1")
    with pytest.raises(ValueError, match="bytes per row"):
        PackedTernary(p.codes, p.scale, p.cols)  # t1 codes taken as t2: the stride says no
    with pytest.raises(ValueError, match="format"):
        PackedTernary.quantize(np.ones((2, 2), np.float32), format="t3")


# -- model files: a t1 and a t2 export decode the same tokens and logits ------------------------
def _model_files(tmp_path, hidden=96, inter=400, seed=3):
    from hostile_files import tokenizer_bytes

    from bitttt import BitLlama, BitLlamaConfig
    from bitttt.formats import write_model_file

    # rows of 96 and 400 weights: t1 blocks with narrow tails and a full block; head_dim 48
    cfg = BitLlamaConfig(vocab_size=300, hidden_size=hidden, num_layers=2, num_heads=2, intermediate_size=inter,
                         mini_batch_size=4)
    m = BitLlama(cfg)
    m.init_weights(seed)
    tok = tokenizer_bytes(tmp_path).to_bytes()
    paths = {}
    for fmt in ("t2", "t1"):
        paths[fmt] = tmp_path / f"m_{fmt}.safetensors"
        meta = write_model_file(paths[fmt], cfg, m.params, tokenizer=tok, model_id="x" * 64, packing=fmt)
        assert meta["packing"] == fmt
    return paths


def test_model_file_round_trip_keeps_the_format(tmp_path):
    from bitttt.formats import read_model_file

    paths = _model_files(tmp_path)
    mf2, mf1 = read_model_file(paths["t2"]), read_model_file(paths["t1"])
    assert mf1.metadata["packing"] == "t1" and mf2.metadata["packing"] == "t2"
    assert set(mf1.packed) == set(mf2.packed)
    for name, p in mf1.packed.items():
        assert p.format == "t1" and p == mf2.packed[name].to_format("t1")
    assert paths["t1"].stat().st_size < paths["t2"].stat().st_size


def test_t1_and_t2_model_files_decode_the_same_bits(tmp_path):
    from bitttt.session import InferenceModel

    paths = _model_files(tmp_path)
    ims = {f: InferenceModel.from_model_file(str(p)) for f, p in paths.items()}
    floor = _core.decode_min_parallel_bytes(0)  # the fused decoder's threaded path too
    old = bitttt.get_num_threads()
    try:
        for nt in (1, 2):
            bitttt.set_num_threads(nt)
            out = {}
            for f, im in ims.items():
                st = im.new_state()
                prompt = im.feed(st, np.arange(11) % 300, all_logits=True)  # prefill: t2 copies of t1 rows
                logits, toks, steps = prompt[-1], [], []
                for _ in range(12):  # greedy decode: the fused decoder reads the t1 bytes
                    toks.append(int(np.argmax(logits)))
                    logits = im.feed(st, [toks[-1]])
                    steps.append(logits)
                out[f] = (prompt, toks, np.stack(steps), st)
            assert np.array_equal(out["t1"][0], out["t2"][0])
            assert out["t1"][1] == out["t2"][1]
            assert np.array_equal(out["t1"][2], out["t2"][2])
            for name in ("W0", "b0", "Kb", "Gb", "Sb"):
                assert np.array_equal(getattr(out["t1"][3], name), getattr(out["t2"][3], name))
        a, b = ims["t1"].score(list(range(40)), chunk=16), ims["t2"].score(list(range(40)), chunk=16)
        assert a == b
    finally:
        bitttt.set_num_threads(old)
        _core.decode_min_parallel_bytes(floor)


def test_model_file_with_mixed_or_wrong_packing_is_refused(tmp_path):
    from hostile_files import rewrite

    from bitttt.formats import CheckpointError, PackedFormatError, read_model_file

    paths = _model_files(tmp_path)

    def claim_t2(h, data):
        h["__metadata__"]["packing"] = "t2"

    def claim_t3(h, data):
        h["__metadata__"]["packing"] = "t3"

    def rename_one(h, data):
        name = next(k for k in h if k.endswith(".codes_t1"))
        h[name[: -len("_t1")]] = h.pop(name)

    for fn, match in ((claim_t2, "missing tensor"), (claim_t3, "packing"), (rename_one, None)):
        bad = rewrite(paths["t1"], tmp_path / "bad.st", fn)
        with pytest.raises((CheckpointError, PackedFormatError), match=match):
            read_model_file(bad)


def test_export_format_t1(tmp_path):
    from bitttt.export import build_parser

    ap = build_parser()
    assert ap.parse_args(["x"]).packing == "t2"
    assert ap.parse_args(["x", "--format", "t1"]).packing == "t1"
    with pytest.raises(SystemExit):
        ap.parse_args(["x", "--format", "t3"])


def test_packed_file_round_trip_t1(tmp_path, rng):
    from bitttt import read_packed, write_packed

    p = PackedTernary.quantize(rng.standard_normal((7, 650)).astype(np.float32), format="t1")
    write_packed(tmp_path / "w.st", p)
    q = read_packed(tmp_path / "w.st")
    assert q.format == "t1" and q == p
