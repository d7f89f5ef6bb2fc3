"""Data preparation: text files -> token files, masks and a manifest.

    python -m bitttt.data prepare INPUT... --out DIR [--tokenizer PATH] [--vocab-size N] ...

Inputs (each may also be gzip-compressed, name ending in .gz):

* ``.txt`` / ``.md``: the whole file is one document, unless it contains ``<|endoftext|>`` separators (the
  TinyStories layout ``story\\n<|endoftext|>\\nstory\\n<|endoftext|>\\n``): then each separator ends a document.
  One newline ("\\n" or "\\r\\n") right before and one right after a separator belong to the separator.
  Documents that are empty or only whitespace are skipped. A leading UTF-8 byte-order mark is dropped.
* ``.jsonl``: one JSON object per line (blank lines are skipped). An object with "prompt" and "response" string
  fields (and optionally "system") is an instruction record, encoded as
  ``[<|system|> system] <|user|> prompt <|assistant|> response <|endoftext|>``; the response and its closing
  ``<|endoftext|>`` are learned (mask 1), everything before them is not (mask 0). Otherwise the document is
  ``obj[text_field]`` (skipped when only whitespace).

Every document ends with ``<|endoftext|>``. Special-token strings inside the text are encoded as special tokens
(see `bitttt.tokenizer`).

Split rule (deterministic in the seed and the order of documents across all inputs): document 0 always goes to
train; document i >= 1 goes to validation when ``blake2b(f"{seed}:{i}")`` read as a fraction of 2**64 is below
``val_fraction``. If that leaves validation empty while there are >= 2 documents, the last document is moved to
validation. With a single document, its last ``ceil(val_fraction * n)`` tokens (at least 1, and leaving train at
least 1) go to validation. ``val_fraction=0`` gives an empty val.bin.

Output directory:

* ``tokenizer.model``: the tokenizer (trained on the inputs when none is given)
* ``train.bin``, ``val.bin``: raw little-endian token ids, uint16 when vocab_size <= 65536 else uint32
* ``train.mask``, ``val.mask``: uint8 per token, 1 = learn this token; only when an instruction record exists
  (plain-text documents then get mask 1)
* ``manifest.json``: written last; see `prepare`.

Corpora larger than memory are streamed: files are read in blocks, long documents are encoded in segments cut
at newlines (newline is its own token, so this does not change the tokens), and tokens are appended to the open
files in batches. Everything is written into a temporary folder next to the output and renamed into place at the
end, so a failure leaves nothing behind.
"""
from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable

import numpy as np

from .fileio import atomic_write_bytes
from .tokenizer import ASSISTANT, EOT, SYSTEM, USER, Tokenizer

FORMAT = "bitttt-tokens"
FORMAT_VERSION = 1
TEXT_EXTENSIONS = (".txt", ".md")
JSONL_EXTENSIONS = (".jsonl",)
MANIFEST = "manifest.json"
TOKENIZER_FILE = "tokenizer.model"
SPLITS = ("train", "val")

_BLOCK_BYTES = 1 << 20  # bytes read from a file at a time
_SEGMENT_CHARS = 1 << 20  # a long document is handed on in segments of about this many characters
_BATCH_CHARS = 4 << 20  # characters encoded per encode_batch call
_COPY_TOKENS = 1 << 20  # tokens moved at a time between split files


class DataError(ValueError):
    """A problem with the input data or the output folder; the message says what to do."""


def token_dtype(vocab_size: int) -> np.dtype:
    """Little-endian dtype of token files: uint16 when every id fits (vocab_size <= 65536), else uint32."""
    if vocab_size <= 0:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


# ----------------------------------------------------------------------------------------------- reading
class _Unit:
    """A stretch of a document: tokens = pre + encode(text) + post (+ <|endoftext|> when doc_end); one mask value."""

    __slots__ = ("text", "mask", "pre", "post", "doc_end")

    def __init__(self, text: str, *, mask: int = 1, pre: tuple[str, ...] = (), post: tuple[str, ...] = (),
                 doc_end: bool = True) -> None:
        self.text = text
        self.mask = mask
        self.pre = pre
        self.post = post
        self.doc_end = doc_end


def _input_kind(path: str) -> str:
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(TEXT_EXTENSIONS):
        return "text"
    if name.endswith(JSONL_EXTENSIONS):
        return "jsonl"
    exts = ", ".join(TEXT_EXTENSIONS + JSONL_EXTENSIONS)
    raise DataError(f"{path}: unknown file type: expected one of {exts} (optionally followed by .gz)")


def check_inputs(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Validate input paths (exist, are files, known extension); returns them as strings."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    paths = [os.fspath(p) for p in inputs]
    if not paths:
        raise DataError("no input files given")
    for p in paths:
        if not os.path.exists(p):
            raise DataError(f"input file not found: {p}")
        if not os.path.isfile(p):
            raise DataError(f"input is not a file: {p}")
        _input_kind(p)
    return paths


class _Tap:
    """A read-only file wrapper that hashes and counts the raw bytes read through it."""

    def __init__(self, raw, sha, on_bytes: Callable[[int], None] | None) -> None:
        self._raw = raw
        self._sha = sha
        self._on_bytes = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        if data:
            if self._sha is not None:
                self._sha.update(data)
            if self._on_bytes is not None:
                self._on_bytes(len(data))
        return data

    def readable(self) -> bool:
        return True


def _complete_utf8_prefix(buf: bytes) -> int:
    """Length of `buf` without a trailing, possibly incomplete UTF-8 sequence (it may complete in the next block)."""
    n = len(buf)
    i = n - 1
    while i >= 0 and i >= n - 3 and buf[i] & 0xC0 == 0x80:
        i -= 1
    if i < 0 or buf[i] < 0xC0:
        return n
    need = 2 if buf[i] < 0xE0 else 3 if buf[i] < 0xF0 else 4
    return i if n - i < need else n


class _Reader:
    """Decoded text blocks of one input file; hashes the file and counts replaced bytes as it goes."""

    def __init__(self, path: str, errors: str, on_bytes: Callable[[int], None] | None = None,
                 hash_file: bool = False) -> None:
        self.path = path
        self.errors = errors
        self.on_bytes = on_bytes
        self.sha = hashlib.sha256() if hash_file else None
        self.replaced = 0
        self.gz = path.lower().endswith(".gz")

    def blocks(self) -> Iterator[str]:
        where = " of the decompressed data" if self.gz else ""
        with open(self.path, "rb") as raw:
            tap = _Tap(raw, self.sha, self.on_bytes)
            stream = gzip.GzipFile(fileobj=tap, mode="rb") if self.gz else tap
            pending = b""
            offset = 0  # offset of pending[0] in the (decompressed) byte stream
            first = True
            while True:
                try:
                    data = stream.read(_BLOCK_BYTES)
                except (OSError, EOFError, zlib.error) as e:
                    raise DataError(f"{self.path}: cannot decompress: {e}") from None
                buf = pending + data
                cut = len(buf) if not data else _complete_utf8_prefix(buf)
                chunk, pending = buf[:cut], buf[cut:]
                try:
                    text = chunk.decode("utf-8")
                except UnicodeDecodeError as e:
                    if self.errors == "strict":
                        raise DataError(
                            f"{self.path}: invalid UTF-8 at byte offset {offset + e.start}{where} "
                            f"(byte 0x{chunk[e.start]:02x}): the file is not UTF-8 text; convert it to UTF-8, or "
                            "pass --errors replace (errors='replace') to replace invalid bytes with U+FFFD"
                        ) from None
                    text = chunk.decode("utf-8", errors="replace")
                    # every U+FFFD beyond those spelled out in the input is one replaced sequence
                    self.replaced += text.count("\ufffd") - chunk.count(b"\xef\xbf\xbd")
                offset += cut
                if first and text:
                    if text.startswith("\ufeff"):
                        text = text[1:]
                    first = False
                if text:
                    yield text
                if not data:
                    return


def _text_units(blocks: Iterable[str]) -> Iterator[_Unit]:
    """Documents of a .txt/.md file, split on <|endoftext|>, as units; long documents come in segments."""
    sep = EOT
    keep = len(sep) - 1  # a separator may straddle the end of the buffer
    buf = ""
    emitted = False  # the current document has handed on a segment already
    strip_lead = False  # the previous block ended right after a separator
    for block in blocks:
        buf += block
        pos = 0
        if strip_lead:
            pos = _skip_newline(buf, pos)
            strip_lead = False
        while True:
            k = buf.find(sep, pos)
            if k < 0:
                break
            end = k
            if end - 2 >= pos and buf.startswith("\r\n", end - 2):
                end -= 2
            elif end > pos and buf[end - 1] == "\n":
                end -= 1
            piece = buf[pos:end]
            if emitted or piece.strip():
                yield _Unit(piece, doc_end=True)
            emitted = False
            pos = k + len(sep)
            if pos == len(buf):
                strip_lead = True
            else:
                pos = _skip_newline(buf, pos)
        buf = buf[pos:]
        if len(buf) > _SEGMENT_CHARS:
            cut = _segment_cut(buf, keep)
            if cut > 0:
                yield _Unit(buf[:cut], doc_end=False)
                emitted = True
                buf = buf[cut:]
    if emitted or buf.strip():
        yield _Unit(buf, doc_end=True)


def _skip_newline(buf: str, pos: int) -> int:
    if buf.startswith("\r\n", pos):
        return pos + 2
    if buf.startswith("\n", pos):
        return pos + 1
    return pos


def _segment_cut(buf: str, keep: int) -> int:
    """Where to cut a long document: before its last newline, else before a space; 0 = wait for more text."""
    limit = len(buf) - keep
    cut = buf.rfind("\n", 0, limit)
    if cut > 0:
        return cut
    cut = buf.rfind(" ", 0, limit)
    if cut > 0:
        return cut
    return limit if len(buf) > 4 * _SEGMENT_CHARS else 0


def _jsonl_units(blocks: Iterable[str], path: str, text_field: str) -> Iterator[_Unit]:
    """Documents and instruction records of a .jsonl file as units."""
    lineno = 0
    partial: list[str] = []  # the line read so far
    for block in blocks:
        start = 0
        while True:
            k = block.find("\n", start)
            if k < 0:
                if start < len(block):
                    partial.append(block[start:])
                break
            partial.append(block[start:k])
            line = "".join(partial)
            partial = []
            lineno += 1
            yield from _jsonl_record(line, path, lineno, text_field)
            start = k + 1
    if partial:
        yield from _jsonl_record("".join(partial), path, lineno + 1, text_field)


def _jsonl_record(line: str, path: str, lineno: int, text_field: str) -> Iterator[_Unit]:
    if not line.strip():
        return
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj and "response" in obj:
        fields = ("system", "prompt", "response") if obj.get("system") is not None else ("prompt", "response")
        for name in fields:
            if not isinstance(obj[name], str):
                raise DataError(f"{path}:{lineno}: field {name!r} must be a string, got {type(obj[name]).__name__}")
        if "system" in fields:
            yield _Unit(obj["system"], mask=0, pre=(SYSTEM,), doc_end=False)
        yield _Unit(obj["prompt"], mask=0, pre=(USER,), post=(ASSISTANT,), doc_end=False)
        yield _Unit(obj["response"], mask=1, doc_end=True)
        return
    if text_field not in obj:
        raise DataError(f"{path}:{lineno}: no {text_field!r} field (and no 'prompt'/'response' pair); "
                        "use --text-field to name the field that holds the text")
    text = obj[text_field]
    if not isinstance(text, str):
        raise DataError(f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}")
    if text.strip():
        yield _Unit(text, doc_end=True)


def _file_units(reader: _Reader, text_field: str) -> Iterator[_Unit]:
    if _input_kind(reader.path) == "jsonl":
        return _jsonl_units(reader.blocks(), reader.path, text_field)
    return _text_units(reader.blocks())


def iter_texts(inputs: Sequence[str | os.PathLike], *, text_field: str = "text", errors: str = "strict",
               on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The text of every document (instruction records: system, prompt and response separately) of `inputs`.

    Long documents come in segments. `on_bytes(n)` is called with the number of file bytes read.
    """
    _check_errors(errors)
    for path in check_inputs(inputs):
        reader = _Reader(path, errors, on_bytes)
        for unit in _file_units(reader, text_field):
            if unit.text:
                yield unit.text


def _check_errors(errors: str) -> None:
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")


# ----------------------------------------------------------------------------------------------- writing
class _SplitFile:
    """Open token (and mask) file of one split, with the counts that go in the manifest."""

    def __init__(self, folder: str, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.folder = folder
        self.dtype = dtype
        self.tokens = open(os.path.join(folder, f"{name}.bin"), "w+b")
        self.masks = None
        self.n_tokens = 0
        self.n_docs = 0
        self.n_bytes = 0

    def enable_mask(self) -> None:
        """Start a mask file; tokens written so far are plain text, mask 1."""
        self.masks = open(os.path.join(self.folder, f"{self.name}.mask"), "w+b")
        left = self.n_tokens
        ones = np.ones(min(left, _COPY_TOKENS), np.uint8)
        while left:
            n = min(left, len(ones))
            self.masks.write(ones[:n].tobytes())
            left -= n

    def write(self, ids: np.ndarray, mask: np.ndarray | None) -> None:
        self.tokens.write(ids.astype(self.dtype, copy=False).tobytes())
        if self.masks is not None:
            self.masks.write(mask.astype(np.uint8, copy=False).tobytes())
        self.n_tokens += len(ids)

    def read_tail(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """The last `n` tokens (and mask values), in order, in chunks."""
        start = self.n_tokens - n
        for s in range(start, self.n_tokens, _COPY_TOKENS):
            count = min(_COPY_TOKENS, self.n_tokens - s)
            self.tokens.seek(s * self.dtype.itemsize)
            ids = np.frombuffer(self.tokens.read(count * self.dtype.itemsize), self.dtype)
            mask = None
            if self.masks is not None:
                self.masks.seek(s)
                mask = np.frombuffer(self.masks.read(count), np.uint8)
            yield ids, mask

    def truncate(self, n_tokens: int) -> None:
        self.tokens.truncate(n_tokens * self.dtype.itemsize)
        self.tokens.seek(0, os.SEEK_END)
        if self.masks is not None:
            self.masks.truncate(n_tokens)
            self.masks.seek(0, os.SEEK_END)
        self.n_tokens = n_tokens

    def close(self) -> None:
        for f in (self.tokens, self.masks):
            if f is not None and not f.closed:
                f.flush()
                os.fsync(f.fileno())
                f.close()


def _move_tail(src: _SplitFile, dst: _SplitFile, n: int) -> np.ndarray:
    """Move the last `n` tokens of `src` to the end of `dst`; returns the token count per id moved (for bytes)."""
    counts = None
    for ids, mask in src.read_tail(n):
        dst.write(ids, mask)
        c = np.bincount(ids.astype(np.int64))
        counts = c if counts is None else _add_counts(counts, c)
    src.truncate(src.n_tokens - n)
    return counts if counts is not None else np.zeros(0, np.int64)


def _add_counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) < len(b):
        a, b = b, a
    a = a.copy()
    a[: len(b)] += b
    return a


def _is_val(index: int, seed: int, val_fraction: float) -> bool:
    """The split rule: document `index` goes to validation (see the module docstring)."""
    if index == 0 or val_fraction <= 0:
        return False
    h = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") < val_fraction * 2.0**64


def _text_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each id stands for in the source text (special tokens that prepare inserts count 0)."""
    lengths = np.array([len(tok.token_bytes(i)) for i in range(tok.vocab_size)], np.int64)
    for piece in (EOT, USER, ASSISTANT, SYSTEM, "<pad>", "<unk>"):
        lengths[tok.special_ids[piece]] = 0
    return lengths


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # progress is a nicety
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _encode_corpus(paths: list[str], tok: Tokenizer, folder: str, *, val_fraction: float, seed: int,
                   text_field: str, errors: str, progress: bool) -> dict:
    """Tokenize every input into `folder`; returns the manifest fields it knows."""
    dtype = token_dtype(tok.vocab_size)
    files = {name: _SplitFile(folder, name, dtype) for name in SPLITS}
    special = tok.special_ids
    eos = tok.eos_id
    has_mask = False
    doc_index = -1
    new_doc = True
    split = "train"
    last_doc_start = 0  # token offset of the current/last document in its split
    last_doc_bytes = 0
    doc_bytes = 0
    sources = []
    replaced_total = 0
    # a batch: units, their split, whether they start a document; flushed every _BATCH_CHARS characters
    batch: list[tuple[_Unit, str, bool]] = []
    batch_chars = 0

    def flush() -> None:
        nonlocal has_mask, batch_chars, last_doc_start
        if not batch:
            return
        encoded = tok.encode_batch([u.text for u, _, _ in batch])
        out = {name: ([], [], []) for name in SPLITS}  # ids, mask values, run lengths
        need_mask = any(u.mask == 0 for u, _, _ in batch)
        for (u, name, starts_doc), ids in zip(batch, encoded):
            ids_list, values, runs = out[name]
            n0 = len(ids_list)
            if starts_doc:
                last_doc_start = files[name].n_tokens + n0
            ids_list.extend(special[p] for p in u.pre)
            ids_list.extend(ids)
            ids_list.extend(special[p] for p in u.post)
            if u.doc_end:
                ids_list.append(eos)
            values.append(u.mask)
            runs.append(len(ids_list) - n0)
        if need_mask and not has_mask:
            has_mask = True
            for f in files.values():
                f.enable_mask()
        for name, (ids_list, values, runs) in out.items():
            if ids_list:
                mask = np.repeat(np.array(values, np.uint8), runs) if has_mask else None
                files[name].write(np.array(ids_list, np.int64), mask)
        batch.clear()
        batch_chars = 0

    bar = _Progress(sum(os.path.getsize(p) for p in paths), "tokenizing", progress)
    try:
        for path in paths:
            reader = _Reader(path, errors, bar.update, hash_file=True)
            for unit in _file_units(reader, text_field):
                starts_doc = new_doc
                if starts_doc:
                    doc_index += 1
                    split = "val" if _is_val(doc_index, seed, val_fraction) else "train"
                    doc_bytes = 0
                    files[split].n_docs += 1
                n = _utf8_len(unit.text)
                doc_bytes += n
                files[split].n_bytes += n
                batch.append((unit, split, starts_doc))
                batch_chars += len(unit.text) + 1
                new_doc = unit.doc_end
                if new_doc:
                    last_doc_bytes = doc_bytes
                if batch_chars >= _BATCH_CHARS:
                    flush()
            flush()
            if reader.replaced:
                replaced_total += reader.replaced
                warnings.warn(f"{path}: replaced {reader.replaced} invalid UTF-8 byte sequence(s) with U+FFFD",
                              stacklevel=2)
            sources.append({"path": os.path.abspath(path), "size": os.path.getsize(path),
                            "sha256": reader.sha.hexdigest()})
        flush()
        n_docs = doc_index + 1
        if n_docs == 0:
            raise DataError("the corpus is empty: no documents with text in " + ", ".join(paths))
        train, val = files["train"], files["val"]
        single_tail = 0
        if val_fraction > 0 and n_docs >= 2 and val.n_docs == 0:
            # the last document is in train (validation is empty): move it over
            _move_tail(train, val, train.n_tokens - last_doc_start)
            train.n_docs -= 1
            val.n_docs += 1
            train.n_bytes -= last_doc_bytes
            val.n_bytes += last_doc_bytes
        elif val_fraction > 0 and n_docs == 1:
            n = train.n_tokens
            single_tail = min(n - 1, max(1, math.ceil(val_fraction * n)))
            counts = _move_tail(train, val, single_tail)
            lengths = _text_byte_lengths(tok)
            moved = int(counts @ lengths[: len(counts)])
            train.n_bytes -= moved
            val.n_bytes += moved
        splits = {}
        for name, f in files.items():
            splits[name] = {
                "file": f"{name}.bin",
                "mask_file": f"{name}.mask" if has_mask else None,
                "tokens": f.n_tokens,
                "documents": f.n_docs,
                "bytes": f.n_bytes,
            }
    finally:
        bar.close()
        for f in files.values():
            f.close()
    return {
        "dtype": dtype.name,
        "has_mask": has_mask,
        "splits": splits,
        "documents": n_docs,
        "single_document_val_tokens": single_tail,
        "sources": sources,
        "replaced_invalid_utf8": replaced_total,
    }


# ------------------------------------------------------------------------------------------------ prepare
def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    vocab_size: int = 4096,
    model_type: str = "unigram",
    val_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    errors: str = "strict",
    progress: bool = True,
    force: bool = False,
    input_sentence_size: int = 1_000_000,
) -> dict:
    """Tokenize `inputs` into `out_dir` (see the module docstring); returns the manifest written there.

    `tokenizer`: a Tokenizer or the path of a tokenizer.model; None trains one (`vocab_size`, `model_type`,
    at most `input_sentence_size` lines sampled with `seed`). `force` replaces an existing prepared folder.
    """
    paths = check_inputs(inputs)
    _check_errors(errors)
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, paths, force)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
    try:
        if tokenizer is None:
            bar = _Progress(sum(os.path.getsize(p) for p in paths), "training tokenizer", progress)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # replaced bytes are reported once, by the second pass
                    tok = Tokenizer.train_from_iterator(
                        iter_texts(paths, text_field=text_field, errors=errors, on_bytes=bar.update),
                        vocab_size, model_type, input_sentence_size=input_sentence_size, seed=seed,
                    )
            finally:
                bar.close()
        elif isinstance(tokenizer, Tokenizer):
            tok = tokenizer
        else:
            tok = Tokenizer.load(tokenizer)
        tok.save(os.path.join(tmp, TOKENIZER_FILE))
        body = _encode_corpus(paths, tok, tmp, val_fraction=val_fraction, seed=seed, text_field=text_field,
                              errors=errors, progress=progress)
        from . import __version__

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bitttt_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "sha256": tok.sha256,
                "vocab_size": tok.vocab_size,
                "model_type": tok.model_type,
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "special_ids": tok.special_ids,
            },
            **body,
            "val_fraction": val_fraction,
            "seed": seed,
            "split_rule": "document i >= 1 to val when blake2b(f'{seed}:{i}') / 2**64 < val_fraction; document 0 "
                          "to train; with >= 2 documents and none in val, the last one to val; a single document "
                          "gives its last single_document_val_tokens tokens to val",
            "text_field": text_field,
            "errors": errors,
        }
        atomic_write_bytes(os.path.join(tmp, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        _install(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_out_dir(out_dir: str, inputs: list[str], force: bool) -> None:
    for p in inputs:
        if os.path.commonpath([os.path.abspath(p), out_dir]) == out_dir:
            raise DataError(f"input {p} is inside the output folder {out_dir}: choose another --out")
    if os.path.commonpath([os.getcwd(), out_dir]) == out_dir:
        raise DataError(f"the output folder {out_dir} contains the current directory: choose another --out")
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise DataError(f"{out_dir} exists and is not a folder: choose another --out")
    entries = os.listdir(out_dir)
    if not entries:
        return
    if not force:
        raise DataError(f"{out_dir} already exists and is not empty: choose another --out, or pass --force "
                        "to replace a folder made by prepare")
    if MANIFEST not in entries:
        raise DataError(f"{out_dir} is not empty and holds no {MANIFEST}: --force only replaces a folder made by "
                        "prepare; delete it yourself if you mean to")


def _install(tmp: str, out_dir: str, force: bool) -> None:
    """Rename the finished `tmp` folder to `out_dir` (replacing an old prepared folder when `force`)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp and mkstemp make private files; give them the usual permissions
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    _check_out_dir(out_dir, [], force)  # it may have changed while we worked
    old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m bitttt.data prepare ...`; returns the exit status (2 on any error)."""
    parser = argparse.ArgumentParser(prog="python -m bitttt.data", description="Prepare token files for training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help="tokenize text files into DIR (train.bin, val.bin, manifest.json)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".txt, .md or .jsonl files, optionally .gz")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--tokenizer", metavar="PATH", help="use this tokenizer.model instead of training one")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size of a trained tokenizer (4096)")
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="tokenizer model (unigram)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for validation (0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of tokenizer training (0)")
    p.add_argument("--text-field", default="text", help="JSON field holding a document's text (text)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: refuse (strict) or replace with U+FFFD (replace)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier prepare's output")
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = prepare(
                args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                model_type=args.model_type, val_fraction=args.val_fraction, seed=args.seed,
                text_field=args.text_field, errors=args.errors, progress=not args.no_progress, force=args.force,
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    s = manifest["splits"]
    print(f"wrote {os.path.abspath(args.out)}: train {s['train']['tokens']:,} tokens ({s['train']['documents']:,} "
          f"documents), val {s['val']['tokens']:,} tokens ({s['val']['documents']:,} documents), "
          f"vocab {manifest['tokenizer']['vocab_size']}, {manifest['dtype']}"
          + (", with masks" if manifest["has_mask"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
