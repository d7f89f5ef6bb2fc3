"""Long UTF-8 inputs read in bounded pieces, cut where tokenizing the pieces one by one gives the
ids of the whole text.

    with open(path, "rb") as f:
        for ids in encode_pieces(tokenizer, iter_text_pieces(f, name=path)):
            model.feed(state, ids)              # memory independent of the file's length

`iter_text_pieces` reads `block` bytes at a time and yields the text up to and including the last
"\\n" read so far, keeping the rest for the next block.  A line longer than `max_line` characters
is cut before its last space, and, when the window has no space, after `max_line` characters.

Cuts and tokens: every tokenizer trained here (unigram and BPE) keeps "\\n" as its own token and
starts a word at each space, so `encode(a) + encode(b) == encode(a + b)` when `a` ends with
"\\n", or when `b` starts with a space.  Measured on the shipped TinyStories tokenizer (unigram) and
a BPE tokenizer trained by bitttt.data: 400,000 characters each of TinyStories, Shakespeare and War
and Peace, cut after every newline and before every space, gave the same ids as the whole text;
so did 150,000 characters of mixed text with runs of spaces, tabs, "\\r", digits, emoji, U+2581 and
special strings.  sentencepiece does not promise this; it is what these tokenizers do.  A cut
anywhere else (a line of more than `max_line` characters with no space in its last window) can
give different ids around that one cut (one random cut in four did in that text).
"""
from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from typing import BinaryIO

BLOCK = 1 << 16      # bytes read at a time
MAX_LINE = 1 << 14   # characters a piece may grow to while no newline comes


def _cut(text: str, max_line: int) -> int:
    """Where to cut `text` (no newline in it, longer than max_line): before its last space inside
    the first max_line characters, else at max_line."""
    j = text.rfind(" ", 1, max_line)
    return j if j > 0 else max_line


def iter_text_pieces(f: BinaryIO, block: int = BLOCK, *, max_line: int = MAX_LINE,
                     name: str = "the input") -> Iterator[str]:
    """The text of the binary stream `f` (UTF-8) in pieces: each ends with "\\n" (the last one may
    not), or, inside a line longer than `max_line` characters, before a space (else anywhere).
    Concatenated, the pieces are the whole text.  At most about block + 4 * max_line bytes of the
    input are held at once.  ValueError naming `name` and the byte offset at the first byte that is
    not UTF-8.  A stream of str (a text file) is accepted too."""
    if block < 1 or max_line < 1:
        raise ValueError(f"block and max_line must be >= 1, got {block} and {max_line}")
    dec = codecs.getincrementaldecoder("utf-8")("strict")
    rest = ""       # text read and not yet yielded (no newline in it)
    offset = 0      # bytes read before the current block
    while True:
        raw = f.read(block)
        final = not raw
        if isinstance(raw, str):
            new = raw
        else:
            pending = dec.getstate()[0]  # the bytes of a character cut by the previous block
            try:
                new = dec.decode(raw, final=final)
            except UnicodeDecodeError as e:
                at = offset - len(pending) + e.start
                bad = (pending + raw)[e.start]
                raise ValueError(f"{name}: not UTF-8 text (invalid byte 0x{bad:02x} at offset {at}); "
                                 "convert it to UTF-8") from None
            offset += len(raw)
        if final:
            if rest + new:
                yield rest + new
            return
        nl = new.rfind("\n")
        if nl >= 0:
            yield rest + new[:nl + 1]
            rest = new[nl + 1:]
        else:
            rest += new
        while len(rest) > max_line:  # a very long line: cut before a space, else anywhere
            j = _cut(rest, max_line)
            yield rest[:j]
            rest = rest[j:]


def encode_pieces(tokenizer, pieces: Iterable[str]) -> Iterator[list[int]]:
    """The token ids of each text piece, in order (empty pieces skipped).  With pieces from
    iter_text_pieces they concatenate to the ids of the whole text (see the module docstring)."""
    for p in pieces:
        if p:
            yield tokenizer.encode(p)
