"""Finite-difference gradient checks in float64 (test helper)."""
import numpy as np


def numeric_grad(f, v, idx, h=1e-4):
    """Five-point central difference of scalar f() in v[idx] (v is changed in place and restored)."""
    old = v[idx]
    vals = []
    for step in (2, 1, -1, -2):
        v[idx] = old + step * h
        vals.append(f())
    v[idx] = old
    return (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12 * h)


def max_rel_error(f, arrays: dict, grads: dict, rng, samples: int = 12, h: float = 1e-4) -> tuple[float, str]:
    """Largest relative error between grads[name] and finite differences of f over arrays[name].

    Relative to max(|numeric|, |analytic|, 1e-4 * max|grad of that tensor|), so that entries
    that are zero up to rounding are compared on the tensor's scale.
    """
    worst, where = 0.0, ""
    for name, v in arrays.items():
        g = grads[name]
        assert g.shape == v.shape, (name, g.shape, v.shape)
        scale = max(np.abs(g).max(), 1e-12)
        if v.size <= samples:
            idxs = list(np.ndindex(v.shape))
        else:
            idxs = [tuple(int(rng.integers(0, s)) for s in v.shape) for _ in range(samples)]
            idxs.append(np.unravel_index(int(np.abs(g).argmax()), v.shape))
        for idx in idxs:
            num = numeric_grad(f, v, idx, h)
            err = abs(num - g[idx]) / max(abs(num), abs(g[idx]), 1e-4 * scale)
            if err > worst:
                worst, where = err, f"{name}{idx}: numeric {num:.10g} analytic {g[idx]:.10g}"
    return worst, where
