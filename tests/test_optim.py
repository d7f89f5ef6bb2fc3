"""AdamW, clipping norm and schedule: the C step against the formulas in float64."""
import math

import numpy as np
import pytest

from bitttt import _core
from bitttt.optim import AdamW, decays, global_norm, lr_at


def _adamw_reference(p, m, v, g, t, lr, b1, b2, eps, wd, gscale):
    g = g * gscale
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    mh, vh = m / (1 - b1 ** t), v / (1 - b2 ** t)
    return p - lr * (wd * p + mh / (np.sqrt(vh) + eps)), m, v


@pytest.mark.parametrize("threads", [1, 2])
def test_adamw_matches_formula(threads):
    from bitttt import set_num_threads

    set_num_threads(threads)
    rng = np.random.default_rng(0)
    shapes = {"w": (70, 1100), "b1": (3, 1, 8), "norm.weight": (33,)}
    p = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    ref = {k: (v.astype(np.float64), np.zeros(v.shape), np.zeros(v.shape)) for k, v in p.items()}
    opt = AdamW(p, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    for t in range(1, 6):
        g = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
        lr = 1e-2 * t
        opt.step(g, lr, gscale=0.7)
        for k in p:
            wd = 0.1 if decays(k, shapes[k]) else 0.0
            ref[k] = _adamw_reference(*ref[k], g[k].astype(np.float64), t, lr, 0.9, 0.95, 1e-8, wd, 0.7)
    for k in p:
        np.testing.assert_allclose(p[k], ref[k][0], rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(opt.m[k], ref[k][1], rtol=1e-5, atol=1e-7)
    assert opt.t == 5


def test_adamw_same_bits_on_any_thread_count():
    from bitttt import set_num_threads

    rng = np.random.default_rng(1)
    p0 = rng.normal(size=300_001).astype(np.float32)
    g = rng.normal(size=p0.shape).astype(np.float32)
    out = []
    for th in (1, 2):
        set_num_threads(th)
        p, m, v = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
        _core.adamw(p, g, m, v, 1e-3, 0.9, 0.95, 1e-8, 0.1, 0.1, 0.05, 0.5)
        out.append((p, m, v))
    for a, b in zip(*out):
        assert np.array_equal(a, b)


def test_weight_decay_on_matrices_only():
    assert decays("layers.0.mlp.up_proj.weight", (8, 4))
    assert decays("layers.0.ttt.W1", (2, 4, 4))
    assert decays("embed.weight", (10, 4))
    assert not decays("layers.0.ttt.b1", (2, 1, 4))
    assert not decays("layers.0.ttt.learnable_ttt_lr_bias", (2, 1))
    assert not decays("layers.0.norm1.weight", (4,))
    assert not decays("layers.0.ttt.post_norm.bias", (4,))


def test_global_norm_fixed_order():
    from bitttt import set_num_threads

    rng = np.random.default_rng(2)
    g = {"a": rng.normal(size=(513, 1031)).astype(np.float32), "b": rng.normal(size=7).astype(np.float32)}
    exact = math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in g.values()))
    vals = []
    for th in (1, 2):
        set_num_threads(th)
        vals.append(global_norm(g))
    assert vals[0] == vals[1]
    assert abs(vals[0] - exact) <= 1e-12 * exact


def test_schedule():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)
    assert lr_at(9, **kw) == pytest.approx(1e-3)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(60, **kw) == pytest.approx(5.5e-4)
    assert lr_at(110, **kw) == pytest.approx(1e-4)
    assert lr_at(500, **kw) == pytest.approx(1e-4)
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_adamw_rejects_bad_values():
    p = {"w": np.zeros((2, 2), np.float32)}
    with pytest.raises(ValueError, match="betas"):
        AdamW(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="eps"):
        AdamW(p, eps=0.0)
    opt = AdamW(p)
    with pytest.raises(ValueError, match="shape"):
        opt.step({"w": np.zeros((3, 2), np.float32)}, 1e-3)
