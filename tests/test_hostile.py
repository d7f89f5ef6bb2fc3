"""Hostile files: every class of crafted header and metadata is refused with the file-format error
(bitttt.FormatError) naming the file and the field, in milliseconds, and nothing is opened,
allocated or built from what the file claims before it is checked."""
import base64
import json
import os
import time
import zlib

import numpy as np
import pytest
from hostile_files import join, make_files, readers, rewrite, split, tokenizer_bytes

import bitttt
from bitttt import BitLlamaConfig, FormatError
from bitttt.formats import CheckpointError, MemoryFileError, PackedFormatError, TokenFileError, load_checkpoint

ERRORS = {"checkpoint": CheckpointError, "model": CheckpointError, "memory": MemoryFileError,
          "packed": PackedFormatError, "model_t1": CheckpointError, "packed_t1": PackedFormatError}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return tokenizer_bytes(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def files(tok, tmp_path_factory):
    return make_files(tmp_path_factory.mktemp("files"), tok)


def _refused(kind, path, match=None):
    with pytest.raises(ERRORS[kind]) as e:
        readers()[kind](path)
    assert str(path) in str(e.value)
    if match:
        assert match in str(e.value), str(e.value)
    return str(e.value)


def test_errors_are_exported():
    assert issubclass(bitttt.CheckpointError, bitttt.FormatError)
    assert issubclass(bitttt.TokenFileError, bitttt.FormatError) and issubclass(FormatError, ValueError)
    assert bitttt.read_packed and bitttt.write_packed


def test_intact_files_load(files):
    for kind, p in files.items():
        readers()[kind](p)


@pytest.mark.parametrize("kind", list(ERRORS))
@pytest.mark.parametrize("header", [b"null", b"true", b"3", b'"s"', b"[]", b"[1,2]"])
def test_header_not_an_object(files, tmp_path, kind, header):
    _, data = split(files[kind])
    _refused(kind, join(tmp_path / "x.st", header, data), "not an object")


@pytest.mark.parametrize("kind", list(ERRORS))
@pytest.mark.parametrize("meta", [None, [], "x", 3, {"a": 1}])
def test_metadata_not_a_str_map(files, tmp_path, kind, meta):
    def fn(h, d):
        h["__metadata__"] = meta
    _refused(kind, rewrite(files[kind], tmp_path / "x.st", fn), "__metadata__")


def test_deep_nesting_is_refused_without_recursion(files, tmp_path):
    _, data = split(files["checkpoint"])
    t = time.perf_counter()
    _refused("checkpoint", join(tmp_path / "x.st", b"[" * 200_000 + b"]" * 200_000, data), "nested")
    deep = json.dumps({"a": 1})[:-1] + ',"b":' + "[" * 200_000 + "]" * 200_000 + "}"

    def fn(h, d):
        h["__metadata__"]["config"] = deep
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "y.st", fn), "config")
    assert time.perf_counter() - t < 5


@pytest.mark.parametrize("field,value,match", [
    ("dtype", "F8", "unknown dtype"), ("dtype", 3, "unknown dtype"),
    ("shape", [True, 2], "shape"), ("shape", [2.0, 3], "shape"), ("shape", [-1], "shape"),
    ("shape", [2**64], "shape"), ("shape", "12", "shape"), ("shape", [2**40, 2**40], "do not hold"),
    ("data_offsets", [0, 2**64], "data_offsets"), ("data_offsets", [5, 1], "data_offsets"),
    ("data_offsets", [0], "data_offsets"), ("data_offsets", [0.0, 4.0], "data_offsets"),
])
def test_bad_tensor_entries(files, tmp_path, field, value, match):
    def fn(h, d):
        name = next(k for k in h if k != "__metadata__")
        h[name][field] = value
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "x.st", fn), match)


def test_infinity_and_nan_in_a_header(files, tmp_path):
    h, data = split(files["checkpoint"])
    name = next(k for k in h if k != "__metadata__")
    raw = json.dumps(h).replace(json.dumps(h[name]["shape"]), "[Infinity]", 1).encode()
    _refused("checkpoint", join(tmp_path / "x.st", raw, data), "Infinity")


def test_shape_product_wrapping_int64(files, tmp_path):
    # 2**32 * 2**32 * 4 bytes wraps to 0 in int64: must not pass as an empty tensor
    def fn(h, d):
        name = next(k for k in h if k != "__metadata__")
        lo = h[name]["data_offsets"][0]
        h[name]["shape"] = [2**32, 2**32]
        h[name]["data_offsets"] = [lo, lo]
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "x.st", fn))


def test_overlapping_gapped_and_outside_offsets(files, tmp_path):
    h, _ = split(files["checkpoint"])
    names = sorted((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][0])
    a, b = names[0], names[1]

    def overlap(h, d):
        h[b]["data_offsets"] = [h[a]["data_offsets"][0], h[a]["data_offsets"][0] + (
            h[b]["data_offsets"][1] - h[b]["data_offsets"][0])]
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "o.st", overlap), "overlaps")
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "t.st", lambda h, d: d + b"\0" * 64),
             "trailing")
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "s.st", lambda h, d: d[:-4]), "truncated")


def test_relabelled_dtype_and_extra_tensor(files, tmp_path):
    def relabel(h, d):
        h["embed.weight"]["dtype"] = "I32"
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "r.st", relabel), "embed.weight is int32")

    def extra(h, d):
        end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
        h["evil"] = {"dtype": "U8", "shape": [4], "data_offsets": [end, end + 4]}
        crcs = json.loads(h["__metadata__"]["crc32"])
        crcs["evil"] = zlib.crc32(b"abcd")  # a consistent file: only the table check refuses it
        h["__metadata__"]["crc32"] = json.dumps(crcs)
        return d + b"abcd"
    for kind in ("checkpoint", "model", "memory", "packed"):
        _refused(kind, rewrite(files[kind], tmp_path / f"e{kind}.st", extra), "unexpected tensor")


def test_config_is_never_opened_as_a_path(files, tmp_path, monkeypatch):
    target = tmp_path / "evil.json"
    target.write_text(json.dumps({**BitLlamaConfig().to_dict(), "rms_norm_eps": 0.5}))
    opened = []
    real_open = open

    def spy(p, *a, **k):
        opened.append(os.fspath(p))
        return real_open(p, *a, **k)
    for value in ("/etc/passwd", "/dev/zero", str(target)):
        def fn(h, d, v=value):
            h["__metadata__"]["config"] = v
        bad = rewrite(files["checkpoint"], tmp_path / "c.st", fn)
        monkeypatch.setattr("builtins.open", spy)
        try:
            _refused("checkpoint", bad, "config")
        finally:
            monkeypatch.setattr("builtins.open", real_open)
        assert value not in opened


@pytest.mark.parametrize("kind", ["checkpoint", "model", "memory"])
@pytest.mark.parametrize("change", [{"num_layers": 10**7}, {"hidden_size": 2**16, "num_heads": 2},
                                    {"vocab_size": 2**24}, {"mini_batch_size": 2**20}, {"mini_batch_size": 4096},
                                    {"rms_norm_eps": 1e300}, {"num_layers": True}])
def test_config_claims_beyond_the_file_are_refused_fast(files, tmp_path, kind, change):
    def fn(h, d):
        c = json.loads(h["__metadata__"]["config"])
        c.update(change)
        h["__metadata__"]["config"] = json.dumps(c)
    if kind == "memory" and "vocab_size" in change:
        return  # the TTT state does not depend on the vocabulary (the model id check is the reader's)
    bad = rewrite(files[kind], tmp_path / "x.st", fn)
    t = time.perf_counter()
    _refused(kind, bad, "config")
    assert time.perf_counter() - t < 1.0


def test_a_flipped_header_byte_is_caught_by_meta_crc32(files, tmp_path):
    raw = files["checkpoint"].read_bytes()
    at = raw.index(b'rope_theta\\": 10000.0') + len(b'rope_theta\\": ')
    bad = tmp_path / "x.st"
    bad.write_bytes(raw[:at] + b"9" + raw[at + 1:])  # 10000 -> 90000, still valid JSON
    _refused("checkpoint", bad, "meta_crc32")


def test_tokenizer_damage_and_its_hash(files, tmp_path, tok):
    def flip(h, d):
        b = bytearray(base64.b64decode(h["__metadata__"]["tokenizer"]))
        b[len(b) // 2] ^= 1
        h["__metadata__"]["tokenizer"] = base64.b64encode(bytes(b)).decode()
    for kind in ("checkpoint", "model"):
        _refused(kind, rewrite(files[kind], tmp_path / "x.st", flip), "tokenizer_sha256")

    def junk(h, d):
        h["__metadata__"]["tokenizer"] = "@@not base64@@"
    _refused("checkpoint", rewrite(files["checkpoint"], tmp_path / "y.st", junk), "base64")


def test_old_files_without_meta_crc32_still_load_with_the_other_checks(files, tmp_path):
    for kind in ERRORS:
        if kind == "model_t1":  # packing t1 came after meta_crc32: no old file has it
            continue

        def strip(h, d):  # a file as written before meta_crc32 (and the later seq_len, packing, slept entries)
            del h["__metadata__"]["meta_crc32"]
            h["__metadata__"].pop("seq_len", None)
            h["__metadata__"].pop("packing", None)
            h["__metadata__"].pop("slept", None)
        old = rewrite(files[kind], tmp_path / f"{kind}.st", strip, fix_meta=False)
        readers()[kind](old)

        def rename(h, d):  # a damaged key name in an old file is not taken for an unknown entry
            m = h["__metadata__"]
            m["lonfig" if "config" in m else "bitttt.formaT"] = m.get("config", "x")
        _refused(kind, rewrite(old, tmp_path / f"{kind}2.st", rename, fix_meta=False))


def test_memory_counts_are_checked(files, tmp_path):
    for key, value in (("pos", "-1"), ("pos", "1e9"), ("n_tokens", "x"), ("pos", "99")):
        def fn(h, d, k=key, v=value):
            h["__metadata__"][k] = v
        _refused("memory", rewrite(files["memory"], tmp_path / "x.st", fn), key if value != "99" else "pos")


def test_not_a_regular_file(tmp_path):
    with pytest.raises(CheckpointError, match="regular file|directory"):
        load_checkpoint("/dev/zero")
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


def _manifest_folder(tmp_path, **change):
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    np.arange(100, dtype="<u2").tofile(d / "train.bin")
    m = {"format": "bitttt-tokens", "format_version": 1, "dtype": "uint16",
         "tokenizer": {"vocab_size": 300, "sha256": "0" * 64},
         "splits": {"train": {"file": "train.bin", "tokens": 100}}}
    for k, v in change.items():
        if k in ("file", "tokens"):
            m["splits"]["train"][k] = v
        else:
            m[k] = v
    (d / "manifest.json").write_text(json.dumps(m) if not isinstance(change.get("raw"), str) else change["raw"])
    return d


@pytest.mark.parametrize("change,match", [
    ({"dtype": "float16"}, "dtype"), ({"dtype": "int64"}, "dtype"), ({"dtype": ["uint16"]}, "dtype"),
    ({"tokens": 100.5}, "tokens"), ({"tokens": -1}, "tokens"), ({"tokens": 2**70}, "truncated"),
    ({"file": "../../etc/passwd"}, "file"), ({"file": "/etc/passwd"}, "file"),
    ({"raw": "[" * 100000}, "nested"), ({"raw": "null"}, "not a bitttt token manifest"),
])
def test_token_manifest_checks(tmp_path, change, match):
    from bitttt.data import TokenData

    d = _manifest_folder(tmp_path, **change)
    with pytest.raises(TokenFileError, match=match):
        TokenData(d, "train")


def test_token_manifest_intact(tmp_path):
    from bitttt.data import TokenData

    assert len(TokenData(_manifest_folder(tmp_path), "train")) == 100


def test_memory_of_a_deep_model_reads_without_its_model(tmp_path):
    """A memory file holds five tensors whatever the depth: the limits do not count layers there."""
    from bitttt.formats import read_memory, write_memory
    from bitttt.formats.memory import memory_shapes

    cfg = BitLlamaConfig(vocab_size=300, hidden_size=16, num_layers=12, num_heads=2, intermediate_size=16,
                         mini_batch_size=4)
    arrays = {n: np.zeros(s, np.float32) for n, s in memory_shapes(cfg).items()}
    write_memory(tmp_path / "deep.mem", arrays, model_id="x" * 64, config=cfg, pos=1, n_tokens=5)
    m = read_memory(tmp_path / "deep.mem")
    assert m.pos == 1 and m.arrays["W0"].shape == (12, 2, 8, 8)


def test_crc32_entry_nesting_bomb_is_refused(files, tmp_path):
    """Found by the t1 fuzz seed: a crc32 entry nested past json's recursion limit (meta_crc32
    recomputed) is a damaged file, not a RecursionError."""
    def bomb(h, d):
        h["__metadata__"]["crc32"] = "[" * 100_000

    for kind in ("model", "packed", "packed_t1"):
        _refused(kind, rewrite(files[kind], tmp_path / f"b{kind}.st", bomb))
