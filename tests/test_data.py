"""Data preparation (bitttt.data) and the memory-mapped loader (bitttt.data.loader)."""
from __future__ import annotations

import gzip
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitttt.data import Batches, DataError, TokenData, prepare, readers, token_dtype, writer
from bitttt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SYLLABLES = ["ka", "to", "ri", "men", "sa", "lo", "pe", "tur", "vin", "ax", "el", "qua", "do", "ne", "bri"]


def make_docs(n: int, seed: int = 0) -> list[str]:
    r = random.Random(seed)
    words = ["".join(r.choice(SYLLABLES) for _ in range(r.randint(1, 3))) for _ in range(200)]
    return ["\n".join(" ".join(r.choice(words) for _ in range(r.randint(2, 12))) + "."
                      for _ in range(r.randint(1, 4))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> str:
    tok = Tokenizer.train_from_iterator(make_docs(500, seed=99), 320, "bpe")
    path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
    tok.save(path)
    return str(path)


@pytest.fixture(scope="module")
def tok(tok_path) -> Tokenizer:
    return Tokenizer.load(tok_path)


def write_separated(path: Path, docs: list[str], newline: str = "\n") -> Path:
    path.write_text("".join(f"{d}{newline}<|endoftext|>{newline}" for d in docs), encoding="utf-8", newline="")
    return path


def read(out: Path, name: str, dtype=np.uint16) -> np.ndarray:
    return np.fromfile(out / name, dtype=dtype)


def expected_tokens(tok: Tokenizer, docs: list[str]) -> list[int]:
    out: list[int] = []
    for d in docs:
        out += tok.encode(d) + [tok.eos_id]
    return out


def run(inputs, out, tok_path, **kw):
    kw.setdefault("progress", False)
    return prepare([str(p) for p in inputs], str(out), tokenizer=tok_path, **kw)


# ------------------------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_txt_with_separators(tmp_path, tok_path, tok, newline):
    docs = make_docs(20) + ["  leading spaces and trailing newline\n"]
    src = write_separated(tmp_path / "stories.txt", docs, newline)
    m = run([src], tmp_path / "out", tok_path, val_fraction=0.0)
    assert read(tmp_path / "out", "train.bin").tolist() == expected_tokens(tok, docs)
    assert read(tmp_path / "out", "val.bin").size == 0
    assert m["splits"]["train"]["documents"] == 21 and m["documents"] == 21
    assert m["splits"]["train"]["bytes"] == sum(len(d.encode()) for d in docs)
    assert m["dtype"] == "uint16" and not m["has_mask"]
    assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json", "tokenizer.model", "train.bin", "val.bin"]


def test_streaming_in_tiny_blocks_gives_the_same_tokens(tmp_path, tok_path, tok, monkeypatch):
    # separators, multi-byte characters and long documents straddle block and segment boundaries
    docs = [d.replace("ka", "kä😀") for d in make_docs(30, seed=4)]
    docs[3] = " ".join(docs[3:12])  # one longer document with several lines
    src = write_separated(tmp_path / "a.txt", docs)
    reference = run([src], tmp_path / "ref", tok_path, val_fraction=0.0)
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 7)
    monkeypatch.setattr(readers, "_SEGMENT_CHARS", 40)
    monkeypatch.setattr(writer, "_BATCH_CHARS", 100)
    streamed = run([src], tmp_path / "small", tok_path, val_fraction=0.0)
    assert read(tmp_path / "small", "train.bin").tolist() == expected_tokens(tok, docs)
    assert streamed["splits"] == reference["splits"]


def test_whole_file_is_one_document_and_split_at_the_tail(tmp_path, tok_path, tok):
    text = "\n\n".join(make_docs(40, seed=2)) + "\n"
    src = tmp_path / "book.md"
    src.write_text(text, encoding="utf-8")
    m = run([src], tmp_path / "out", tok_path, val_fraction=0.1)
    everything = tok.encode(text) + [tok.eos_id]
    k = math.ceil(0.1 * len(everything))
    assert read(tmp_path / "out", "train.bin").tolist() == everything[:-k]
    assert read(tmp_path / "out", "val.bin").tolist() == everything[-k:]
    assert m["single_document_val_tokens"] == k
    assert m["splits"]["train"]["bytes"] + m["splits"]["val"]["bytes"] == len(text.encode())
    assert m["splits"]["val"]["bytes"] == len(tok.decode(everything[-k:-1]).encode())


def test_jsonl_and_gzip_give_the_same_tokens(tmp_path, tok_path, tok):
    docs = make_docs(30, seed=5)
    lines = [json.dumps({"body": d, "id": i}) for i, d in enumerate(docs)]
    plain = tmp_path / "docs.jsonl"
    plain.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]), encoding="utf-8")  # a blank line
    packed = tmp_path / "docs.jsonl.gz"
    with gzip.open(packed, "wb") as f:
        f.write(plain.read_bytes())
    a = run([plain], tmp_path / "a", tok_path, text_field="body", seed=3)
    b = run([packed], tmp_path / "b", tok_path, text_field="body", seed=3)
    for name in ("train.bin", "val.bin"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert a["splits"] == b["splits"]
    both = read(tmp_path / "a", "train.bin").tolist() + read(tmp_path / "a", "val.bin").tolist()
    assert sorted(both) == sorted(expected_tokens(tok, docs))
    assert b["sources"][0]["path"].endswith("docs.jsonl.gz")
    assert b["sources"][0]["size"] == packed.stat().st_size


def test_txt_gz(tmp_path, tok_path, tok):
    docs = make_docs(5, seed=6)
    src = tmp_path / "s.txt.gz"
    with gzip.open(src, "wt", encoding="utf-8") as f:
        f.write("".join(f"{d}\n<|endoftext|>\n" for d in docs))
    run([src], tmp_path / "out", tok_path, val_fraction=0.0)
    assert read(tmp_path / "out", "train.bin").tolist() == expected_tokens(tok, docs)


def test_instruction_masks(tmp_path, tok_path, tok):
    records = [
        {"text": "plain ka to."},
        {"prompt": "ka ri?", "response": "to sa."},
        {"system": "be brief", "prompt": "lo", "response": "pe\nne"},
    ]
    src = tmp_path / "chat.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    m = run([src], tmp_path / "out", tok_path, val_fraction=0.0)
    s = tok.special_ids
    eos, user, assistant, system = s["<|endoftext|>"], s["<|user|>"], s["<|assistant|>"], s["<|system|>"]
    ids: list[int] = []
    mask: list[int] = []

    def add(tokens, value):
        ids.extend(tokens)
        mask.extend([value] * len(tokens))

    add(tok.encode("plain ka to.") + [eos], 1)
    add([user] + tok.encode("ka ri?") + [assistant], 0)
    add(tok.encode("to sa.") + [eos], 1)
    add([system] + tok.encode("be brief") + [user] + tok.encode("lo") + [assistant], 0)
    add(tok.encode("pe\nne") + [eos], 1)
    assert read(tmp_path / "out", "train.bin").tolist() == ids
    assert read(tmp_path / "out", "train.mask", np.uint8).tolist() == mask
    assert read(tmp_path / "out", "val.mask", np.uint8).size == 0
    assert m["has_mask"] and m["splits"]["train"]["mask_file"] == "train.mask"
    # the loader hands out the mask of the targets
    d = TokenData(tmp_path / "out")
    x, y, mm = d.iter_eval(1, len(ids) - 1).__next__()
    assert y[0].tolist() == ids[1:] and mm[0].tolist() == mask[1:] and mm.dtype == np.float32


def test_masks_backfilled_when_instructions_come_later(tmp_path, tok_path, tok):
    docs = make_docs(8, seed=7)
    src = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"text": d}) for d in docs] + [json.dumps({"prompt": "ka", "response": "to"})]
    src.write_text("\n".join(lines), encoding="utf-8")  # no final newline
    run([src], tmp_path / "out", tok_path, val_fraction=0.0)
    mask = read(tmp_path / "out", "train.mask", np.uint8)
    n_plain = len(expected_tokens(tok, docs))
    assert mask.size == read(tmp_path / "out", "train.bin").size
    assert mask[:n_plain].all() and mask[n_plain:].tolist() == [0, 0, 0, 1, 1]


def test_split_is_deterministic_and_follows_the_rule(tmp_path, tok_path, tok):
    docs = make_docs(200, seed=8)
    src = write_separated(tmp_path / "c.txt", docs)
    a = run([src], tmp_path / "a", tok_path, val_fraction=0.2, seed=7)
    run([src], tmp_path / "b", tok_path, val_fraction=0.2, seed=7)
    for name in ("train.bin", "val.bin", "tokenizer.model"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    in_val = [i for i in range(len(docs)) if writer._is_val(i, 7, 0.2)]
    assert 0 not in in_val and 20 < len(in_val) < 60
    assert read(tmp_path / "a", "val.bin").tolist() == expected_tokens(tok, [docs[i] for i in in_val])
    assert a["splits"]["val"]["documents"] == len(in_val)
    run([src], tmp_path / "c", tok_path, val_fraction=0.2, seed=8)
    assert (tmp_path / "a" / "val.bin").read_bytes() != (tmp_path / "c" / "val.bin").read_bytes()


def test_at_least_one_validation_document(tmp_path, tok_path, tok):
    docs = make_docs(5, seed=9)
    src = write_separated(tmp_path / "few.txt", docs)
    m = run([src], tmp_path / "out", tok_path, val_fraction=1e-12)
    assert read(tmp_path / "out", "val.bin").tolist() == expected_tokens(tok, docs[-1:])
    assert read(tmp_path / "out", "train.bin").tolist() == expected_tokens(tok, docs[:-1])
    assert (m["splits"]["train"]["documents"], m["splits"]["val"]["documents"]) == (4, 1)
    assert m["splits"]["val"]["bytes"] == len(docs[-1].encode())


def test_token_dtype():
    assert token_dtype(4096) == np.dtype("<u2")
    assert token_dtype(65536) == np.dtype("<u2")
    assert token_dtype(65537) == np.dtype("<u4")
    with pytest.raises(ValueError):
        token_dtype(0)


def test_trains_a_tokenizer_when_none_is_given(tmp_path):
    docs = make_docs(300, seed=10)
    src = write_separated(tmp_path / "t.txt", docs)
    m = prepare([str(src)], str(tmp_path / "out"), vocab_size=300, model_type="bpe", progress=False)
    tok = Tokenizer.load(tmp_path / "out" / "tokenizer.model")
    assert m["tokenizer"]["sha256"] == tok.sha256 and m["tokenizer"]["vocab_size"] == 300
    assert m["tokenizer"]["model_type"] == "bpe" and m["tokenizer"]["eos_id"] == 2
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == m
    assert m["format_version"] == 1 and m["bitttt_version"] and m["created"]
    assert m["sources"][0]["sha256"] == __import__("hashlib").sha256(src.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="too large for this corpus"):
        prepare([str(src)], str(tmp_path / "big"), vocab_size=60_000, progress=False)
    assert not (tmp_path / "big").exists()


# ------------------------------------------------------------------------------------------- errors
def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_non_utf8_strict_refuses_and_writes_nothing(tmp_path, tok_path):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"hello \xff world")
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte offset 6 .*--errors replace"):
        run([src], tmp_path / "out", tok_path)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    with pytest.raises(DataError, match="byte offset 6"):  # also while training a tokenizer
        prepare([str(src)], str(tmp_path / "out"), vocab_size=300, progress=False)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_non_utf8_offset_across_blocks(tmp_path, tok_path, monkeypatch):
    monkeypatch.setattr(readers, "_BLOCK_BYTES", 4)
    src = tmp_path / "bad.txt.gz"
    with gzip.open(src, "wb") as f:
        f.write("ab\u00e9cdefgh".encode() + b"\xc3(xyz")
    with pytest.raises(DataError, match="byte offset 10 of the decompressed data"):
        run([src], tmp_path / "out", tok_path)


def test_non_utf8_replace_warns(tmp_path, tok_path, tok):
    src = tmp_path / "bad.txt"
    src.write_bytes(b"ka \xff to \xfe\xfe ri \xef\xbf\xbd")
    with pytest.warns(UserWarning, match=r"bad.txt: replaced 3 invalid UTF-8"):
        m = run([src], tmp_path / "out", tok_path, errors="replace", val_fraction=0.0)
    assert read(tmp_path / "out", "train.bin").tolist() == expected_tokens(tok, ["ka \ufffd to \ufffd\ufffd ri \ufffd"])
    assert m["replaced_invalid_utf8"] == 3


def test_existing_output_folder(tmp_path, tok_path):
    src = write_separated(tmp_path / "a.txt", make_docs(4))
    out = tmp_path / "out"
    out.mkdir()
    run([src], out, tok_path)  # an empty folder is fine
    before = (out / "train.bin").read_bytes()
    with pytest.raises(DataError, match="already exists and is not empty.*--force"):
        run([src], out, tok_path)
    src2 = write_separated(tmp_path / "b.txt", make_docs(6, seed=1))
    run([src2], out, tok_path, force=True)
    assert (out / "train.bin").read_bytes() != before and leftovers(tmp_path) == []
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="only replaces a folder made by prepare"):
        run([src], other, tok_path, force=True)
    assert (other / "notes.txt").read_text() == "keep me"
    with pytest.raises(DataError, match="inside the output folder"):
        run([src], tmp_path, tok_path, force=True)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("x.csv", "a,b", "unknown file type"),
        ("blank.txt", "  \n\n <|endoftext|>\n \n", "corpus is empty"),
        ("e.jsonl", '{"text": "ok"}\n{"text": "ok"\n', r"e.jsonl:2: invalid JSON"),
        ("f.jsonl", '{"text": "ok"}\n\n{"body": "x"}\n', r"f.jsonl:3: no 'text' field"),
        ("g.jsonl", '[1, 2]\n', r"g.jsonl:1: expected a JSON object"),
        ("h.jsonl", '{"prompt": "a", "response": 3}\n', r"h.jsonl:1: field 'response' must be a string"),
        ("bad.jsonl.gz", "not gzip", "cannot decompress"),
    ],
)
def test_input_errors(tmp_path, tok_path, name, content, message):
    src = tmp_path / name
    src.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        run([src], tmp_path / "out", tok_path)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_missing_input_and_bad_options(tmp_path, tok_path):
    with pytest.raises(DataError, match="input file not found"):
        run([tmp_path / "nope.txt"], tmp_path / "out", tok_path)
    src = write_separated(tmp_path / "a.txt", make_docs(3))
    with pytest.raises(DataError, match="val_fraction"):
        run([src], tmp_path / "out", tok_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="errors"):
        run([src], tmp_path / "out", tok_path, errors="ignore")
    with pytest.raises(ValueError, match="tokenizer file not found"):
        run([src], tmp_path / "out", str(tmp_path / "none.model"))


def test_cli(tmp_path, tok_path):
    src = write_separated(tmp_path / "a.txt", make_docs(10))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "bitttt.data", "prepare"]
    ok = subprocess.run(cmd + [str(src), "--out", str(tmp_path / "out"), "--tokenizer", tok_path, "--no-progress"],
                        capture_output=True, text=True, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "train" in ok.stdout and (tmp_path / "out" / "manifest.json").exists()
    bad = subprocess.run(cmd + [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o2")],
                         capture_output=True, text=True, env=env)
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: input file not found") and "Traceback" not in bad.stderr
    again = subprocess.run(cmd + [str(src), "--out", str(tmp_path / "out"), "--tokenizer", tok_path],
                           capture_output=True, text=True, env=env)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_tinystories_sample(tmp_path, tok_path, tok):
    path = SHARED_DATA / "tinystories_train_sample.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    text = path.read_text(encoding="utf-8")
    sample = tmp_path / "ts.txt"
    cut = text.index("<|endoftext|>\n", 200_000) + len("<|endoftext|>\n")
    sample.write_text(text[:cut], encoding="utf-8")
    m = run([sample], tmp_path / "out", tok_path, val_fraction=0.0)
    stories = text[:cut].split("\n<|endoftext|>\n")[:-1]
    assert m["documents"] == len(stories) > 100
    ids = read(tmp_path / "out", "train.bin").tolist()
    first = ids[: ids.index(tok.eos_id)]
    assert tok.decode(first) == stories[0] and stories[0].startswith("One day, a little girl named Lily")


# ------------------------------------------------------------------------------------------- loader
@pytest.fixture
def prepared(tmp_path, tok_path) -> Path:
    src = write_separated(tmp_path / "a.txt", make_docs(80, seed=11))
    run([src], tmp_path / "data", tok_path, val_fraction=0.1)
    return tmp_path / "data"


def test_token_data(prepared, tok):
    d = TokenData(prepared)
    assert isinstance(d.tokens, np.memmap) and d.mask is None
    assert d.tokens.tolist() == read(prepared, "train.bin").tolist()
    assert d.vocab_size == tok.vocab_size and d.tokenizer_sha256 == tok.sha256
    assert d.n_bytes == d.manifest["splits"]["train"]["bytes"] > 0 and len(d) == d.n_tokens
    v = TokenData(prepared, "val")
    assert v.tokens.tolist() == read(prepared, "val.bin").tolist()
    d.check_tokenizer(tok.sha256)
    with pytest.raises(ValueError, match=rf"prepared with tokenizer {tok.sha256[:12]}, but the model uses "
                                         r"abcdefabcdef: re-run prepare with this tokenizer"):
        d.check_tokenizer("abcdefabcdef" + "0" * 52)


def test_batches_windows_and_resume(prepared):
    d = TokenData(prepared)
    b = Batches(d, batch_size=4, seq_len=16, seed=5)
    batches = [b.next() for _ in range(3)]
    tokens = np.asarray(d.tokens, np.int64)
    for i, (x, y, m) in enumerate(batches):
        starts = np.random.default_rng([5, i]).integers(0, len(tokens) - 16, size=4)
        assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64 and m is None
        for row, s in enumerate(starts):
            assert x[row].tolist() == tokens[s:s + 16].tolist()
            assert y[row].tolist() == tokens[s + 1:s + 17].tolist()
    state = b.state()
    assert state == {"seed": 5, "index": 3}
    following = [b.next() for _ in range(2)]
    fresh = Batches(d, batch_size=4, seq_len=16, seed=123)
    fresh.load_state(json.loads(json.dumps(state)))
    for (x1, y1, _), (x2, y2, _) in zip(following, [fresh.next() for _ in range(2)]):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    with pytest.raises(ValueError, match="not a Batches state"):
        fresh.load_state({"index": 1})


def test_iter_eval(prepared):
    v = TokenData(prepared, "val")
    tokens = np.asarray(v.tokens, np.int64)
    batches = list(v.iter_eval(batch_size=3, seq_len=8))
    xs = np.concatenate([x for x, _, _ in batches])
    ys = np.concatenate([y for _, y, _ in batches])
    n = (len(tokens) - 1) // 8
    assert len(xs) == n and all(len(x) <= 3 for x, _, _ in batches)
    assert xs.reshape(-1).tolist() == tokens[: n * 8].tolist()
    assert ys.reshape(-1).tolist() == tokens[1: n * 8 + 1].tolist()
    assert len(list(v.iter_eval(3, 8, max_batches=1))) == 1


def test_corpus_too_short(prepared):
    v = TokenData(prepared, "val")
    with pytest.raises(ValueError, match=rf"has {v.n_tokens} tokens, too few for seq_len={v.n_tokens}"):
        Batches(v, 2, v.n_tokens, seed=0)
    Batches(v, 2, v.n_tokens - 1, seed=0).next()
    with pytest.raises(ValueError, match="too few"):
        next(v.iter_eval(1, v.n_tokens))


def test_out_of_range_ids(prepared):
    ids = read(prepared, "train.bin")
    ids[17] = 400  # vocab is 320
    ids.tofile(prepared / "train.bin")
    with pytest.raises(ValueError, match="token id 400 at position 17 out of range for vocab 320"):
        TokenData(prepared)
    TokenData(prepared, check_ids=False)


def test_truncated_bin(prepared):
    path = prepared / "val.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"val.bin is truncated"):
        TokenData(prepared, "val")
    os.remove(path)
    with pytest.raises(ValueError, match="not found"):
        TokenData(prepared, "val")


def test_missing_or_bad_manifest(tmp_path, prepared):
    with pytest.raises(ValueError, match="manifest.json not found: prepare the data first"):
        TokenData(tmp_path / "nothing")
    (prepared / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        TokenData(prepared)
    with pytest.raises(ValueError, match="split"):
        TokenData(prepared, "test")
