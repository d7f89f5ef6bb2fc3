"""Token sampling: greedy, temperature, top-k, top-p, min-p and a windowed repetition penalty.

Order (as llama.cpp applies them): repetition penalty on the last `repeat_last_n` tokens,
then top-k, top-p, min-p on the tempered distribution, then a draw.  temperature 0 is greedy.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np


@dataclass
class SamplingParams:
    """temperature >= 0 (0: greedy); top_k >= 0 (0: off); 0 < top_p <= 1; 0 <= min_p < 1;
    repeat_penalty > 0 (1: off) over the last repeat_last_n tokens (0: off, -1: all);
    seed -1 draws a random seed (see .seed_used); max_tokens >= 0."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    seed: int = -1
    max_tokens: int = 256

    def validate(self) -> None:
        def num(name, ok, what):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
                raise ValueError(f"{name} must be {what}, got {v!r}")

        num("temperature", lambda v: v >= 0, "a number >= 0 (0 for greedy)")
        num("top_p", lambda v: 0 < v <= 1, "in (0, 1]")
        num("min_p", lambda v: 0 <= v < 1, "in [0, 1)")
        num("repeat_penalty", lambda v: v > 0, "a number > 0 (1 turns it off)")
        for name, lo in (("top_k", 0), ("repeat_last_n", -1), ("seed", -1), ("max_tokens", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")


class Sampler:
    """Draws tokens from logits with SamplingParams; the generator is seeded once."""

    def __init__(self, params: SamplingParams):
        params.validate()
        self.params = params
        self.seed_used = secrets.randbits(31) if params.seed == -1 else int(params.seed)
        self.rng = np.random.default_rng(self.seed_used)

    def __call__(self, logits: np.ndarray, history: list[int]) -> int:
        """logits [V] -> a token id; `history` the ids read so far (for the repetition penalty)."""
        sp = self.params
        z = np.array(logits, dtype=np.float64)
        if sp.repeat_penalty != 1.0 and sp.repeat_last_n != 0 and history:
            recent = history if sp.repeat_last_n == -1 else history[-sp.repeat_last_n:]
            ids = np.unique(np.asarray(recent, dtype=np.int64))
            ids = ids[(ids >= 0) & (ids < z.size)]
            v = z[ids]
            z[ids] = np.where(v > 0, v / sp.repeat_penalty, v * sp.repeat_penalty)
        if sp.temperature == 0:
            return int(np.argmax(z))
        z = z / sp.temperature
        order = np.argsort(-z, kind="stable")
        if sp.top_k > 0:
            order = order[: sp.top_k]
        zs = z[order]
        p = np.exp(zs - zs[0])
        p /= p.sum()
        if sp.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), sp.top_p) + 1)
            order, p = order[:keep], p[:keep]
        if sp.min_p > 0:
            keep = p >= sp.min_p * p[0]
            order, p = order[keep], p[keep]
        p = p / p.sum()
        return int(order[self.rng.choice(p.size, p=p)])
