"""The scheduler: one thread runs the model for every request, the event loop never does.

Each round it admits waiting requests into free slots (`parallel`), reads a chunk of every
pending prompt into its session, then decodes ONE token for every session that is generating
in one batched step (`BitLlama.step_batch`: each BitLinear is one int8 GEMM over the batch,
the weights read once) and samples each session's next token with its own sampler.  Events go
back to the request handlers through a thread-safe callback: ("start", info), ("text", piece,
token id), ("done", info) or ("error", APIError).  A cancelled job (the client went away) leaves at the
next round and frees its slot; its session keeps what it has read.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
import traceback
from collections import deque
from typing import Callable

from ..generation import StopText
from ..sampling import Sampler
from .errors import APIError
from .metrics import Metrics
from .schemas import GenRequest
from .sessions import SessionManager

DECODE_MODES = ("auto", "batched", "serial")


class Job:
    """One generation request on its way through the scheduler."""

    def __init__(self, req: GenRequest, prompt: list[int], stop_ids: frozenset, emit: Callable[[tuple], None]):
        self.req, self.prompt, self.stop_ids, self.emit = req, list(prompt), stop_ids, emit
        self.sampler = Sampler(req.sampling)
        self.text = StopText(req.stop)
        self.cancelled = False
        self.session = None
        self.cached = 0
        self.to_feed: list[int] = []
        self.pending: int | None = None     # the last sampled token, read at the next decode step
        self.generated: list[int] = []
        self.pieces: list[str] = []
        self.finish_reason: str | None = None

    def cancel(self) -> None:
        self.cancelled = True

    def _say(self, piece: str, token: int | None = None) -> None:
        if piece:
            self.pieces.append(piece)
        if piece or (token is not None and self.req.return_token_ids):
            self.emit(("text", piece, token))


class Scheduler:
    """Runs generation jobs on `im` (an InferenceModel with a tokenizer) in one thread."""

    def __init__(self, im, sessions: SessionManager, parallel: int = 8, prefill_chunk: int = 512,
                 metrics: Metrics | None = None, max_queue: int = 1024, decode: str = "auto"):
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got {decode!r}")
        self.decode_mode = decode
        self._cost: dict[tuple[str, int], float] = {}   # (mode, batch) -> seconds per step (moving average)
        self._steps = 0
        self.im, self.sessions, self.parallel, self.prefill_chunk = im, sessions, parallel, prefill_chunk
        self.metrics = metrics or Metrics()
        self.max_queue = max_queue
        self.tok = im.tokenizer
        self.vocab = im.tokenizer.vocab_size
        self.waiting: deque[Job] = deque()
        self.active: list[Job] = []
        self.calls: deque = deque()
        self.cv = threading.Condition()
        self._stop = False
        self.thread = threading.Thread(target=self._run, name="bitttt-scheduler", daemon=True)

    # -- the handlers' side ------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self.cv:
            self._stop = True
            self.cv.notify_all()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self.cv:
            if len(self.waiting) >= self.max_queue:
                raise APIError(503, f"the server is busy: {len(self.waiting)} requests are waiting", None,
                               "queue_full")
            self.waiting.append(job)
            self.cv.notify()

    def cancel(self, job: Job) -> None:
        job.cancel()
        with self.cv:
            self.cv.notify()

    def call(self, fn: Callable[[], object]) -> concurrent.futures.Future:
        """Run fn() on the scheduler thread between two rounds (session actions)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cv:
            self.calls.append((fn, fut))
            self.cv.notify()
        return fut

    def gauges(self) -> dict[str, tuple[float, str]]:
        return {"requests_active": (len(self.active), "requests holding a slot (reading or generating)"),
                "requests_queued": (len(self.waiting), "requests waiting for a slot"),
                "slots": (self.parallel, "slots (--parallel)"),
                "sessions_live": (len(self.sessions.live), "sessions whose memory is in RAM"),
                "sessions_spilled": (len(self.sessions.spilled), "sessions whose memory is in --sessions DIR"),
                "sessions_bytes": (self.sessions.nbytes, "bytes of live memories and their snapshots"),
                "sessions_budget_bytes": (self.sessions.budget, "the live memories' byte budget"),
                "sessions_evicted_total": (self.sessions.evicted, "sessions moved out of RAM")}

    # -- the scheduler's thread ----------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self.cv:
                while not (self.waiting or self.active or self.calls or self._stop):
                    self.cv.wait()
                if self._stop:
                    break
                calls = list(self.calls)
                self.calls.clear()
                admit = self._pick()
            for fn, fut in calls:
                try:
                    fut.set_result(fn())
                except BaseException as e:  # noqa: B036  (handed to the waiting handler)
                    fut.set_exception(e)
            try:
                for job in admit:
                    self._admit(job)
                self._prefill()
                self._decode()
            except Exception as e:  # a model error fails the jobs in flight, never the thread
                traceback.print_exc()
                err = APIError(500, f"the model failed: {type(e).__name__}: {e}", None, "model_error")
                for job in self.active:
                    if job.finish_reason is None:
                        job.finish_reason = "error"
                        job.emit(("error", err))
                        if job.session is not None:  # its state may be half-written: back to the start
                            self.sessions.reset(job.session)
            self._reap()
            time.sleep(0)  # let the event loop's thread take the GIL between two rounds
        for job in list(self.waiting) + self.active:
            job.emit(("error", APIError(503, "the server is shutting down", None, "shutting_down")))

    def _pick(self) -> list[Job]:
        """Waiting jobs that get a slot now (in order; a job whose named session is busy waits)."""
        admit, taken = [], {j.req.session_id for j in self.active if j.req.session_id}
        for job in list(self.waiting):
            if job.cancelled:
                self.waiting.remove(job)
                self.metrics.cancelled += 1
                continue
            if len(self.active) + len(admit) >= self.parallel:
                break
            sid = job.req.session_id
            if sid is not None and (sid in taken or self.sessions.busy(sid)):
                continue
            self.waiting.remove(job)
            admit.append(job)
            if sid is not None:
                taken.add(sid)
        return admit

    def _admit(self, job: Job) -> None:
        self.active.append(job)
        try:
            s, cached = self.sessions.acquire(job.req.session_id, job.prompt)
        except APIError as e:
            job.finish_reason = "error"
            job.emit(("error", e))
            return
        job.session, job.cached = s, cached
        job.to_feed = job.prompt[cached:]
        self.metrics.prompt_tokens += len(job.prompt)
        self.metrics.prompt_cached += cached
        job.emit(("start", {"session_id": s.id, "prompt_tokens": len(job.prompt), "cached_tokens": cached,
                            "seed": job.sampler.seed_used}))
        if not job.to_feed:
            self._sample(job, s.logits)

    def _prefill(self) -> None:
        for job in self.active:
            if job.cancelled or job.finish_reason or not job.to_feed:
                continue
            s = job.session
            chunk, job.to_feed = job.to_feed[: self.prefill_chunk], job.to_feed[self.prefill_chunk:]
            s.logits = self.im.feed(s.state, chunk)
            s.ids.extend(chunk)
            self.metrics.prefilled(len(chunk))
            if not job.to_feed:
                s.snapshot(self.sessions.max_snapshots)  # the state after this prompt: a regenerated turn starts here
                self._sample(job, s.logits)

    def _decode(self) -> None:
        batch = [j for j in self.active if j.pending is not None and not j.cancelled and j.finish_reason is None]
        if not batch:
            return
        states = [j.session.state for j in batch]
        toks = [j.pending for j in batch]
        mode = self._choose(len(batch))
        t0 = time.perf_counter()
        if mode == "serial":  # the fused one-token decoder, session after session
            logits = [self.im.model.step(st, t) for st, t in zip(states, toks)]
        else:
            logits = self.im.model.step_batch(states, toks)
        dt = time.perf_counter() - t0
        key = (mode, len(batch))
        self._cost[key] = dt if key not in self._cost else 0.8 * self._cost[key] + 0.2 * dt
        self.metrics.decoded(len(batch), mode == "batched")
        for i, job in enumerate(batch):
            s = job.session
            s.ids.append(job.pending)
            s.logits = logits[i].copy()
            job.pending = None
            self._sample(job, s.logits)

    def _choose(self, b: int) -> str:
        """batched (one pass over the weights) or serial (b fused one-token steps): the same bits
        either way, so `auto` takes whichever has been faster at this batch size on this model
        and machine (small models: serial wins on Python overhead; large ones: batched), trying
        the other one now and then."""
        if b == 1:
            return "serial"
        if self.decode_mode != "auto":
            return self.decode_mode
        tb, ts = self._cost.get(("batched", b)), self._cost.get(("serial", b))
        if tb is None:
            return "batched"
        if ts is None:
            return "serial"
        self._steps += 1
        best, other = ("batched", "serial") if tb <= ts else ("serial", "batched")
        return other if self._steps % 64 == 0 else best

    def _sample(self, job: Job, logits) -> None:
        nxt = job.sampler(logits, job.session.ids)
        job.generated.append(nxt)
        self.metrics.completion_tokens += 1
        if (nxt == self.tok.eos_id and not job.req.ignore_eos) or nxt in job.stop_ids:
            job.finish_reason = "stop"
            return
        # ids past the tokenizer's (a benchmark model's random head) have no text
        job._say(job.text.push(self.tok.token_bytes(nxt) if nxt < self.vocab else b""), nxt)
        if job.text.stopped:
            job.finish_reason = "stop"
        elif len(job.generated) >= job.req.sampling.max_tokens:
            job.finish_reason = "length"
        else:
            job.pending = nxt

    def _reap(self) -> None:
        keep = []
        for job in self.active:
            if job.cancelled and job.finish_reason is None:
                self.metrics.cancelled += 1
                job.finish_reason = "cancelled"
            if job.finish_reason is None:
                keep.append(job)
                continue
            s = job.session
            done = self._finish(job) if s is not None and job.finish_reason in ("stop", "length") else None
            if s is not None:
                self.sessions.release(s)  # may spill it: done once the memory file is written
            if done is not None:
                job.emit(("done", done))
        self.active = keep

    def _finish(self, job: Job) -> dict:
        job._say(job.text.finish())
        s, text = job.session, "".join(job.pieces)
        s.snapshot(self.sessions.max_snapshots)  # the state after this reply: an edit of the next turn starts here
        if job.req.kind == "chat":
            s.turns = list(job.req.messages) + [("assistant", text)]
            ids = self._reply_ids(job, text)
            if ids is not None:
                self.sessions.remember_reply(text, ids)
        return {"finish_reason": job.finish_reason, "completion_tokens": len(job.generated),
                "prompt_tokens": len(job.prompt), "cached_tokens": job.cached, "session_id": s.id, "text": text,
                "time": time.time()}

    def _reply_ids(self, job: Job, text: str) -> list[int] | None:
        """The generated ids whose text is exactly the reply (the terminator left out)."""
        gen = job.generated
        if any(t >= self.vocab for t in gen):
            return None
        if job.finish_reason == "stop" and not job.text.stopped:
            gen = gen[:-1]  # end of text or a role tag: not part of the reply
        if self.tok.decode(gen) == text:
            return gen
        for k in range(len(gen) - 1, max(-1, len(gen) - 64), -1):  # a stop string cut the last tokens
            if self.tok.decode(gen[:k]) == text:
                return gen[:k]
        return None
