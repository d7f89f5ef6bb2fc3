"""Text generation on top of the inference model: `bitttt.load`, streaming, live sessions.

    import bitttt
    m = bitttt.load("runs/default")                 # a run dir, a training checkpoint
    print(m.generate("Once upon a time", max_tokens=60, temperature=0.8, seed=1))
    for piece in m.stream("Once upon a time"):      # valid UTF-8 text pieces as they come
        print(piece, end="", flush=True)
    s = m.session()                                 # a live session: its TTT state is its memory
    s.feed("Tom has a red ball. ")
    s.generate("Tom", max_tokens=20); s.save_memory("tom.mem"); s.load_memory("tom.mem")

A Session does one call at a time: a call made while another thread uses it, or while one of its
streams is suspended (iterated, neither finished nor closed), raises SessionBusyError at once.
"""
from __future__ import annotations

import codecs
import functools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np

from .chatlog import LogSpan, after_replay, unreplayed
from .formats.runs import resolve as _resolve  # a file as is; a run dir -> its best / newest intact checkpoint
from .layers.ttt import blend_toward
from .sampling import Sampler, SamplingParams
from .session import InferenceModel, TTTState

_MODELS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
SHIPPED_MODELS = {  # name -> file: the models that ship inside the package (bitttt/models/)
    "tinystories": os.path.join(_MODELS_DIR, "tinystories-ternary.safetensors"),
}


def load(path: str) -> Model:
    """Load a model for generation: a packed model file (python -m bitttt.export), a training
    checkpoint, a run directory, or the name of a shipped model ("tinystories")."""
    path = os.fspath(path)
    if path in SHIPPED_MODELS and not os.path.exists(path):
        path = SHIPPED_MODELS[path]
    p = _resolve(path)
    im = InferenceModel.from_file(p)
    if im.tokenizer is None:
        raise ValueError(f"{p}: the file carries no tokenizer, so it cannot generate text")
    return Model(im)


HISTORY_KEEP = 1 << 14  # ids a session keeps (16,384 to 32,767) for a repeat_last_n window


class SessionBusyError(RuntimeError):
    """A Session was called while another call (another thread, or a suspended stream) used it."""


def _exclusive(method):
    """A public Session method: holds the session's lock for the call (SessionBusyError when busy)."""
    @functools.wraps(method)
    def claimed(self, *args, **kw):
        self._claim()
        try:
            return method(self, *args, **kw)
        finally:
            self._busy.release()
    return claimed


class Replay(NamedTuple):
    """What Session.consolidate read: `tokens`, `records` (log lines new to the state), `skipped`
    (lines it had replayed before)."""

    tokens: int
    records: int
    skipped: int


def check_reset_every(reset_every: int, decay: float | None, has_memory: bool = True) -> tuple[int, float | None]:
    """(reset_every, decay) checked: reset_every a whole number >= 0, decay None or 0 <= decay < 1
    and only with reset_every and TTT layers; ValueError saying what is wrong."""
    if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 0:
        raise ValueError(f"reset_every (--reset-every N) must be a whole number >= 0 (0 = never), got {reset_every!r}")
    if decay is not None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"decay (--decay F) must be a number with 0 <= F < 1 (1 would be no decay), got {decay!r}")
        if not reset_every:
            raise ValueError("decay (--decay F) blends the state toward the trained one every N tokens: give "
                             "reset_every (--reset-every N) too")
        if not has_memory:
            raise ValueError("decay acts on the TTT state, and this model has attention layers only")
        decay = float(decay)
    return reset_every, decay


def decay_state(st, init, decay: float) -> None:
    """Blend state `st` toward `init` in place: each TTT layer's W0 and b0 become
    init + decay * (current - init), and the pending mini-batch's gradient sums (Gb, Sb) are
    scaled by decay, so the inner model every token reads is blended alike."""
    st, init = getattr(st, "ttt", st), getattr(init, "ttt", init)
    if st is None:
        return
    f = np.float32(decay)
    for a, a0 in ((st.W0, init.W0), (st.b0, init.b0)):
        blend_toward(a, a0, f)
    st.Gb *= f
    st.Sb *= f


class GenerationStats:
    """Token counts and seconds of the last generation (prefill = reading the prompt)."""

    def __init__(self):
        self.prefill_tokens = self.decode_tokens = 0
        self.prefill_s = self.decode_s = 0.0
        self.seed = None
        self.stopped_by = ""

    def __str__(self) -> str:
        pf = self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0
        dc = self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0
        return (f"prefill {self.prefill_tokens} tokens in {self.prefill_s:.3f} s ({pf:.1f} tokens/s), "
                f"decode {self.decode_tokens} tokens in {self.decode_s:.3f} s ({dc:.1f} tokens/s)")


class StopText:
    """Generated token bytes -> text pieces: whole UTF-8 characters only, cut before the first
    stop string (not included), holding back the tail that could still grow into one.

        st = StopText(["\n\n"]); piece = st.push(token_bytes)  # "" while held; st.stopped once cut
        tail = st.finish()                                       # what is held at the end"""

    def __init__(self, stops=()):
        self.stops = [s for s in stops if s]
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""
        self.stopped = False

    def push(self, data: bytes) -> str:
        """The text that can be shown now after `data` (the next token's bytes)."""
        if self.stopped:
            return ""
        text = self._held + self._dec.decode(data)
        cut = min((text.find(s) for s in self.stops if s in text), default=-1)
        if cut >= 0:
            self._held, self.stopped = "", True
            return text[:cut]
        # hold back the longest tail that could still grow into a stop string
        hold = max((n for s in self.stops for n in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:n])),
                   default=0)
        out, self._held = (text[:-hold], text[-hold:]) if hold else (text, "")
        return out

    def finish(self) -> str:
        """The held tail (and any incomplete UTF-8 bytes, replaced) once generation ends."""
        if self.stopped:
            return ""
        tail = self._held + self._dec.decode(b"", final=True)
        self._held = ""
        return tail


class Session:
    """A live conversation with the model: everything fed or generated goes into its TTT state.

    `history` holds the last ids read (HISTORY_KEEP to twice that, once more were read) for the
    repetition penalty: a repeat_last_n window longer than HISTORY_KEEP sees at least the last
    HISTORY_KEEP ids; -1 (every id) stays exact, through a mask of the ids dropped.  Memory is
    independent of how much was read.  One call at a time (see the module docstring).


    reset_every=N (0: never, the default) resets the state whenever it holds N tokens, before
    the next token is read, so that it never holds more; with `decay` (0 <= decay < 1) the state
    is instead blended toward the trained initial state each time its token count reaches a
    multiple of N: every TTT layer's inner weights and bias, and the pending mini-batch's
    gradient sums, become init + decay * (current - init) (decay 0 forgets the inner model but
    keeps counting tokens).  `slept`: the marks of the chat logs replayed into the state
    (bitttt.chatlog), kept in its memory file; `unsaved`: tokens read since the last save or load."""

    def __init__(self, model: Model, state: TTTState | None = None, *, reset_every: int = 0,
                 decay: float | None = None):
        self.model = model
        self.im = model.im
        self.reset_every, self.decay = check_reset_every(reset_every, decay, self.im.has_memory)
        self.state = state or self.im.new_state()
        self.history: list[int] = []
        self._dropped: np.ndarray | None = None  # bool [V]: ids dropped from history (for repeat_last_n -1)
        self.pending: int | None = None  # the last sampled token, not yet fed
        self.last_logits = None
        self.stats = GenerationStats()
        self.slept: list[dict] = []
        self.unsaved = 0
        self.resets = 0  # resets or decays done by reset_every
        self._init = None
        self._busy = threading.Lock()  # not an RLock: a stream may be resumed from another thread

    def _claim(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise SessionBusyError("this Session is in use by another thread or by a stream not yet finished: "
                                   "one call at a time (finish or close() the stream; one Session per thread)")

    def __repr__(self) -> str:
        return f"Session({self.state.n_tokens:,} tokens read, {self.im!r})"

    # -- state -------------------------------------------------------------------------
    @_exclusive
    def reset(self) -> None:
        """Back to the trained initial state (forget everything read, and what /sleep replayed)."""
        self.state = self.im.new_state()
        self.history, self._dropped, self.pending, self.last_logits = [], None, None, None
        self.slept = []

    @_exclusive
    def save_memory(self, path: str, note: str = "") -> None:
        """Save the TTT state (atomic write), tagged with the model's identity, with its slept marks."""
        self._flush()
        self.im.save_memory(self.state, path, note, slept=self.slept)
        self.unsaved = 0

    @_exclusive
    def load_memory(self, path: str) -> None:
        """Replace the state by one saved from this model (MemoryFileError otherwise)."""
        self.state, m = self.im.open_memory(path)
        self.slept = m.slept
        self.pending, self.last_logits = None, None
        self.unsaved = 0

    def _flush(self) -> None:
        if self.pending is not None:  # a sampled token becomes part of the memory once it is read
            self.last_logits = self._read([self.pending])
            self._remember([self.pending])
            self.pending = None

    def _remember(self, ids: list[int]) -> None:
        """Append ids to history, dropping the oldest past 2 * HISTORY_KEEP (marked in _dropped)."""
        self.history.extend(ids)
        if len(self.history) >= 2 * HISTORY_KEEP:
            if self._dropped is None:
                self._dropped = np.zeros(self.im.config.vocab_size, bool)
            self._dropped[np.asarray(self.history[:-HISTORY_KEEP], np.int64)] = True
            del self.history[:-HISTORY_KEEP]

    def _penalized(self, repeat_last_n: int) -> list[int]:
        """The ids the repetition penalty looks at (the sampler takes the window's last ids)."""
        if repeat_last_n == -1 and self._dropped is not None:
            return np.flatnonzero(self._dropped).tolist() + self.history
        return self.history

    def _read(self, ids) -> object:
        """im.feed in pieces that end where reset_every resets or decays the state -> the last logits."""
        n, i, logits = self.reset_every, 0, None
        while i < len(ids):
            take = len(ids) - i
            if n:
                held = self.state.n_tokens
                if self.decay is None and held >= n:
                    self.state = self.im.new_state()
                    self.resets += 1
                elif self.decay is not None and held and held % n == 0:
                    if self._init is None:  # the trained state, read only
                        self._init = self.im.new_state()
                    decay_state(self.state, self._init, self.decay)
                    self.resets += 1
                take = min(take, n - self.state.n_tokens % n)
            logits = self.im.feed(self.state, ids[i:i + take])
            self.unsaved += take
            i += take
        return logits

    @_exclusive
    def unreplayed(self, log_path: str) -> LogSpan:
        """The turns of a chat log that /sleep has not replayed into this state (bitttt.chatlog)."""
        return unreplayed(log_path, self.slept)

    @_exclusive
    def consolidate(self, log_path: str, only_new: bool = True) -> Replay:
        """Feed the turns of a chat log (JSON lines {"role", "text"}) that this state has not
        replayed before (every turn when only_new is False) into it, as one conversation ending
        with <|endoftext|>, and mark them replayed (`slept`, saved with the memory)."""
        return self._consolidate(log_path, only_new)

    def _consolidate(self, log_path: str, only_new: bool) -> Replay:
        if not self.im.has_memory:  # replaying into a KV cache would only fill the context
            raise ValueError("/sleep replays conversations into the TTT state; this model has attention layers only")
        span = unreplayed(log_path, self.slept, everything=not only_new)
        ids = self.im.tokenizer.encode(span.text) if span.texts else []
        self._feed_ids(ids)
        self.slept = after_replay(self.slept, span)
        return Replay(len(ids), span.records, span.skipped)

    @_exclusive
    def replay_log(self, log_path: str, only_new: bool = True) -> int:
        """consolidate(), returning the tokens read (0 when the log is missing or all replayed before)."""
        return self._consolidate(log_path, only_new).tokens

    # -- reading and writing -----------------------------------------------------------
    @_exclusive
    def feed_ids(self, ids: list[int]) -> None:
        """Read token ids into the state."""
        self._feed_ids(ids)

    def _feed_ids(self, ids: list[int]) -> None:
        self._flush()
        if ids:
            t0 = time.perf_counter()
            self.last_logits = self._read(ids)
            self.stats.prefill_s += time.perf_counter() - t0
            self.stats.prefill_tokens += len(ids)
            self._remember(ids)

    @_exclusive
    def feed(self, text: str | Iterable[str]) -> None:
        """Read text into the state (the model learns from it as it reads): a str, or text pieces
        tokenized one by one (bitttt.textstream.iter_text_pieces cuts a long text where that gives
        the ids of the whole)."""
        self._feed_text(text)

    def _feed_text(self, text: str | Iterable[str]) -> None:
        for piece in [text] if isinstance(text, str) else text:
            if piece:
                self._feed_ids(self.im.tokenizer.encode(piece))

    def stream(self, prompt: str | Iterable[str] = "", *, stop: list[str] | tuple[str, ...] = (),
               stop_ids: tuple[int, ...] = (), **sampling) -> Iterator[str]:
        """Feed `prompt` (a str, or text pieces as `feed` takes them), then yield generated text
        pieces (always whole UTF-8 characters) until <|endoftext|> (or a token of `stop_ids`), a
        stop string (not included) or max_tokens.  `sampling`: SamplingParams fields.  The session
        is held from the first piece asked for until the stream ends or is closed."""
        self._claim()
        try:
            yield from self._stream(prompt, stop, stop_ids, sampling)
        finally:
            self._busy.release()

    def _stream(self, prompt, stop, stop_ids, sampling) -> Iterator[str]:
        sp = SamplingParams(**sampling)
        sampler = Sampler(sp)
        self.stats = GenerationStats()
        self.stats.seed = sampler.seed_used
        tok = self.im.tokenizer
        self._feed_text(prompt)
        self._flush()
        if self.last_logits is None:  # nothing read yet: start from a document boundary
            self._feed_ids([tok.eos_id])
        text_out = StopText(stop)
        t0 = time.perf_counter()
        self.stats.stopped_by = "max_tokens"
        try:
            for i in range(sp.max_tokens):
                if i:
                    self._flush()
                nxt = sampler(self.last_logits, self._penalized(sp.repeat_last_n))
                self.stats.decode_tokens += 1
                if nxt == tok.eos_id or nxt in stop_ids:
                    self.pending = nxt
                    self.stats.stopped_by = "end of text" if nxt == tok.eos_id else "stop token"
                    break
                self.pending = nxt
                out = text_out.push(tok.token_bytes(nxt))
                if out:
                    yield out
                if text_out.stopped:
                    self.stats.stopped_by = "stop string"
                    return
            tail = text_out.finish()
            if tail:
                yield tail
        finally:
            self.stats.decode_s = time.perf_counter() - t0

    def generate(self, prompt: str | Iterable[str] = "", **kw) -> str:
        """The whole text `stream` would yield."""
        return "".join(self.stream(prompt, **kw))


class Model:
    """A loaded model: `generate`, `stream`, `session` (see the module docstring)."""

    def __init__(self, im: InferenceModel):
        self.im = im
        self.config = im.config
        self.tokenizer = im.tokenizer

    def __repr__(self) -> str:
        return f"Model({self.im!r})"

    def num_params(self) -> int:
        """Parameters of the model (every weight counted once, however it is stored)."""
        return self.im.num_params()

    def session(self, *, reset_every: int = 0, decay: float | None = None) -> Session:
        """A live session from the trained state (see Session: reset_every, decay)."""
        return Session(self, reset_every=reset_every, decay=decay)

    def stream(self, prompt: str, **kw) -> Iterator[str]:
        """Text pieces of a continuation of `prompt` from a fresh state."""
        return Session(self).stream(prompt, **kw)

    def generate(self, prompt: str, **kw) -> str:
        """A continuation of `prompt` from a fresh state (keywords: SamplingParams fields, stop)."""
        return Session(self).generate(prompt, **kw)
