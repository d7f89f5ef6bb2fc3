"""Loss by position: next-token losses of a long read grouped by where they fall in the text.

The position of a loss is its index among the scored tokens of the continuous text: the loss of
stream token i + 1 (predicted after reading tokens 0..i) has position i, whatever resets the
read made.  A read reset every N tokens and a continuous read of the same tokens therefore put
the same tokens in each bucket.  Default buckets start at 0 and grow by 4 from 256:
0-256, 256-1k, 1k-4k, 4k-16k, 16k-64k, 64k-256k, ...

    from bitttt.positions import loss_by_position
    r = loss_by_position(model, ids, reset_every=256)   # ids: token ids, or an iterable of pieces
    r["loss"], r["buckets"][0]["loss"], r["curve"]

Memory is bounded: sums per bucket and per curve bin, never the per-token losses (unless
per_token=True asks for them).
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np

FIRST_EDGE = 256  # the first bucket's end; each next bucket is 4 times longer
GROWTH = 4
# the smoothed curve: bins of log2(1 + position / CURVE_SCALE) * CURVE_BINS_PER_DOUBLING, about
# 23 tokens wide at the start and 1/11 of the position far out
CURVE_SCALE = 256
CURVE_BINS_PER_DOUBLING = 8
_SUFFIX = {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}


def default_edges(n_tokens: int) -> list[int]:
    """Bucket boundaries [0, 256, 1024, ...] up to the first one >= n_tokens (at least [0, 256])."""
    edges = [0, FIRST_EDGE]
    while edges[-1] < n_tokens:
        edges.append(edges[-1] * GROWTH)
    return edges


def parse_buckets(text: str) -> list[int]:
    """Bucket boundaries from '256,1k,4k' (k = 1024, M = 1024**2): [0, 256, 1024, 4096].
    The last bucket runs from the last boundary to the end of the text.  ValueError when a value
    is not a positive whole number or the list does not increase."""
    edges = [0]
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)\s*", part)
        if not m:
            raise ValueError(f"--buckets: {part.strip()!r} is not a token count (256, 1k, 4k, 1M ...)")
        v = int(m.group(1)) * _SUFFIX[m.group(2).lower()]
        if v <= edges[-1]:
            raise ValueError(f"--buckets must be positive and increasing, got {text!r}")
        edges.append(v)
    return edges


def label(start: int, end: int | None) -> str:
    """'0-256', '1k-4k', '64k-256k', '1M-4M'; '4k-' for an open end."""
    return f"{_short(start)}-{'' if end is None else _short(end)}"


def _short(v: int) -> str:
    for suffix, unit in (("G", 1024 ** 3), ("M", 1024 ** 2), ("k", 1024)):
        if v >= unit and v % unit == 0:
            return f"{v // unit}{suffix}"
    return str(v)


def curve_bin(positions: np.ndarray) -> np.ndarray:
    """Smoothed-curve bin of each position (int64 [n]): log-spaced, wider the further into the text."""
    p = np.asarray(positions, dtype=np.float64)
    return np.floor(np.log2(1.0 + p / CURVE_SCALE) * CURVE_BINS_PER_DOUBLING).astype(np.int64)


class PositionStats:
    """Running sums of losses by position: whole text (summed as InferenceModel.score sums), per
    bucket of `edges` (the last bucket open-ended) and per curve bin.  add() the loss arrays of a
    read in order; result() gives the dict loss_by_position returns."""

    def __init__(self, edges: Sequence[int], per_token: bool = False) -> None:
        edges = [int(e) for e in edges]
        if not edges or edges[0] != 0 or any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"bucket edges must start at 0 and increase, got {edges}")
        self.edges = edges
        self.total, self.n = 0.0, 0
        self.bucket_sum = np.zeros(len(edges), np.float64)
        self.bucket_n = np.zeros(len(edges), np.int64)
        self.curve_sum = np.zeros(0, np.float64)
        self.curve_pos = np.zeros(0, np.float64)  # sum of positions, for each bin's mean position
        self.curve_n = np.zeros(0, np.int64)
        self._tokens: list[np.ndarray] | None = [] if per_token else None

    def add(self, losses: np.ndarray) -> None:
        """The losses (nats [n]) of the next n positions."""
        losses = np.asarray(losses, dtype=np.float64).reshape(-1)
        pos = np.arange(self.n, self.n + len(losses))
        self.total += float(losses.sum())
        b = np.searchsorted(self.edges, pos, side="right") - 1
        self.bucket_sum += np.bincount(b, losses, minlength=len(self.edges))
        self.bucket_n += np.bincount(b, minlength=len(self.edges))
        c = curve_bin(pos)
        size = int(c[-1]) + 1 if len(c) else 0
        if size > len(self.curve_n):
            grow = size - len(self.curve_n)
            self.curve_sum = np.concatenate([self.curve_sum, np.zeros(grow)])
            self.curve_pos = np.concatenate([self.curve_pos, np.zeros(grow)])
            self.curve_n = np.concatenate([self.curve_n, np.zeros(grow, np.int64)])
        self.curve_sum[:size] += np.bincount(c, losses, minlength=size)
        self.curve_pos[:size] += np.bincount(c, pos.astype(np.float64), minlength=size)
        self.curve_n[:size] += np.bincount(c, minlength=size)
        self.n += len(losses)
        if self._tokens is not None:
            self._tokens.append(losses)

    def result(self) -> dict:
        """{"tokens", "total_nats", "loss" (nats/token; nan when empty), "buckets": [{"start", "end"
        (exclusive; the text's end for the last), "label", "tokens", "loss"}] (empty buckets left out),
        "curve": [[mean position, mean loss, tokens]] per non-empty bin} (+ "losses" [n] with per_token)."""
        buckets = []
        for i, start in enumerate(self.edges):
            if self.bucket_n[i] == 0:
                continue
            end = self.edges[i + 1] if i + 1 < len(self.edges) else None
            buckets.append({"start": start, "end": min(end, self.n) if end is not None else self.n,
                            "label": label(start, end), "tokens": int(self.bucket_n[i]),
                            "loss": float(self.bucket_sum[i] / self.bucket_n[i])})
        nz = np.nonzero(self.curve_n)[0]
        curve = [[float(self.curve_pos[i] / self.curve_n[i]), float(self.curve_sum[i] / self.curve_n[i]),
                  int(self.curve_n[i])] for i in nz]
        out = {"tokens": self.n, "total_nats": self.total, "loss": self.total / self.n if self.n else math.nan,
               "buckets": buckets, "curve": curve}
        if self._tokens is not None:
            out["losses"] = np.concatenate(self._tokens) if self._tokens else np.zeros(0)
        return out


def as_pieces(ids) -> Iterable[Sequence[int]]:
    """`ids` as an iterable of pieces: a flat sequence of ints (list, tuple, 1-D array) is one piece;
    anything else is taken as an iterable of pieces already."""
    if isinstance(ids, np.ndarray):
        return [ids.reshape(-1)]
    if isinstance(ids, (list, tuple)) and (not ids or isinstance(ids[0], (int, np.integer))):
        return [ids]
    return ids


def loss_by_position(model, ids, reset_every: int = 0, buckets: Sequence[int] | None = None, *,
                     per_token: bool = False, chunk: int = 512) -> dict:
    """Next-token loss of the token stream `ids` by position bucket, the TTT state reset every
    `reset_every` tokens (0: a continuous read).  `model`: an InferenceModel or what bitttt.load
    returns; `ids`: token ids (the first is only read: start a text with <|endoftext|>) or an
    iterable of pieces of them (read one at a time: bounded memory); `buckets`: edges [0, e1, ...]
    (default: default_edges, growing to cover the text).  -> PositionStats.result() plus
    "reset_every" (the interval used: a model with attention layers resets at least every
    max_position_embeddings tokens).  "total_nats" and "tokens" are bit-identical to
    InferenceModel.score(ids, reset_every, chunk)."""
    im = getattr(model, "im", model)
    stats = PositionStats(buckets if buckets is not None else [0, FIRST_EDGE], per_token)
    for losses in im.token_losses(as_pieces(ids), reset_every, chunk):
        if buckets is None:  # default edges grow with the text
            need = default_edges(stats.n + len(losses))
            if len(need) > len(stats.edges):
                _grow_edges(stats, need)
        stats.add(losses)
    out = stats.result()
    out["reset_every"] = im.reset_interval(reset_every)
    return out


def _grow_edges(stats: PositionStats, edges: list[int]) -> None:
    """Extend the default edges of `stats` (the old ones a prefix of the new: sums stay valid)."""
    extra = len(edges) - len(stats.edges)
    stats.edges = edges
    stats.bucket_sum = np.concatenate([stats.bucket_sum, np.zeros(extra)])
    stats.bucket_n = np.concatenate([stats.bucket_n, np.zeros(extra, np.int64)])
