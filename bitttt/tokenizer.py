"""Tokenizer: a byte-fallback sentencepiece model (unigram or BPE) with fixed special tokens.

Vocabulary layout of every model trained here (ids are stable across vocab sizes and model types):

    0  <pad>          padding, decodes to ""
    1  <unk>          never produced by ``encode`` (byte fallback covers every character), decodes to U+FFFD
    2  <|endoftext|>  end of document (``eos_id``)
    3  <|user|>       role markers for instruction data
    4  <|assistant|>
    5  <|system|>
    6  "\\n"           newline is its own token
    7..262            the 256 byte pieces <0x00>..<0xFF>
    263..             learned pieces

Any Unicode string without lone surrogates round-trips exactly: ``decode(encode(s)) == s``. Text is not normalized
(identity rule), spaces are kept as they are (no dummy prefix, no collapsing of runs), digits are split one per
token, and characters outside the learned vocabulary are encoded as their UTF-8 bytes.

Two behaviours to know about:

* The special strings ``<|endoftext|>``, ``<|user|>``, ``<|assistant|>`` and ``<|system|>`` are matched wherever they
  appear in the input text and encoded as the special token (so they still round-trip, but user text can produce
  an end-of-document token).
* sentencepiece uses U+2581 ("▁") internally to stand for a space. A literal U+2581 in the input is therefore
  encoded as its three UTF-8 byte tokens (<0xE2><0x96><0x81>) so that it decodes back to "▁", not to a space.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from .fileio import atomic_write_bytes

PAD = "<pad>"
UNK = "<unk>"
EOT = "<|endoftext|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
SYSTEM = "<|system|>"
NEWLINE = "\n"
SPECIAL_TOKENS: tuple[str, ...] = (EOT, USER, ASSISTANT, SYSTEM)
USER_SYMBOLS: tuple[str, ...] = (*SPECIAL_TOKENS, NEWLINE)
# pad + unk + user-defined symbols + 256 byte pieces: ids taken before any learned piece
NUM_RESERVED = 2 + len(USER_SYMBOLS) + 256
MIN_VOCAB_SIZE = NUM_RESERVED + 1
MODEL_TYPES = ("unigram", "bpe")

_SPACE_MARK = "\u2581"  # sentencepiece's stand-in for " "
_UNK_SURFACE = "\ufffd"
# sentencepiece's result depends on its thread count (per-thread statistics are summed, and the count is stored in
# the model), so training uses the same count on every machine: the same corpus and seed give the same model
TRAIN_THREADS = 8
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_SMALL = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")
_INTERNAL_PREFIX = re.compile(r"^(INTERNAL|INVALID_ARGUMENT|FAILED_PRECONDITION|OUT_OF_RANGE): (src/\S+ \[.*?\] )?")
# sentencepiece TrainerSpec.ModelType enum values
_MODEL_TYPE_NAMES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


def _default_threads() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def split_long_line(line: str, max_bytes: int) -> Iterator[str]:
    """Cut `line` into pieces of at most `max_bytes` UTF-8 bytes each (concatenating them gives `line` back).

    A cut goes right before a space where the window has one, so the next piece starts with its space the way
    sentencepiece sees words; otherwise it goes at the last UTF-8 character boundary inside the window.
    """
    if max_bytes < 4:
        raise ValueError(f"max_bytes must be at least 4 (one UTF-8 character), got {max_bytes}")
    data = line.encode("utf-8")
    while len(data) > max_bytes:
        cut = data.rfind(b" ", 0, max_bytes + 1)
        if cut <= 0:
            cut = max_bytes
            while data[cut] & 0xC0 == 0x80:  # continuation byte: back off to the start of the character
                cut -= 1
        yield data[:cut].decode("utf-8")
        data = data[cut:]
    if data:
        yield data.decode("utf-8")


def training_sentences(texts: Iterable[str], max_bytes: int = 4096) -> Iterator[str]:
    """Turn documents into sentencepiece training sentences: one per line, each at most `max_bytes` UTF-8 bytes.

    sentencepiece silently drops training sentences longer than its max_sentence_length, so long lines are cut
    (see `split_long_line`) instead. Newlines themselves are not fed: "\\n" is a fixed user-defined symbol.
    """
    for text in texts:
        start = 0
        n = len(text)
        while start < n:
            end = text.find("\n", start)
            if end < 0:
                end = n
            line = text[start:end]
            start = end + 1
            if not line:
                continue
            if len(line) * 4 <= max_bytes or len(line.encode("utf-8")) <= max_bytes:
                yield line
            else:
                yield from split_long_line(line, max_bytes)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """Yield (field number, value) of a serialized protobuf message; value is an int or the raw bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
            yield field, value
        elif wire == 1:
            yield field, buf[pos:pos + 8]
            pos += 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            yield field, buf[pos:pos + size]
            pos += size
        elif wire == 5:
            yield field, buf[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _model_type_of(proto: bytes) -> str:
    """The trainer's model type recorded in a serialized sentencepiece ModelProto ("unigram" when unset)."""
    try:
        for field, value in _proto_fields(proto):
            if field == 2 and isinstance(value, bytes):  # ModelProto.trainer_spec
                for f2, v2 in _proto_fields(value):
                    if f2 == 3 and isinstance(v2, int):  # TrainerSpec.model_type
                        return _MODEL_TYPE_NAMES.get(v2, f"unknown({v2})")
    except ValueError:
        pass
    return "unigram"


class Tokenizer:
    """A sentencepiece model with bitttt's special tokens; see the module docstring for the id layout."""

    def __init__(self, model_proto: bytes, *, source: str = "<bytes>") -> None:
        """Wrap a serialized sentencepiece model; `source` names it in error messages."""
        if not isinstance(model_proto, (bytes, bytearray)) or not model_proto:
            raise ValueError(f"{source}: not a sentencepiece model (empty)")
        self._proto = bytes(model_proto)
        sp = spm.SentencePieceProcessor()
        try:
            sp.LoadFromSerializedProto(self._proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{source}: not a valid sentencepiece model ({_clean_error(e)})") from None
        n = sp.get_piece_size()
        if n <= 0:
            raise ValueError(f"{source}: not a valid sentencepiece model (no pieces)")
        self._sp = sp
        self._source = source
        self._special_ids = {}
        for symbol in (PAD, UNK, *USER_SYMBOLS):
            i = sp.piece_to_id(symbol)
            if sp.id_to_piece(i) != symbol:
                raise ValueError(f"{source}: not a bitttt tokenizer: piece {symbol!r} is missing "
                                 "(train one with bitttt.data.train_tokenizer or `python -m bitttt.data prepare`)")
            self._special_ids[symbol] = i
        byte_ids = []
        for b in range(256):
            i = sp.piece_to_id(f"<0x{b:02X}>")
            if not sp.is_byte(i):
                raise ValueError(f"{source}: not a bitttt tokenizer: byte piece <0x{b:02X}> is missing "
                                 "(the model must be trained with byte_fallback)")
            byte_ids.append(i)
        self._byte_ids = byte_ids
        self._space_mark_ids = [byte_ids[b] for b in _SPACE_MARK.encode("utf-8")]
        table: list[bytes] = []
        for i in range(n):
            piece = sp.id_to_piece(i)
            if sp.is_byte(i):
                table.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_unknown(i):
                table.append(_UNK_SURFACE.encode("utf-8"))
            elif sp.is_control(i) or sp.is_unused(i):
                table.append(b"")
            else:
                table.append(piece.replace(_SPACE_MARK, " ").encode("utf-8"))
        self._piece_bytes = table
        self._model_type = _model_type_of(self._proto)
        self._sha256 = hashlib.sha256(self._proto).hexdigest()

    # ----------------------------------------------------------------------------------------- training
    @classmethod
    def train_from_iterator(
        cls,
        texts: Iterable[str],
        vocab_size: int = 4096,
        model_type: str = "unigram",
        *,
        max_sentence_bytes: int = 4096,
        input_sentence_size: int = 1_000_000,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> Tokenizer:
        """Train on an iterable of documents (streamed: sentencepiece keeps at most `input_sentence_size` lines,
        sampled with `seed`; lines longer than `max_sentence_bytes` UTF-8 bytes are cut, never dropped).

        The model is a function of the texts, the arguments and `num_threads` (default `TRAIN_THREADS` on every
        machine, because sentencepiece's result depends on it).
        """
        if model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
        if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
            raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if vocab_size < MIN_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: {NUM_RESERVED} ids are reserved (<pad>, <unk>, "
                f"{len(USER_SYMBOLS)} special symbols and 256 byte pieces), so it must be at least {MIN_VOCAB_SIZE}"
            )
        if max_sentence_bytes < 16:
            raise ValueError(f"max_sentence_bytes must be at least 16, got {max_sentence_bytes}")
        if input_sentence_size < 0:
            raise ValueError(f"input_sentence_size must be >= 0 (0 = all lines), got {input_sentence_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")

        fed = [0]
        failure: list[BaseException] = []

        def counted() -> Iterator[str]:
            # sentencepiece turns an exception raised by the iterator into a RuntimeError; keep the original
            try:
                for s in training_sentences(texts, max_sentence_bytes):
                    fed[0] += 1
                    yield s
            except BaseException as e:  # re-raised after the trainer returns
                failure.append(e)
                raise

        writer = io.BytesIO()
        spm.set_random_generator_seed(seed)
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=counted(),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                split_digits=True,
                character_coverage=0.9995,
                pad_id=0,
                pad_piece=PAD,
                unk_id=1,
                unk_piece=UNK,
                bos_id=-1,
                eos_id=-1,
                user_defined_symbols=list(USER_SYMBOLS),
                max_sentence_length=max_sentence_bytes,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True,
                num_threads=num_threads or TRAIN_THREADS,
                minloglevel=2,
            )
        except RuntimeError as e:
            if failure:
                raise failure[0] from None
            if fed[0] == 0:
                raise ValueError("no text to train the tokenizer on (the corpus is empty)") from None
            msg = str(e)
            m = _TOO_HIGH.search(msg)
            if m:
                raise ValueError(
                    f"vocab_size={vocab_size} is too large for this corpus: it supports at most {m.group(2)} pieces; "
                    "use a smaller vocab size or more text"
                ) from None
            m = _TOO_SMALL.search(msg)
            if m:
                raise ValueError(
                    f"vocab_size={vocab_size} is too small for this corpus: its characters need {m.group(2)} ids "
                    f"({NUM_RESERVED} reserved plus one per frequent character); use a vocab size of at least "
                    f"{m.group(2)}"
                ) from None
            raise ValueError(f"sentencepiece could not train a tokenizer: {_clean_error(e)}") from None
        if fed[0] == 0:
            raise ValueError("no text to train the tokenizer on (the corpus is empty)")
        return cls(writer.getvalue(), source="<trained>")

    # ------------------------------------------------------------------------------------- serialization
    def to_bytes(self) -> bytes:
        """The serialized sentencepiece model (the exact bytes `save` writes)."""
        return self._proto

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        """Inverse of `to_bytes`."""
        return cls(data)

    def save(self, path: str | os.PathLike) -> None:
        """Write the model to `path` atomically (a crash never leaves a half-written file)."""
        atomic_write_bytes(path, self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a model written by `save` (or any sentencepiece model with bitttt's special pieces)."""
        path = os.fspath(path)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ValueError(f"tokenizer file not found: {path}") from None
        except IsADirectoryError:
            raise ValueError(f"tokenizer path is a directory, not a file: {path}") from None
        return cls(data, source=path)

    # ------------------------------------------------------------------------------------------ metadata
    @property
    def sha256(self) -> str:
        """Hex sha256 of the serialized model: identifies the tokenizer token files were made with."""
        return self._sha256

    @property
    def vocab_size(self) -> int:
        """Number of ids: every id is in [0, vocab_size)."""
        return len(self._piece_bytes)

    @property
    def model_type(self) -> str:
        """"unigram" or "bpe" (as recorded in the model)."""
        return self._model_type

    @property
    def eos_id(self) -> int:
        """Id of <|endoftext|>, which ends every document."""
        return self._special_ids[EOT]

    @property
    def pad_id(self) -> int:
        return self._special_ids[PAD]

    @property
    def unk_id(self) -> int:
        return self._special_ids[UNK]

    @property
    def newline_id(self) -> int:
        return self._special_ids[NEWLINE]

    @property
    def special_ids(self) -> dict[str, int]:
        """{piece: id} for <pad>, <unk>, <|endoftext|>, <|user|>, <|assistant|>, <|system|> and "\\n"."""
        return dict(self._special_ids)

    def id_to_piece(self, i: int) -> str:
        """The vocabulary piece of id `i` (spaces shown as U+2581, bytes as <0xNN>)."""
        self._check_id(i)
        return self._sp.id_to_piece(int(i))

    def piece_to_id(self, piece: str) -> int:
        """The id of a vocabulary piece; `unk_id` when the piece is not in the vocabulary."""
        return self._sp.piece_to_id(piece)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes id `i` decodes to (one byte for byte pieces; may be part of a character)."""
        self._check_id(i)
        return self._piece_bytes[int(i)]

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, model_type={self.model_type!r}, sha256={self.sha256[:12]})"

    def _check_id(self, i: int) -> None:
        if not 0 <= int(i) < len(self._piece_bytes):
            raise ValueError(f"token id {i} out of range for vocab {len(self._piece_bytes)}")

    # ---------------------------------------------------------------------------------- encode / decode
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no end-of-document token is added)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if _SPACE_MARK in text:
            return self._encode_with_space_marks(text)
        return self._sp_encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """`encode` for each text, in parallel across sentencepiece's threads."""
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise TypeError(f"encode_batch expects str items, got {type(t).__name__}")
        if not texts:
            return []
        plain = [i for i, t in enumerate(texts) if _SPACE_MARK not in t]
        out: list[list[int]] = [[] for _ in texts]
        if plain:
            encoded = self._sp_encode([texts[i] for i in plain], num_threads=num_threads or _default_threads())
            for i, ids in zip(plain, encoded):
                out[i] = ids
        if len(plain) < len(texts):
            for i, t in enumerate(texts):
                if _SPACE_MARK in t:
                    out[i] = self._encode_with_space_marks(t)
        return out

    def _encode_with_space_marks(self, text: str) -> list[int]:
        out: list[int] = []
        for j, part in enumerate(text.split(_SPACE_MARK)):
            if j:
                out.extend(self._space_mark_ids)
            if part:
                out.extend(self._sp_encode(part))
        return out

    def _sp_encode(self, text: str | list[str], num_threads: int | None = None) -> list:
        try:
            return self._sp.encode(text, num_threads=num_threads)
        except (RuntimeError, TypeError, UnicodeError):
            for t in [text] if isinstance(text, str) else text:
                _check_utf8(t)
            raise

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The UTF-8 bytes of `ids` (may end inside a character: useful when streaming generated tokens)."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = list(ids)
        if not ids:
            return b""
        lo, hi = min(ids), max(ids)
        if lo < 0 or hi >= len(self._piece_bytes):
            bad = lo if lo < 0 else hi
            raise ValueError(f"token id {bad} out of range for vocab {len(self._piece_bytes)}")
        table = self._piece_bytes
        return b"".join([table[i] for i in ids])

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special tokens decode to their text, invalid byte sequences to U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def _check_utf8(text: str) -> None:
    """Raise ValueError when `text` cannot be written as UTF-8 (it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not valid Unicode: lone surrogate {text[e.start]!r} at position {e.start}"
        ) from None


def _clean_error(e: BaseException) -> str:
    """sentencepiece's message without its status code and source location."""
    msg = str(e).strip()
    return _INTERNAL_PREFIX.sub("", msg) or msg
