"""AdamW with decoupled weight decay, gradient-norm clipping and the learning-rate schedule.

The step is the backend's `adamw` op (the backend of the parameters' dtype unless one is
given): on the cpu backend one C pass over p, g, m, v per tensor (src_c/optim.c), bit-identical
on every ISA and thread count; on the numpy backend the same formulas in float64.
"""
from __future__ import annotations

import math

import numpy as np

from .backend import for_dtype, resolve


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup from lr/warmup to lr over
    `warmup_steps`, then cosine decay to `min_lr` at `max_steps`, then `min_lr`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    span = max(1, max_steps - warmup_steps)
    frac = (step - warmup_steps) / span
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * frac))


def decays(name: str, shape: tuple[int, ...]) -> bool:
    """Weight decay applies to matrices only: tensors of 2+ dimensions, biases excluded
    (the TTT inner bias b1 [H, 1, f] and learnable_ttt_lr_bias)."""
    return len(shape) >= 2 and not name.endswith(("b1", "bias"))


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """sqrt(sum of squares) over every gradient, accumulated in double in a fixed order."""
    total = 0.0
    for g in grads.values():
        total += for_dtype(g.dtype).sumsq(g.reshape(-1))
    return math.sqrt(total)


class AdamW:
    """AdamW over a dict of parameters (updated in place).

    m, v: first and second moments, same names and shapes as the parameters (float32 for a
    float32 model).  `t` counts the steps taken (bias correction uses t after the increment).
    """

    def __init__(self, params: dict[str, np.ndarray], *, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, backend=None):
        b1, b2 = (float(b) for b in betas)
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"AdamW betas must be in [0, 1), got {betas}")
        if not (eps > 0 and math.isfinite(eps)):
            raise ValueError(f"AdamW eps must be a positive number, got {eps}")
        if not (weight_decay >= 0 and math.isfinite(weight_decay)):
            raise ValueError(f"AdamW weight_decay must be >= 0, got {weight_decay}")
        self.params = params
        first = next(iter(params.values()), None)
        self.backend = resolve(backend, None if backend is not None or first is None else first.dtype)
        self.beta1, self.beta2, self.eps, self.weight_decay = b1, b2, float(eps), float(weight_decay)
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads: dict[str, np.ndarray], lr: float, gscale: float = 1.0) -> None:
        """One update with gradients `grads` (same names as the parameters) multiplied by `gscale`."""
        self.t += 1
        bc1 = 1.0 - self.beta1 ** self.t
        bc2 = 1.0 - self.beta2 ** self.t
        for name, p in self.params.items():
            g = grads[name]
            if g.shape != p.shape:
                raise ValueError(f"gradient {name} has shape {g.shape}, parameter has {p.shape}")
            wd = self.weight_decay if decays(name, p.shape) else 0.0
            self.backend.adamw(p, g, self.m[name], self.v[name], lr, self.beta1, self.beta2, self.eps, wd, bc1, bc2,
                               gscale)

    # -- state ----------------------------------------------------------------------
    def state_tensors(self) -> dict[str, np.ndarray]:
        """Moments as tensors named `optim.m.<param>` and `optim.v.<param>`."""
        out = {}
        for k in self.params:
            out["optim.m." + k] = self.m[k]
            out["optim.v." + k] = self.v[k]
        return out

    def load_state_tensors(self, tensors: dict[str, np.ndarray], t: int) -> None:
        """Restore the moments (every parameter's m and v must be there, same shapes) and the step count."""
        for k, p in self.params.items():
            for kind, store in (("m", self.m), ("v", self.v)):
                name = f"optim.{kind}.{k}"
                if name not in tensors:
                    raise ValueError(f"optimizer state lacks {name}")
                a = tensors[name]
                if a.shape != p.shape:
                    raise ValueError(f"{name} has shape {a.shape}, parameter {k} has {p.shape}")
                store[k] = np.array(a, dtype=p.dtype, copy=True)
        self.t = int(t)
