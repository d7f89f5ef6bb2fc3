"""Token streams for evaluation, read piece by piece so that memory does not grow with the text.

A text file is read in 64 KiB blocks, each cut after its last newline and tokenized on its own
(the rest of the block goes with the next one).  Newline is its own token in our tokenizers, so
the cut does not change the ids: on the shipped tokenizer, tinystories_valid_sample.txt and
war_and_peace.txt give the same ids as whole-text tokenization (tests/test_eval_positions.py
checks it on a small text).  One caveat, sentencepiece's: its Viterbi sums piece scores in
float32 along the whole input, so two segmentations of a word that score within float32
rounding (about 1e-3 nats apart) can swap with the absolute offset; cutting at every newline of
war_and_peace.txt flips one such word ("blubberers"), the 64 KiB blocks flip none.  A line longer
than MAX_LINE bytes is cut before its last space (its ids may then differ at the cut).

A prepared folder's split is read from its token file (memory-mapped) in blocks.
"""
from __future__ import annotations

import codecs
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

BLOCK = 64 * 1024  # bytes (text) or tokens (a prepared split) per piece
MAX_LINE = 1 << 20  # bytes: a longer line is cut before a space


def check_text_file(path: str) -> int:
    """Size in bytes of the UTF-8 text file `path`, read in blocks (never whole).  ValueError with
    a one-line reason when it is missing, not a regular file or not UTF-8."""
    if os.path.exists(path) and not os.path.isfile(path):  # /dev/zero, a FIFO: never read
        raise ValueError(f"{path}: not a regular file")
    dec = codecs.getincrementaldecoder("utf-8")()
    n = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(BLOCK):
                try:
                    dec.decode(block)
                except UnicodeDecodeError as e:
                    raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {n + e.start})") from None
                n += len(block)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file or folder") from None
    try:
        dec.decode(b"", final=True)
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text (it ends inside a character)") from None
    return n


def text_pieces(path: str, tok, block: int = BLOCK, eos_first: bool = True) -> Iterator[list[int]]:
    """Token ids of the text file `path`, piece by piece (see the module doc): first [eos] (the
    start of a document, as in training) when eos_first, then the ids of each newline-cut block."""
    if eos_first:
        yield [tok.eos_id]
    pending = b""
    offset = 0  # file offset of pending[0]
    with open(path, "rb") as f:
        while True:
            data = f.read(block)
            pending += data
            if not data:
                cut = len(pending)
            else:
                cut = pending.rfind(b"\n") + 1
                if cut == 0 and len(pending) > MAX_LINE:
                    cut = _long_line_cut(pending)
            if cut:
                try:
                    text = pending[:cut].decode("utf-8")
                except UnicodeDecodeError as e:  # the file changed since check_text_file
                    raise ValueError(f"{path}: not UTF-8 text (invalid byte at offset {offset + e.start})") from None
                yield tok.encode(text)
                offset += cut
                pending = pending[cut:]
            if not data:
                return


def _long_line_cut(buf: bytes) -> int:
    """Where to cut a long line: before its last space, else before its last UTF-8 character."""
    cut = buf.rfind(b" ")
    if cut > 0:
        return cut
    cut = len(buf) - 1
    while cut > 0 and (buf[cut] & 0xC0) == 0x80:  # back over continuation bytes to a character's start
        cut -= 1
    return cut if cut > 0 else len(buf)


def array_pieces(tokens: np.ndarray, block: int = BLOCK) -> Iterator[np.ndarray]:
    """A token array (a prepared split's memory map) in blocks of `block` tokens (int64 copies)."""
    for i in range(0, len(tokens), block):
        yield np.asarray(tokens[i:i + block], dtype=np.int64)


def take(pieces: Iterable[Sequence[int]], n: int | None) -> Iterator[Sequence[int]]:
    """The first `n` tokens of a stream of pieces (all of them when n is None)."""
    if n is None:
        yield from pieces
        return
    left = n
    for p in pieces:
        if left <= 0:
            return
        if len(p) > left:
            p = p[:left]
        left -= len(p)
        yield p
