"""Text generation on top of the inference model: `bitttt.load`, streaming, live sessions.

    import bitttt
    m = bitttt.load("runs/default")                 # a run dir, a training checkpoint
    print(m.generate("Once upon a time", max_tokens=60, temperature=0.8, seed=1))
    for piece in m.stream("Once upon a time"):      # valid UTF-8 text pieces as they come
        print(piece, end="", flush=True)
    s = m.session()                                 # a live session: its TTT state is its memory
    s.feed("Tom has a red ball. ")
    s.generate("Tom", max_tokens=20); s.save_memory("tom.mem"); s.load_memory("tom.mem")
"""
from __future__ import annotations

import codecs
import json
import os
import time
from collections.abc import Iterator

from .formats.runs import resolve as _resolve  # a file as is; a run dir -> its best / newest intact checkpoint
from .sampling import Sampler, SamplingParams
from .session import InferenceModel, TTTState


def load(path: str) -> Model:
    """Load a model for generation: a packed model file (python -m bitttt.export), a training
    checkpoint, or a run directory."""
    p = _resolve(os.fspath(path))
    im = InferenceModel.from_file(p)
    if im.tokenizer is None:
        raise ValueError(f"{p}: the file carries no tokenizer, so it cannot generate text")
    return Model(im)


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
    """A live conversation with the model: everything fed or generated goes into its TTT state."""

    def __init__(self, model: Model, state: TTTState | None = None):
        self.model = model
        self.im = model.im
        self.state = state or self.im.new_state()
        self.history: list[int] = []
        self.pending: int | None = None  # the last sampled token, not yet fed
        self.last_logits = None
        self.stats = GenerationStats()

    # -- state -------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the trained initial state (forget everything read)."""
        self.state = self.im.new_state()
        self.history, self.pending, self.last_logits = [], None, None

    def save_memory(self, path: str, note: str = "") -> None:
        """Save the TTT state (atomic write), tagged with the model's identity."""
        self._flush()
        self.im.save_memory(self.state, path, note)

    def load_memory(self, path: str) -> None:
        """Replace the state by one saved from this model (MemoryFileError otherwise)."""
        self.state = self.im.load_memory(path)
        self.pending, self.last_logits = None, None

    def _flush(self) -> None:
        if self.pending is not None:  # a sampled token becomes part of the memory once it is read
            self.last_logits = self.im.feed(self.state, [self.pending])
            self.history.append(self.pending)
            self.pending = None

    def replay_log(self, log_path: str) -> int:
        """Feed every turn of a chat log (JSON lines {"role", "text"}) into the state, as one
        conversation ending with <|endoftext|>; returns the tokens read (0 without a log)."""
        if not os.path.exists(log_path):
            return 0
        text = []
        with open(log_path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                tag = {"user": "<|user|>", "assistant": "<|assistant|>", "system": "<|system|>"}.get(r.get("role"))
                if tag and isinstance(r.get("text"), str):
                    text.append(tag + r["text"])
        ids = self.im.tokenizer.encode("".join(text) + "<|endoftext|>") if text else []
        self.feed_ids(ids)
        return len(ids)

    # -- reading and writing -----------------------------------------------------------
    def feed_ids(self, ids: list[int]) -> None:
        """Read token ids into the state."""
        self._flush()
        if ids:
            t0 = time.perf_counter()
            self.last_logits = self.im.feed(self.state, ids)
            self.stats.prefill_s += time.perf_counter() - t0
            self.stats.prefill_tokens += len(ids)
            self.history.extend(ids)

    def feed(self, text: str) -> None:
        """Read text into the state (the model learns from it as it reads)."""
        self.feed_ids(self.im.tokenizer.encode(text))

    def stream(self, prompt: str = "", *, stop: list[str] | tuple[str, ...] = (), stop_ids: tuple[int, ...] = (),
               **sampling) -> Iterator[str]:
        """Feed `prompt`, then yield generated text pieces (always whole UTF-8 characters) until
        <|endoftext|> (or a token of `stop_ids`), a stop string (not included) or max_tokens.
        `sampling`: SamplingParams fields."""
        sp = SamplingParams(**sampling)
        sampler = Sampler(sp)
        self.stats = GenerationStats()
        self.stats.seed = sampler.seed_used
        tok = self.im.tokenizer
        if prompt:
            self.feed(prompt)
        self._flush()
        if self.last_logits is None:  # nothing read yet: start from a document boundary
            self.feed_ids([tok.eos_id])
        text_out = StopText(stop)
        t0 = time.perf_counter()
        self.stats.stopped_by = "max_tokens"
        try:
            for i in range(sp.max_tokens):
                if i:
                    self._flush()
                nxt = sampler(self.last_logits, self.history)
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

    def generate(self, prompt: str = "", **kw) -> str:
        """The whole text `stream` would yield."""
        return "".join(self.stream(prompt, **kw))


class Model:
    """A loaded model: `generate`, `stream`, `session` (see the module docstring)."""

    def __init__(self, im: InferenceModel):
        self.im = im
        self.config = im.config
        self.tokenizer = im.tokenizer

    def session(self) -> Session:
        return Session(self)

    def stream(self, prompt: str, **kw) -> Iterator[str]:
        """Text pieces of a continuation of `prompt` from a fresh state."""
        return Session(self).stream(prompt, **kw)

    def generate(self, prompt: str, **kw) -> str:
        """A continuation of `prompt` from a fresh state (keywords: SamplingParams fields, stop)."""
        return Session(self).generate(prompt, **kw)
