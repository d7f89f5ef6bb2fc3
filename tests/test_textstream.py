"""Long prompts read in pieces (issue 21, point 3): bitttt.textstream cuts a text after a newline
(or before a space in a very long line), which gives the ids of the whole text on the shipped
unigram tokenizer and on a BPE tokenizer trained by bitttt.data; `infer -f FILE` / `-f -` reads a
prompt file of any length in memory independent of its length, with the tokens and the output
of reading it whole."""
import io
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitttt
from bitttt.data import train_tokenizer
from bitttt.textstream import encode_pieces, iter_text_pieces

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(bitttt.__file__).parent / "models" / "tinystories-ternary.safetensors"
SHARED = REPO.parent / "shared" / "data"
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

_WORDS = ["Tom", "saw", "a", "big", "red", "ball.", "She", "said,", '"Hello!"', "12345", "3.14", "don't", "héllo",
          "naïve", "日本語", "😀", "\u2581", "<|user|>", "<|assistant|>", "<|endoftext|>", "\t", "\r", "x" * 40]
_SEPS = [" ", " ", " ", " ", "  ", "   ", "\n", "\n", "\n\n", " \n", "\n ", "\r\n", ""]


def mixed_text(n: int, seed: int = 0) -> str:
    """Words, runs of spaces, tabs, CRLF, digits, accents, CJK, emoji, U+2581 and special strings."""
    rng = random.Random(seed)
    return "".join(rng.choice(_WORDS) + rng.choice(_SEPS) for _ in range(n))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """The shipped model's unigram tokenizer and a BPE one trained here on our own text."""
    d = tmp_path_factory.mktemp("tok")
    (d / "train.txt").write_text(mixed_text(30000, seed=1), encoding="utf-8")
    bpe = train_tokenizer([str(d / "train.txt")], vocab_size=400, model_type="bpe")
    assert bpe.model_type == "bpe"
    uni = bitttt.load(str(SHIPPED)).tokenizer
    assert uni.model_type == "unigram"
    return {"unigram": uni, "bpe": bpe}


def _piece_ids(tok, text: str, **kw) -> tuple[list[int], int]:
    pieces = list(iter_text_pieces(io.BytesIO(text.encode("utf-8")), **kw))
    assert "".join(pieces) == text
    return [i for ids in encode_pieces(tok, pieces) for i in ids], len(pieces)


@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_newline_and_space_cuts_give_the_ids_of_the_whole_text(tokenizers, kind):
    tok = tokenizers[kind]
    text = mixed_text(20000)
    whole = tok.encode(text)
    ids, n = _piece_ids(tok, text, block=512)  # cut after the last newline of every 512 bytes
    assert n > 100 and ids == whole
    lines = text.split("\n")  # after every single newline
    assert [i for p in [s + "\n" for s in lines[:-1]] + [lines[-1]] for i in tok.encode(p)] == whole
    one_line = text.replace("\n", " ").replace("\r", " ")  # no newline: cuts before a space
    ids, n = _piece_ids(tok, one_line, block=256, max_line=300)
    assert n > 100 and ids == tok.encode(one_line)
    # a cut anywhere else may change the ids near it: the reason for cutting where we do
    rng = random.Random(2)
    cuts = [rng.randrange(1, len(text)) for _ in range(100)]
    assert any(tok.encode(text[:c]) + tok.encode(text[c:]) != whole for c in cuts)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no ../shared/data corpus here")
@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_newline_cuts_on_the_shared_corpora(tokenizers, kind):
    tok = tokenizers[kind]
    files = sorted(p for p in SHARED.glob("*.txt") if not p.name.endswith(".SOURCE.txt"))
    assert files
    for p in files:
        text = p.read_text(encoding="utf-8")[:200_000]
        ids, n = _piece_ids(tok, text, block=4096)
        assert n > 10 and ids == tok.encode(text), p.name


def test_pieces_concatenate_to_the_text_and_stay_bounded():
    rng = random.Random(3)
    for _ in range(200):
        t = "".join(rng.choice(["a", " ", "\n", "é", "😀", "日本", "xyz"]) for _ in range(rng.randrange(0, 300)))
        for block in (1, 3, 64):
            for max_line in (1, 7, 1000):
                pieces = list(iter_text_pieces(io.BytesIO(t.encode()), block, max_line=max_line))
                assert "".join(pieces) == t and all(pieces)
                assert all(p.endswith("\n") or len(p) <= max_line for p in pieces[:-1])
    assert list(iter_text_pieces(io.StringIO("a\nb"), 1)) == ["a\n", "b"]  # a text stream too


@pytest.mark.parametrize("data,offset", [(b"hello \xff\xfe", 6), ("é".encode() * 100 + b"\xc3(", 200),
                                         (b"ab\xe2\x82", 2)])
@pytest.mark.parametrize("block", [1, 3, 1 << 16])
def test_bad_utf8_names_the_byte_offset(data, offset, block):
    with pytest.raises(ValueError, match=f"p.txt: not UTF-8 text .* at offset {offset}\\)"):
        list(iter_text_pieces(io.BytesIO(data), block, name="p.txt"))


# -- the command line ----------------------------------------------------------------------
def _infer(*args, stdin=None, stdout=subprocess.PIPE):
    return subprocess.run([sys.executable, "-m", "bitttt.infer", *args], input=stdin, stdout=stdout,
                          stderr=subprocess.PIPE, env=ENV, timeout=300)


# a model whose tokenizer reads 15 four-byte characters as one token: many MB of text, few tokens
@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    from bitttt import BitLlama, BitLlamaConfig
    from bitttt.formats import save_checkpoint
    from bitttt.optim import AdamW
    from bitttt.tokenizer import Tokenizer

    d = tmp_path_factory.mktemp("wide")
    rng = np.random.default_rng(0)
    chars = [chr(c) for c in range(0x1F600, 0x1F640)]
    words = ["".join(rng.choice(chars, 15)) for _ in range(8)]
    tok = Tokenizer.train_from_iterator(["\n".join(" " + " ".join(rng.choice(words, 12)) for _ in range(400))],
                                        vocab_size=327)
    assert len(tok.encode(" " + " ".join(words))) == 8
    cfg = BitLlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                         mini_batch_size=8)
    m = BitLlama(cfg)
    m.init_weights(0)
    save_checkpoint(d / "m.safetensors", params=m.params, optim=AdamW(m.params).state_tensors(), config=cfg,
                    train={"seq_len": 64}, state={"step": 1, "optim_t": 0}, tokenizer=tok.to_bytes())
    return d / "m.safetensors", words


def _lines(words, n: int, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" " + " ".join(rng.choice(words, 12)) + "\n" for _ in range(n))


def test_prompt_file_pieces_give_the_output_of_the_whole_prompt(wide_model, tmp_path):
    """-f FILE, -f - and -p with -f on a 190 KB prompt (3 pieces): the output and the prompt's
    token count of the API given the whole text, greedy."""
    model, words = wide_model
    text = _lines(words, 1000)
    (tmp_path / "p.txt").write_text(text, encoding="utf-8")
    m = bitttt.load(str(model))
    for args, stdin, whole in ((["-f", str(tmp_path / "p.txt")], None, text),
                               (["-f", "-"], text.encode(), text),
                               (["-p", "Once upon a time", "-f", str(tmp_path / "p.txt")], None,
                                "Once upon a time\n" + text)):
        r = _infer("-m", str(model), *args, "-n", "12", "--temp", "0", "--repeat-penalty", "1.3", "-s", "1",
                   stdin=stdin)
        assert r.returncode == 0, r.stderr.decode()
        out = r.stdout.decode()
        assert out.startswith(whole)
        assert out[len(whole):].rstrip("\n") == m.generate(whole, max_tokens=12, temperature=0, repeat_penalty=1.3,
                                                             seed=1)
        assert f"prefill {len(m.tokenizer.encode(whole))} tokens" in r.stderr.decode()


def test_bad_utf8_on_stdin_is_one_line_and_saves_no_memory(wide_model, tmp_path):
    """The error comes after the first pieces were read: one line, exit 2, no memory written."""
    model, words = wide_model
    data = _lines(words, 1000).encode()
    mem = tmp_path / "m.mem"
    r = _infer("-m", str(model), "-f", "-", "-n", "2", "--memory", str(mem), stdin=data + b"\xff",
               stdout=subprocess.DEVNULL)
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (f"error: stdin: not UTF-8 text (invalid byte 0xff at offset {len(data)}); "
                                    "convert it to UTF-8")
    assert not mem.exists()


_PEAK = r"""
import resource, subprocess, sys
src = open(sys.argv[2], "rb") if sys.argv[2] != "-" else None
r = subprocess.run([sys.executable, "-m", "bitttt.infer", "-m", sys.argv[1], "-f", sys.argv[3], "-n", "2",
                    "-s", "1", "-t", "1"], stdin=src, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
assert r.returncode == 0, r.stderr
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.stderr.split("prefill ")[1].split()[0])
"""
_MB = 8  # each big prompt file (about 135,000 tokens); read whole, it was held 3 times over


def _peak(model, path, stdin: bool = False) -> tuple[int, int]:
    """(peak RSS in bytes, prompt tokens) of `infer -f` reading `path` (through stdin with stdin=True)."""
    r = subprocess.run([sys.executable, "-c", _PEAK, str(model), str(path) if stdin else "-",
                        "-" if stdin else str(path)], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    kb, n = r.stdout.split()
    return int(kb) * 1024, int(n)


def test_a_long_prompt_file_in_bounded_memory(wide_model, tmp_path):
    """An 8 MB one-line file (-f FILE) and an 8 MB file of lines (-f -, through stdin) raise the
    peak RSS of `infer -f` by less than 12 MiB over a one-line prompt file; read whole, the text
    alone was 16 MB (its bytes and its str)."""
    model, words = wide_model
    rng = np.random.default_rng(1)
    (tmp_path / "small.txt").write_text(" " + " ".join(words), encoding="utf-8")
    block = " " + " ".join(rng.choice(words, 20000))
    with open(tmp_path / "one.txt", "w", encoding="utf-8") as f:  # one line, no newline at all
        while f.tell() < _MB * 10**6:
            f.write(block)
    lines = _lines(words, 2000)
    with open(tmp_path / "lines.txt", "w", encoding="utf-8") as f:
        while f.tell() < _MB * 10**6:
            f.write(lines)
    base, n0 = _peak(model, tmp_path / "small.txt")
    assert n0 == 8
    for name, stdin in (("one.txt", False), ("lines.txt", True)):
        peak, n = _peak(model, tmp_path / name, stdin)
        print(f"{name} stdin={stdin}: {n} tokens, peak RSS {peak / 2**20:.1f} MiB, base {base / 2**20:.1f} MiB")
        assert n > 125_000
        assert peak - base < 12 * 2**20, (name, stdin, base, peak)


def test_session_history_is_bounded_and_the_penalty_unchanged(wide_model, monkeypatch):
    """A session keeps HISTORY_KEEP to twice that ids; repeat_last_n -1 still penalizes every id
    ever read, and a window inside HISTORY_KEEP is the same: the same answers as a full history."""
    from bitttt import generation

    model, words = wide_model
    m = bitttt.load(str(model))
    text = _lines(words, 40) + "".join(chr(c) for c in range(0x1F600, 0x1F640)) + " ab cd 12"
    kw = dict(max_tokens=10, temperature=0.9, repeat_penalty=3.0, seed=3)
    want = {n: m.session().generate(text, repeat_last_n=n, **kw) for n in (-1, 4)}
    monkeypatch.setattr(generation, "HISTORY_KEEP", 8)
    for n in (-1, 4):
        s = m.session()
        assert s.generate(text, repeat_last_n=n, **kw) == want[n]
        assert 8 <= len(s.history) < 16
        assert set(m.tokenizer.encode(text)) <= set(s._penalized(-1))


def test_a_chat_first_message_from_a_file_has_a_limit(tmp_path):
    """A chat's first message is one message (logged whole): read in pieces, refused past the limit."""
    from bitttt.infer import read_prompt

    (tmp_path / "p.txt").write_text("ab\n" * 10, encoding="utf-8")
    assert read_prompt("hi", str(tmp_path / "p.txt"), limit=33) == "hi\n" + "ab\n" * 10
    with pytest.raises(ValueError, match=r"p.txt: more than 32 characters, too long for a chat's first message"):
        read_prompt("hi", str(tmp_path / "p.txt"), limit=32)
