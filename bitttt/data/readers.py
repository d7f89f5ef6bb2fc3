"""Input files -> documents: the kinds of input prepare reads, UTF-8 checking and document iteration.

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

Files are read in blocks, so corpora larger than memory stream through; long documents come in segments cut at
newlines. Invalid UTF-8 is refused with its byte offset (``errors="strict"``) or replaced with U+FFFD
(``errors="replace"``).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Callable

from ..tokenizer import ASSISTANT, EOT, SYSTEM, USER
from .layout import DataError

TEXT_EXTENSIONS = (".txt", ".md")
JSONL_EXTENSIONS = (".jsonl",)

_BLOCK_BYTES = 1 << 20  # bytes read from a file at a time
_SEGMENT_CHARS = 1 << 20  # a long document is handed on in segments of about this many characters


class Unit:
    """A stretch of a document: tokens = pre + encode(text) + post (+ <|endoftext|> when doc_end); one mask value."""

    __slots__ = ("text", "mask", "pre", "post", "doc_end")

    def __init__(self, text: str, *, mask: int = 1, pre: tuple[str, ...] = (), post: tuple[str, ...] = (),
                 doc_end: bool = True) -> None:
        self.text = text
        self.mask = mask
        self.pre = pre
        self.post = post
        self.doc_end = doc_end


def input_kind(path: str) -> str:
    """"text" (.txt, .md) or "jsonl" (.jsonl), each optionally .gz; DataError for any other name."""
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
        input_kind(p)
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


class Reader:
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
        """The file's text in blocks (decompressed, decoded, without a leading byte-order mark)."""
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


def _text_units(blocks: Iterable[str]) -> Iterator[Unit]:
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
                yield Unit(piece, doc_end=True)
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
                yield Unit(buf[:cut], doc_end=False)
                emitted = True
                buf = buf[cut:]
    if emitted or buf.strip():
        yield Unit(buf, doc_end=True)


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


def _jsonl_units(blocks: Iterable[str], path: str, text_field: str) -> Iterator[Unit]:
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


def _jsonl_record(line: str, path: str, lineno: int, text_field: str) -> Iterator[Unit]:
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
            yield Unit(obj["system"], mask=0, pre=(SYSTEM,), doc_end=False)
        yield Unit(obj["prompt"], mask=0, pre=(USER,), post=(ASSISTANT,), doc_end=False)
        yield Unit(obj["response"], mask=1, doc_end=True)
        return
    if text_field not in obj:
        raise DataError(f"{path}:{lineno}: no {text_field!r} field (and no 'prompt'/'response' pair); "
                        "use --text-field to name the field that holds the text")
    text = obj[text_field]
    if not isinstance(text, str):
        raise DataError(f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}")
    if text.strip():
        yield Unit(text, doc_end=True)


def file_units(reader: Reader, text_field: str) -> Iterator[Unit]:
    """The units of the file `reader` reads, by its kind (see the module docstring)."""
    if input_kind(reader.path) == "jsonl":
        return _jsonl_units(reader.blocks(), reader.path, text_field)
    return _text_units(reader.blocks())


def iter_texts(inputs: Sequence[str | os.PathLike], *, text_field: str = "text", errors: str = "strict",
               on_bytes: Callable[[int], None] | None = None) -> Iterator[str]:
    """The text of every document (instruction records: system, prompt and response separately) of `inputs`.

    Long documents come in segments. `on_bytes(n)` is called with the number of file bytes read.
    """
    check_errors(errors)
    for path in check_inputs(inputs):
        reader = Reader(path, errors, on_bytes)
        for unit in file_units(reader, text_field):
            if unit.text:
                yield unit.text


def check_errors(errors: str) -> None:
    """Raise ValueError unless `errors` is "strict" or "replace"."""
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', got {errors!r}")

