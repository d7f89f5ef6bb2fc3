"""Server counters and gauges, written as Prometheus text (GET /metrics)."""
from __future__ import annotations

import time
from collections import deque

PREFIX = "bitttt_"


class Metrics:
    """Counters (monotonic), rates over the last `window` seconds, and the scheduler's gauges.
    Written by the scheduler thread and the request handlers (plain ints under the GIL)."""

    def __init__(self, window: float = 10.0):
        self.window = window
        self.started = time.time()
        self.requests: dict[tuple[str, str], int] = {}   # (endpoint, status) -> count
        self.prompt_tokens = self.prompt_cached = self.prefill_tokens = self.completion_tokens = 0
        self.decode_steps = self.decode_batch_max = self.cancelled = self.decode_steps_batched = 0
        self.decode_batch_sum = 0
        self._decoded: deque = deque()    # (time, tokens) of recent decode steps
        self._prefilled: deque = deque()

    def request(self, endpoint: str, status: int) -> None:
        k = (endpoint, str(status))
        self.requests[k] = self.requests.get(k, 0) + 1

    def decoded(self, n: int, batched: bool = False) -> None:
        self.decode_steps += 1
        self.decode_steps_batched += int(batched)
        self.decode_batch_sum += n
        self.decode_batch_max = max(self.decode_batch_max, n)
        self._decoded.append((time.monotonic(), n))

    def prefilled(self, n: int) -> None:
        self.prefill_tokens += n
        self._prefilled.append((time.monotonic(), n))

    def _rate(self, q: deque) -> float:
        now = time.monotonic()
        while q and q[0][0] < now - self.window:  # the scheduler only appends; this side only drops
            q.popleft()
        return sum(n for _, n in list(q)) / self.window  # list(): a copy taken at once, under the GIL

    def text(self, gauges: dict[str, tuple[float, str]]) -> str:
        """Prometheus exposition text; `gauges`: name -> (value, help) read from the scheduler."""
        out = []

        def one(name, kind, help_, value, labels=""):
            out.append(f"# HELP {PREFIX}{name} {help_}")
            out.append(f"# TYPE {PREFIX}{name} {kind}")
            out.append(f"{PREFIX}{name}{labels} {value}")

        out.append(f"# HELP {PREFIX}requests_total HTTP requests answered, by endpoint and status")
        out.append(f"# TYPE {PREFIX}requests_total counter")
        for (ep, st), n in sorted(self.requests.items()):
            out.append(f'{PREFIX}requests_total{{endpoint="{ep}",status="{st}"}} {n}')
        one("prompt_tokens_total", "counter", "prompt tokens of generation requests", self.prompt_tokens)
        one("prompt_tokens_cached_total", "counter", "prompt tokens found already read in a session's memory",
            self.prompt_cached)
        one("prefill_tokens_total", "counter", "prompt tokens read into memories", self.prefill_tokens)
        one("completion_tokens_total", "counter", "tokens generated", self.completion_tokens)
        one("decode_steps_total", "counter", "decode steps (one token of every generating session)", self.decode_steps)
        one("decode_steps_batched_total", "counter", "decode steps run as one batched pass (BitLlama.step_batch)",
            self.decode_steps_batched)
        one("decode_batch_size_max", "gauge", "the largest batch of one decode step", self.decode_batch_max)
        one("decode_batch_size_mean", "gauge", "mean sessions per decode step",
            f"{self.decode_batch_sum / self.decode_steps:.3f}" if self.decode_steps else 0)
        one("decode_tokens_per_second", "gauge", f"decoded tokens per second over the last {self.window:g} s",
            f"{self._rate(self._decoded):.3f}")
        one("prefill_tokens_per_second", "gauge", f"prompt tokens read per second over the last {self.window:g} s",
            f"{self._rate(self._prefilled):.3f}")
        one("requests_cancelled_total", "counter", "generations stopped because the client went away", self.cancelled)
        for name, (value, help_) in gauges.items():
            one(name, "gauge", help_, value)
        one("uptime_seconds", "gauge", "seconds since the server started", f"{time.time() - self.started:.1f}")
        return "\n".join(out) + "\n"
