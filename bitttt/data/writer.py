"""Documents -> token files: the train/val split rule, encoding, and the split files with their masks.

Split rule (deterministic in the seed and the order of documents across all inputs): document 0 always goes to
train; document i >= 1 goes to validation when ``blake2b(f"{seed}:{i}")`` read as a fraction of 2**64 is below
``val_fraction``. If that leaves validation empty while there are >= 2 documents, the last document is moved to
validation. With a single document, its last ``ceil(val_fraction * n)`` tokens (at least 1, and leaving train at
least 1) go to validation. ``val_fraction=0`` gives an empty val.bin.

Files: ``{split}.bin`` raw little-endian token ids (`token_dtype`); ``{split}.mask`` uint8 per token, 1 = learn
this token, only when an instruction record exists (plain-text documents then get mask 1). Every document ends
with ``<|endoftext|>``; special-token strings inside the text are encoded as special tokens (see
`bitttt.tokenizer`). Tokens are appended to the open files in batches; a long document is encoded in the
segments the readers cut at newlines (newline is its own token, so this does not change the tokens).
"""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from typing import Callable

import numpy as np

from ..tokenizer import ASSISTANT, EOT, SYSTEM, USER, Tokenizer
from .layout import SPLITS, DataError, token_dtype
from .readers import Reader, Unit, file_units

_BATCH_CHARS = 4 << 20  # characters encoded per encode_batch call
_COPY_TOKENS = 1 << 20  # tokens moved at a time between split files


def _utf8_len(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


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


def encode_corpus(paths: list[str], tok: Tokenizer, folder: str, *, val_fraction: float, seed: int,
                  text_field: str, errors: str, on_bytes: Callable[[int], None] | None = None) -> dict:
    """Tokenize every input into `folder` (train/val .bin and .mask files); returns the manifest fields it knows.

    `on_bytes(n)` is called with the number of file bytes read.
    """
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
    batch: list[tuple[Unit, str, bool]] = []
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

    try:
        for path in paths:
            reader = Reader(path, errors, on_bytes, hash_file=True)
            for unit in file_units(reader, text_field):
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
