"""Tokenizer: layout of the ids, exact round trips, training edge cases, serialization."""
from __future__ import annotations

import random

import pytest
import sentencepiece as spm

from bitttt.data import train_tokenizer
from bitttt.tokenizer import (
    MIN_VOCAB_SIZE,
    NUM_RESERVED,
    Tokenizer,
    split_long_line,
    training_sentences,
)

SYLLABLES = ["ka", "to", "ri", "men", "sa", "lo", "pe", "tur", "vin", "ax", "el", "qua", "do", "ne", "bri", "ös"]


def make_docs(n_docs: int = 600, seed: int = 0) -> list[str]:
    """Pseudo-English documents: a few lines each, with punctuation, digits and a little non-ASCII."""
    r = random.Random(seed)
    words = ["".join(r.choice(SYLLABLES) for _ in range(r.randint(1, 3))) for _ in range(300)]
    docs = []
    for _ in range(n_docs):
        lines = []
        for _ in range(r.randint(1, 5)):
            words_in_line = [r.choice(words) for _ in range(r.randint(3, 14))]
            if r.random() < 0.2:
                words_in_line.append(str(r.randint(0, 999)))
            lines.append(" ".join(words_in_line) + r.choice([".", "!", "?", ",", " — é."]))
        docs.append("\n".join(lines))
    return docs


@pytest.fixture(scope="module")
def docs() -> list[str]:
    return make_docs()


@pytest.fixture(scope="module")
def tok(docs) -> Tokenizer:
    return Tokenizer.train_from_iterator(docs, 400, "unigram")


@pytest.fixture(scope="module")
def tok_bpe(docs) -> Tokenizer:
    return Tokenizer.train_from_iterator(docs, 400, "bpe")


@pytest.fixture(params=["unigram", "bpe"])
def any_tok(request, tok, tok_bpe) -> Tokenizer:
    return tok if request.param == "unigram" else tok_bpe


TRICKY = [
    "",
    " ",
    "   leading spaces",
    "trailing spaces   ",
    "two  spaces and\tone\ttab",
    "\n",
    "\n\n\nnewlines\n\n",
    "\r\nwindows\r\nline ends\r\n",
    "emoji 😀🚀 and CJK 中文字 and Hangul 한국어",
    "combining e\u0301 and zero width\u200bjoiner\u200d",
    "nul \x00 and bell \x07 and delete \x7f",
    "U+2581 \u2581 is not a space \u2581\u2581",
    "\u2581",
    " \u2581 ",
    "<|endoftext|>",
    "a<|user|>b<|assistant|>c<|system|>d<|endoftext|>",
    "<pad> <unk> <s> </s> <0x41>",
    "<|endoftext",
    "digits 0123456789 3.14159",
    "\ufeffbom at start",
    "\ufffd replacement char",
    "astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \U0010fffd",
    "ünïcödé wörds ösen",
]


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_tricky(any_tok, text):
    ids = any_tok.encode(text)
    assert all(0 <= i < any_tok.vocab_size for i in ids)
    assert any_tok.decode(ids) == text


def test_round_trip_fuzz(tok, tok_bpe):
    r = random.Random(1234)
    pools = [
        "abcdefghijklmnopqrstuvwxyz ABCXYZ",
        " \t\n\r\x0b\x0c\u00a0\u2028\u3000\u2581",
        "0123456789.,;:!?'\"()[]{}<>|/\\-_=+*&^%$#@~`",
        "éüößñçåøæ中文字日本語한국어😀🚀👍🏽",
    ]
    texts = []
    for _ in range(400):
        n = r.randint(0, 60)
        chars = []
        for _ in range(n):
            k = r.random()
            if k < 0.8:
                chars.append(r.choice(r.choice(pools)))
            elif k < 0.9:
                cp = r.randint(0, 0xFFFF)
                chars.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
            else:
                chars.append(chr(r.randint(0x10000, 0x10FFFF)))
        texts.append("".join(chars))
    for t in (tok, tok_bpe):
        batch = t.encode_batch(texts)
        for text, ids in zip(texts, batch):
            assert ids == t.encode(text)
            assert t.decode(ids) == text, repr(text)


def test_layout_and_special_ids(tok, tok_bpe):
    for t in (tok, tok_bpe):
        assert t.vocab_size == 400
        assert (t.pad_id, t.unk_id, t.eos_id, t.newline_id) == (0, 1, 2, 6)
        assert t.special_ids == {"<pad>": 0, "<unk>": 1, "<|endoftext|>": 2, "<|user|>": 3, "<|assistant|>": 4,
                                 "<|system|>": 5, "\n": 6}
        assert [t.id_to_piece(i) for i in (7, 8, 262)] == ["<0x00>", "<0x01>", "<0xFF>"]
        assert t.piece_to_id("\n") == 6
        assert t.piece_to_id("no such piece") == t.unk_id
    assert tok.model_type == "unigram"
    assert tok_bpe.model_type == "bpe"
    assert NUM_RESERVED == 263


def test_newline_is_one_token(any_tok):
    assert any_tok.encode("\n") == [6]
    ids = any_tok.encode("ka to\n\nri")
    assert ids.count(6) == 2
    for i in range(7, any_tok.vocab_size):  # no learned piece spans a newline
        assert "\n" not in any_tok.id_to_piece(i)


def test_special_strings_are_special_tokens(tok):
    assert tok.encode("<|endoftext|>") == [2]
    assert tok.encode("ka<|user|>to") == tok.encode("ka") + [3] + tok.encode("to")
    assert tok.decode([2, 3, 4, 5, 6]) == "<|endoftext|><|user|><|assistant|><|system|>\n"
    assert tok.decode([0]) == ""  # padding decodes to nothing
    assert tok.decode([1]) == "\ufffd"


def test_space_mark_is_encoded_as_bytes(tok):
    mark = tok.encode("\u2581")
    assert [tok.id_to_piece(i) for i in mark] == ["<0xE2>", "<0x96>", "<0x81>"]
    assert tok.encode(" ") != mark
    assert tok.decode(tok.encode("a\u2581b c")) == "a\u2581b c"


def test_unseen_characters_use_byte_fallback(tok):
    ids = tok.encode("Ж")
    assert [tok.id_to_piece(i) for i in ids] == ["<0xD0>", "<0x96>"]
    assert tok.unk_id not in tok.encode("Ж😀\U0010fffd")


def test_long_single_line_round_trips(tok):
    r = random.Random(5)
    words = ["katori", "menso", "ÿ", "中", "😀", "  ", "x" * 40]
    text = ""
    parts = []
    size = 0
    while size < 1_000_000:
        w = r.choice(words)
        parts.append(w)
        size += len(w.encode()) + 1
    text = " ".join(parts)
    assert "\n" not in text and len(text.encode()) >= 1_000_000
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_batch([text, "ka"])[0] == ids


def test_decode_accepts_numpy_and_checks_range(tok):
    import numpy as np

    ids = tok.encode("ka to ri")
    assert tok.decode(np.array(ids, np.uint16)) == "ka to ri"
    assert tok.decode_bytes([tok.piece_to_id("<0xC3>")]) == b"\xc3"
    assert tok.decode([tok.piece_to_id("<0xC3>")]) == "\ufffd"  # half a character
    with pytest.raises(ValueError, match="token id 400 out of range for vocab 400"):
        tok.decode([5, 400])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(400)


def test_encode_rejects_lone_surrogates_and_non_str(tok):
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode_batch(["ok", "b\udc00"])
    with pytest.raises(TypeError):
        tok.encode(b"bytes")


# ------------------------------------------------------------------------------------------- training
def test_split_long_line_cuts_at_spaces_and_characters():
    line = "word " * 2000
    pieces = list(split_long_line(line, 100))
    assert "".join(pieces) == line
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])  # cut right before a space
    cjk = "中文字" * 500  # no spaces: cut at character boundaries
    pieces = list(split_long_line(cjk, 100))
    assert "".join(pieces) == cjk
    assert all(len(p.encode()) <= 100 for p in pieces)
    assert list(split_long_line("", 100)) == []


def test_training_sentences_keep_all_text():
    docs = ["short\n\nlines here\n", "x" * 10_000 + " tail", "😀" * 3000]
    sentences = list(training_sentences(docs, 256))
    assert all(0 < len(s.encode()) <= 256 for s in sentences)
    assert "".join(sentences) == "".join(d.replace("\n", "") for d in docs)


def test_trains_on_one_long_line():
    # sentencepiece drops sentences over max_sentence_length: without splitting there would be nothing to train on
    r = random.Random(3)
    words = ["".join(r.choice(SYLLABLES) for _ in range(3)) for _ in range(60)]
    line = " ".join(r.choice(words) for _ in range(20_000))
    t = Tokenizer.train_from_iterator([line], 300)
    learned = {t.id_to_piece(i) for i in range(NUM_RESERVED, t.vocab_size)}
    assert any(p.startswith("\u2581") and len(p) > 3 for p in learned)
    assert t.decode(t.encode(line)) == line


def test_training_is_deterministic(docs, tok):
    again = Tokenizer.train_from_iterator(docs, 400, "unigram")
    assert again.sha256 == tok.sha256
    other_seed = Tokenizer.train_from_iterator(docs, 400, "unigram", seed=1, input_sentence_size=200)
    assert other_seed.vocab_size == 400


def test_vocab_too_large(docs):
    with pytest.raises(ValueError, match=r"vocab_size=50000 is too large for this corpus: it supports at most \d+"):
        Tokenizer.train_from_iterator(docs[:50], 50_000)


def test_vocab_too_small(docs):
    with pytest.raises(ValueError, match=f"at least {MIN_VOCAB_SIZE}"):
        Tokenizer.train_from_iterator(docs, 100)
    with pytest.raises(ValueError, match="too small for this corpus"):
        Tokenizer.train_from_iterator(["abcdefghijklmnopqrstuvwxyz"] * 10, MIN_VOCAB_SIZE)


@pytest.mark.parametrize("texts", [[], [""], ["\n\n", ""]])
def test_empty_corpus(texts):
    with pytest.raises(ValueError, match="empty"):
        Tokenizer.train_from_iterator(texts, 300)


def test_bad_arguments(docs):
    with pytest.raises(ValueError, match="model_type"):
        Tokenizer.train_from_iterator(docs, 400, "word")
    with pytest.raises(ValueError, match="no input files"):
        train_tokenizer([], 400)


def test_iterator_errors_are_not_swallowed():
    def texts():
        yield "ka to ri"
        raise KeyError("from the reader")

    with pytest.raises(KeyError, match="from the reader"):
        Tokenizer.train_from_iterator(texts(), 300)


def test_train_from_files(tmp_path, docs):
    path = tmp_path / "corpus.txt"
    path.write_text("\n<|endoftext|>\n".join(docs[:300]), encoding="utf-8")
    t = train_tokenizer([str(path)], 350, "bpe")
    assert t.vocab_size == 350
    assert t.decode(t.encode(docs[0])) == docs[0]


# -------------------------------------------------------------------------------------- serialization
def test_save_load_bytes_sha(tmp_path, tok):
    path = tmp_path / "sub.model"
    tok.save(path)
    assert path.read_bytes() == tok.to_bytes()
    loaded = Tokenizer.load(str(path))
    assert loaded.sha256 == tok.sha256 and len(tok.sha256) == 64
    assert loaded.to_bytes() == tok.to_bytes()
    again = Tokenizer.from_bytes(tok.to_bytes())
    text = "ka\u2581to 😀\n<|endoftext|>"
    assert again.encode(text) == tok.encode(text) == loaded.encode(text)
    assert [p.name for p in tmp_path.iterdir()] == ["sub.model"]  # no temporary file left


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.model"
    with pytest.raises(ValueError, match="not found.*missing.model"):
        Tokenizer.load(missing)
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_bytes(b"\x00\xffthis is not a model")
    with pytest.raises(ValueError, match="corrupt.model: not a valid sentencepiece model"):
        Tokenizer.load(corrupt)
    empty = tmp_path / "empty.model"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.model"):
        Tokenizer.load(empty)
    with pytest.raises(ValueError, match="directory"):
        Tokenizer.load(tmp_path)


def test_load_rejects_foreign_sentencepiece_model(tmp_path):
    import io

    w = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["ab cd ef"] * 20), model_writer=w, vocab_size=12,
                                   model_type="char", minloglevel=2)
    path = tmp_path / "plain.model"
    path.write_bytes(w.getvalue())
    with pytest.raises(ValueError, match="plain.model: not a bitttt tokenizer"):
        Tokenizer.load(path)
