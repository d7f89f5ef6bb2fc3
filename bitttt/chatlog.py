"""Chat logs and what /sleep has replayed of them.

A chat log (conversations.jsonl) holds one JSON object a line, {"time", "role", "text"},
appended by every chat that logs into it.  /sleep replays a log into the memory; a *mark*
records how much of it: the log's first `bytes` bytes (whole lines, `records` of them) and
their SHA-256.  Marks travel in the memory file (bitttt.formats.memory, metadata `slept`), so a
state and what it absorbed stay together.

A mark is matched by content, not by path: a log that several chats append to only grows at
its end, so its prefix and the mark still match; a memory file copied or moved together with
its log still finds its mark; a log that was rewritten or replaced matches no mark and is
replayed whole.  A last line still being written (no newline yet) waits for the next /sleep.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

TAGS = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}
END = "<|endoftext|>"


@dataclass
class LogSpan:
    """The part of a log a memory has not replayed yet: `texts` (its turns, each with its role's
    tag), `records` (its lines, readable or not), `skipped` (the lines replayed before), `mark`
    (the mark once it is replayed; None for a log without a complete line), `matched` (the
    indices of the marks it supersedes)."""

    path: str
    texts: list[str]
    records: int
    skipped: int
    mark: dict | None
    matched: list[int]

    @property
    def text(self) -> str:
        """What /sleep reads: the turns as one conversation, ending with <|endoftext|> ("" when none)."""
        return "".join(self.texts) + END if self.texts else ""


def _turn(line: bytes) -> str | None:
    try:
        r = json.loads(line)
    except ValueError:
        return None
    if not isinstance(r, dict):
        return None
    tag = TAGS.get(r.get("role"))
    return tag + r["text"] if tag and isinstance(r.get("text"), str) else None


def unreplayed(path: str, marks: list[dict] = (), everything: bool = False) -> LogSpan:
    """The turns of the log at `path` after the longest of `marks` that it starts with (all of
    them when none matches, or with `everything`; an empty span when the log does not exist)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return LogSpan(path, [], 0, 0, None, [])
    data = data[:data.rfind(b"\n") + 1]  # whole lines only
    view = memoryview(data)
    matched = [i for i, m in enumerate(marks) if m["bytes"] <= len(data)
               and hashlib.sha256(view[:m["bytes"]]).hexdigest() == m["sha256"]]
    best = max((marks[i] for i in matched), key=lambda m: m["bytes"], default=None)
    start, skipped = (best["bytes"], best["records"]) if best and not everything else (0, 0)
    lines = data[start:].splitlines()
    texts = [t for t in map(_turn, lines) if t is not None]
    mark = None
    if data:
        mark = {"log": os.path.abspath(path), "bytes": len(data), "records": skipped + len(lines),
                "sha256": hashlib.sha256(view).hexdigest()}
    return LogSpan(path, texts, len(lines), skipped, mark, matched)


def after_replay(marks: list[dict], span: LogSpan) -> list[dict]:
    """The marks once `span` is replayed: the ones it supersedes dropped, its own added last."""
    if span.mark is None:
        return list(marks)
    return [m for i, m in enumerate(marks) if i not in span.matched] + [span.mark]
