"""Memory-mapped token data (the output of `python -m bitttt.data prepare`) and batches for training.

    data = TokenData("data/tiny", "train")
    data.check_tokenizer(tokenizer.sha256)
    batches = Batches(data, batch_size=16, seq_len=256, seed=0)
    streams = Streams(data, batch_size=4, seq_len=1024, seed=0)   # consecutive windows (streaming training)
    x, y, m = batches.next()     # x, y: [B, T] int64; m: [B, T] float32 or None
    saved = batches.state()      # resume later with batches.load_state(saved)

Bits per byte of a split: ``loss_nats * data.n_tokens / (math.log(2) * data.n_bytes)`` where loss_nats is the
mean loss per token over the whole split (`n_bytes` is the UTF-8 size of the split's source text).
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from ..formats.errors import TokenFileError
from ..formats.validate import safe_json
from .layout import FORMAT, FORMAT_VERSION, MANIFEST, SPLITS

_SCAN_TOKENS = 1 << 24  # ids checked per chunk when scanning a split


class TokenData:
    """One split of a prepared data folder, memory-mapped: `tokens` [N] uint16/uint32, `mask` [N] uint8 or None."""

    def __init__(self, path: str | os.PathLike, split: str = "train", *, check_ids: bool = True) -> None:
        """Open `path`/manifest.json and `{split}.bin` (+ `{split}.mask`); verify sizes and (unless
        `check_ids` is False) that every id is below the vocabulary size."""
        self.path = os.fspath(path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.split = split
        manifest_path = os.path.join(self.path, MANIFEST)
        try:
            with open(manifest_path, "rb") as f:
                manifest = safe_json(f.read(1 << 20), f"{manifest_path}", TokenFileError)
        except FileNotFoundError:
            raise TokenFileError(f"{manifest_path} not found: prepare the data first "
                                 "(python -m bitttt.data prepare INPUT... --out DIR)") from None
        except IsADirectoryError:
            raise TokenFileError(f"{manifest_path} is a directory, not a token manifest") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise TokenFileError(f"{manifest_path} is not a bitttt token manifest")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise TokenFileError(f"{manifest_path} has format version {version}, this bitttt reads version "
                                 f"{FORMAT_VERSION}: prepare the data again with this version")
        try:
            info = manifest["splits"][split]
            self.vocab_size = int(manifest["tokenizer"]["vocab_size"])
            self.tokenizer_sha256 = str(manifest["tokenizer"]["sha256"])
            if manifest["dtype"] not in ("uint16", "uint32"):
                raise TokenFileError(f"field 'dtype' is {manifest['dtype']!r}, must be uint16 or uint32")
            dtype = np.dtype(manifest["dtype"]).newbyteorder("<")
            n = info["tokens"]
            if type(n) is not int or n < 0:
                raise TokenFileError(f"field 'splits.{split}.tokens' is {n!r}, must be a non-negative integer")
            if not isinstance(info["file"], str) or os.path.basename(info["file"]) != info["file"]:
                raise TokenFileError(f"field 'splits.{split}.file' is {info['file']!r}, must be a file name")
            self.n_documents = int(info.get("documents", 0))
            self.n_bytes = int(info.get("bytes", 0))
        except TokenFileError as e:
            raise TokenFileError(f"{manifest_path}: {e}: prepare the data again") from None
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise TokenFileError(f"{manifest_path} is incomplete or damaged ({e!r}): prepare the data again") from None
        self.manifest = manifest
        self.n_tokens = n
        self.tokens = _open_array(os.path.join(self.path, info["file"]), dtype, n, "token")
        self.mask = None
        if info.get("mask_file"):
            if not isinstance(info["mask_file"], str) or os.path.basename(info["mask_file"]) != info["mask_file"]:
                raise TokenFileError(f"{manifest_path}: field 'splits.{split}.mask_file' must be a file name")
            self.mask = _open_array(os.path.join(self.path, info["mask_file"]), np.dtype(np.uint8), n, "mask")
        if check_ids:
            self._check_ids()

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"TokenData({self.path!r}, split={self.split!r}, tokens={self.n_tokens}, "
                f"vocab_size={self.vocab_size}, mask={self.mask is not None})")

    def _check_ids(self) -> None:
        for start in range(0, self.n_tokens, _SCAN_TOKENS):
            chunk = self.tokens[start:start + _SCAN_TOKENS]
            if chunk.max() >= self.vocab_size:
                pos = start + int(np.argmax(chunk >= self.vocab_size))
                raise TokenFileError(f"{self.path}/{self.split}.bin: token id {int(self.tokens[pos])} "
                                     f"at position {pos} "
                                 f"out of range for vocab {self.vocab_size}: the file is damaged or was made with "
                                 "another tokenizer; prepare the data again")
            if self.mask is not None:
                m = self.mask[start:start + _SCAN_TOKENS]
                if m.max() > 1:
                    pos = start + int(np.argmax(m > 1))
                    raise TokenFileError(f"{self.path}/{self.split}.mask: value {int(self.mask[pos])} at {pos} "
                                     "is not 0 or 1: the file is damaged; prepare the data again")

    def check_tokenizer(self, sha256: str) -> None:
        """Raise ValueError unless the data was made with the tokenizer whose `Tokenizer.sha256` is `sha256`."""
        if sha256 != self.tokenizer_sha256:
            raise ValueError(
                f"{self.path} was prepared with tokenizer {self.tokenizer_sha256[:12]}, but the model uses "
                f"{sha256[:12]}: re-run prepare with this tokenizer (--tokenizer PATH)"
            )

    def iter_eval(self, batch_size: int, seq_len: int, max_batches: int | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Sequential, non-overlapping windows for evaluation: (x, y, m) with x, y [b, T] int64, m [b, T] float32.

        Window k holds x = tokens[kT : kT+T] and y = tokens[kT+1 : kT+T+1], so every token after the first is a
        target exactly once (the tail that does not fill a window is left out). b = batch_size except in the
        last batch, which may hold fewer windows.
        """
        _check_sizes(batch_size, seq_len)
        n_windows = (self.n_tokens - 1) // seq_len
        if n_windows < 1:
            raise ValueError(_too_short(self, seq_len))
        done = 0
        for first in range(0, n_windows, batch_size):
            if max_batches is not None and done >= max_batches:
                return
            count = min(batch_size, n_windows - first)
            starts = (first + np.arange(count, dtype=np.int64)) * seq_len
            yield _gather(self, starts, seq_len)
            done += 1


class Batches:
    """Random training windows of a `TokenData`, reproducible from (seed, batch index) alone.

    Batch i takes its B window starts from ``np.random.default_rng([seed, i])``: resuming needs only `state()`.
    """

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int = 0) -> None:
        _check_sizes(batch_size, seq_len)
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if data.n_tokens < seq_len + 1:
            raise ValueError(_too_short(data, seq_len))
        self.data = data
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.seed = int(seed)
        self.index = 0

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(x, y, m): x [B, T] int64 windows, y [B, T] int64 the next tokens, m [B, T] float32 mask of y or None."""
        rng = np.random.default_rng([self.seed, self.index])
        starts = rng.integers(0, self.data.n_tokens - self.seq_len, size=self.batch_size, dtype=np.int64)
        self.index += 1
        return _gather(self.data, starts, self.seq_len)

    __next__ = next

    def __iter__(self) -> Batches:
        return self

    def state(self) -> dict:
        """{"seed": int, "index": int}: the position in the stream of batches."""
        return {"seed": self.seed, "index": self.index}

    def load_state(self, state: dict) -> None:
        """Continue from a `state()`; the next batch is the one that followed it."""
        try:
            seed, index = int(state["seed"]), int(state["index"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"not a Batches state: {state!r} (expected {{'seed': int, 'index': int}})") from None
        if seed < 0 or index < 0:
            raise ValueError(f"not a Batches state: {state!r} (seed and index must be >= 0)")
        self.seed, self.index = seed, index


class Streams:
    """Consecutive windows for streaming (stateful) training: `groups` x `batch_size` streams, each
    reading the text window after window, so that a TTT state carried from one window to the next
    has read everything before it in its stream.

    The text is cut into nw = (N - 1) // seq_len - 1 windows; stream s (of S = groups x batch_size)
    starts at window (shift + s * nw // S) mod nw, shift drawn from `seed`.  Call i gives group
    g = i mod groups its window number n = i // groups: x = window (start_s + n) mod nw of each of
    its streams, cut at an offset in [0, seq_len) drawn for each pass over the text (pass 0: 0),
    so that the passes do not repeat the same windows.  `fresh` [batch_size] bool (set by each
    call) marks streams whose window does not follow the one they read before (n = 0, or the wrap
    from the last window of the text to the first) or that start a new span of their stream:
    their state must start anew.

    `periods` [S] (windows, >= 1; default all "never"): stream s restarts its state every periods[s]
    windows (fresh when n % periods[s] == 0), so that training sees states of every age from 0 to
    the longest period (see `geometric_periods`).  Resuming needs only `state()`.
    """

    def __init__(self, data: TokenData, batch_size: int, seq_len: int, seed: int = 0, groups: int = 1,
                 periods: np.ndarray | None = None) -> None:
        _check_sizes(batch_size, seq_len)
        if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
            raise ValueError(f"groups must be a positive integer, got {groups!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        nw = (data.n_tokens - 1) // seq_len
        if nw < 1:
            raise ValueError(_too_short(data, seq_len))
        self.shifted = nw > 1  # each pass over the text cuts its windows at another offset
        if self.shifted:
            nw -= 1
        self.data, self.batch_size, self.seq_len, self.groups = data, batch_size, seq_len, int(groups)
        self.seed, self.index, self.n_windows = int(seed), 0, nw
        n_streams = batch_size * self.groups
        shift = int(np.random.default_rng([self.seed, 0x5742]).integers(0, nw))
        self.first = (shift + np.arange(n_streams, dtype=np.int64) * nw // n_streams) % nw
        self.periods = None
        if periods is not None:
            self.periods = np.asarray(periods, dtype=np.int64)
            if self.periods.shape != (n_streams,) or (self.periods < 1).any():
                raise ValueError(f"periods must hold {n_streams} whole numbers >= 1 (one per stream), "
                                 f"got {periods!r}")
        self.fresh = np.ones(batch_size, dtype=bool)
        self.group = 0
        self._offsets: dict[int, int] = {}

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(x, y, m) as Batches.next() gives them, for the next group; sets `fresh` and `group`."""
        g, n = self.index % self.groups, self.index // self.groups
        rows = self.first[g * self.batch_size:(g + 1) * self.batch_size]
        a = rows + n
        w = a % self.n_windows
        self.fresh = (w == 0) | (n == 0)
        starts = w * self.seq_len
        if self.shifted:  # pass p over the text starts its windows at offset(p) in [0, seq_len)
            starts = starts + np.array([self._offset(int(p)) for p in a // self.n_windows], dtype=np.int64)
        if self.periods is not None:
            self.fresh |= n % self.periods[g * self.batch_size:(g + 1) * self.batch_size] == 0
        self.group = g
        self.index += 1
        return _gather(self.data, starts, self.seq_len)

    def _offset(self, p: int) -> int:
        """Where pass p over the text starts its windows (pass 0: at 0), drawn once per pass."""
        if p not in self._offsets:
            self._offsets[p] = 0 if p == 0 else int(np.random.default_rng([self.seed, 0x5EED, p]).integers(
                0, self.seq_len))
        return self._offsets[p]

    __next__ = next

    def __iter__(self) -> Streams:
        return self

    def state(self) -> dict:
        """{"seed": int, "index": int}: the position in the streams."""
        return {"seed": self.seed, "index": self.index}

    def load_state(self, state: dict) -> None:
        """Continue from a `state()`."""
        Batches.load_state(self, state)  # the same two fields, checked the same way


def geometric_periods(n_streams: int, seq_len: int, max_len: int) -> np.ndarray:
    """Restart periods (in windows) spread geometrically from 1 window to max_len tokens over
    n_streams streams: stream s restarts every round((max_len / seq_len) ** (s / (S - 1))) windows,
    so stream 0 always starts fresh and the last carries its state over max_len tokens."""
    top = max(1.0, max_len / seq_len)
    if n_streams == 1:
        return np.array([max(1, round(top))], dtype=np.int64)
    return np.maximum(1, np.round(top ** (np.arange(n_streams) / (n_streams - 1)))).astype(np.int64)


def _gather(data: TokenData, starts: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    idx = starts[:, None] + np.arange(seq_len + 1, dtype=np.int64)
    w = np.asarray(data.tokens[idx], dtype=np.int64)
    m = None
    if data.mask is not None:
        m = np.asarray(data.mask[idx[:, 1:]], dtype=np.float32)
    return np.ascontiguousarray(w[:, :-1]), np.ascontiguousarray(w[:, 1:]), m


def _check_sizes(batch_size: int, seq_len: int) -> None:
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


def _too_short(data: TokenData, seq_len: int) -> str:
    return (f"{data.path} split {data.split!r} has {data.n_tokens} tokens, too few for seq_len={seq_len} "
            f"(a window needs seq_len + 1 = {seq_len + 1}): use a shorter seq_len or more text")


def _open_array(path: str, dtype: np.dtype, n: int, what: str) -> np.ndarray:
    """Read-only memmap of `n` items of `dtype` at `path`, after checking the file size."""
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise TokenFileError(f"{what} file not found: {path}: prepare the data again") from None
    expected = n * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than expected"
        raise TokenFileError(f"{path} is {state}: {size} bytes, but the manifest says {n} tokens x {dtype.itemsize} "
                         f"bytes = {expected}; prepare the data again")
    if n == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))
