"""The TTT inner loop of a prompt (bt_ttt_prefill): the run path (a mini-batch's tokens side by
side in vector lanes) gives the bits of the token-by-token path, on every kernel path."""
import numpy as np
import pytest

import bitttt
from bitttt import _core


def _inputs(rng, t, h, f, k):
    d = h * f
    q, kk, v, xn = (rng.normal(0, 1, (t, d)).astype(np.float32) for _ in range(4))
    lr_w = rng.normal(0, 0.05, (h, d)).astype(np.float32)
    lr_b = rng.normal(0, 0.5, h).astype(np.float32)
    tok = (1.0 / np.arange(1, k + 1) + rng.normal(0, 0.01, k)).astype(np.float32)
    gamma = rng.normal(1, 0.1, (h, f)).astype(np.float32)
    beta = rng.normal(0, 0.1, (h, f)).astype(np.float32)
    return q, kk, v, xn, lr_w, lr_b, tok, gamma, beta


def _state(rng, h, f, k, pos):
    W0 = rng.normal(0, 0.05, (h, f, f)).astype(np.float32)
    b0 = rng.normal(0, 0.05, (h, f)).astype(np.float32)
    Kb, Gb = np.zeros((h, k, f), np.float32), np.zeros((h, k, f), np.float32)
    Kb[:, :pos] = rng.normal(0, 1, (h, pos, f))
    Gb[:, :pos] = rng.normal(0, 0.01, (h, pos, f))
    Sb = Gb.sum(axis=1).astype(np.float32)
    return [W0, b0, Kb, Gb, Sb]


def _prefill(pos, ins, st, chunks):
    """ttt_prefill over the tokens in pieces of the given sizes; returns out and the state."""
    q, kk, v, xn, lr_w, lr_b, tok, gamma, beta = ins
    st = [a.copy() for a in st]
    out = np.empty_like(q)
    t0 = 0
    for n in chunks:
        sl = slice(t0, t0 + n)
        o = np.empty((n, q.shape[1]), np.float32)
        _core.ttt_prefill((pos + t0) % len(tok), q[sl], kk[sl], v[sl], xn[sl], lr_w, lr_b, 0.25, tok, gamma, beta,
                          *st, o)
        out[sl] = o
        t0 += n
    return [out] + st


@pytest.mark.parametrize("h,f,k,pos,t", [(2, 128, 16, 0, 40), (3, 64, 16, 5, 29), (2, 32, 8, 3, 21),
                                         (2, 20, 16, 7, 35), (1, 12, 4, 1, 11), (2, 128, 32, 30, 40)])
def test_prompt_at_once_equals_token_by_token_on_every_path(h, f, k, pos, t):
    rng = np.random.default_rng(f * 100 + k + pos)
    ins, st = _inputs(rng, t, h, f, k), _state(rng, h, f, k, pos)
    before = bitttt.get_kernel()
    try:
        results = []
        for name in bitttt.available_kernels():
            bitttt.set_kernel(name)
            whole = _prefill(pos, ins, st, [t])
            steps = _prefill(pos, ins, st, [1] * t)
            mixed = _prefill(pos, ins, st, [3, 1, 2, t - 6])
            for a, b, c in zip(whole, steps, mixed):
                assert np.array_equal(a, b) and np.array_equal(a, c), name
            results.append((name, whole))
    finally:
        bitttt.set_kernel(before)
    for name, res in results[1:]:
        for a, b in zip(results[0][1], res):
            assert np.array_equal(a, b), name
