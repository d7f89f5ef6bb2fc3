"""TTT-Linear: gradient checks, an independent token-by-token primal form, bad values."""
import numpy as np
import pytest
from gradcheck import max_rel_error

from bitttt.config import BitLlamaConfig
from bitttt.layers import NonFiniteError, TTTLinear


def _cfg(ternary=False, k=4, d=16, h=2):
    return BitLlamaConfig(vocab_size=10, hidden_size=d, num_heads=h, intermediate_size=8,
                          mini_batch_size=k, ternary=ternary, ttt_base_lr=0.7, rope_theta=500.0)


def _layer(rng, cfg, dtype=np.float64):
    layer = TTTLinear(cfg, dtype=dtype)
    layer.init_weights(1)
    for v in layer.params.values():  # move away from the symmetric initial values
        v += rng.normal(0, 0.3, v.shape).astype(dtype)
    layer.params["learnable_token_idx"][1] = -0.9  # exercises the clamp at 0
    return layer


@pytest.mark.parametrize("t", [3, 8, 11])  # shorter than K, a multiple of K, and not a multiple
def test_gradients_match_finite_differences(t, rng):
    layer = _layer(rng, _cfg())
    x = rng.standard_normal((2, t, 16))
    r = rng.standard_normal((2, t, 16))

    def f():
        return float((layer.forward(x) * r).sum())

    f()
    dx, grads = layer.backward(r)
    arrays = dict(layer.params, x=x)
    grads = dict(grads, x=dx)
    assert set(grads) == set(arrays)
    err, where = max_rel_error(f, arrays, grads, rng, samples=8)
    assert err < 1e-6, where


def _rope(x, pos, theta):
    f = x.shape[-1]
    out = x.copy()
    for j in range(f // 2):
        ang = pos * theta ** (-2.0 * j / f)
        c, s = np.cos(ang), np.sin(ang)
        out[..., 2 * j] = x[..., 2 * j] * c - x[..., 2 * j + 1] * s
        out[..., 2 * j + 1] = x[..., 2 * j] * s + x[..., 2 * j + 1] * c
    return out


def _ln(z, g, b, eps=1e-6):
    mu = z.mean()
    var = ((z - mu) ** 2).mean()
    return (z - mu) / np.sqrt(var + eps) * g + b


def _grad_z(z, target, g, b, eps=1e-6):
    """d/dz 1/2 ||LN(z) - target||^2 by the chain rule through LN, one row."""
    f = z.size
    mu = z.mean()
    sd = np.sqrt(((z - mu) ** 2).mean() + eps)
    zh = (z - mu) / sd
    gy = (zh * g + b - target) * g  # dL/dzh
    jac = (np.eye(f) - 1.0 / f - np.outer(zh, zh) / f) / sd  # d zh / d z (symmetric)
    return jac @ gy


def primal(p, x, cfg):
    """Token by token: every token of a mini-batch takes its own gradient step from the
    mini-batch's starting state, weighted by eta[i, j]; the state moves at the end."""
    bsz, t, d = x.shape
    h, k = cfg.num_heads, cfg.mini_batch_size
    f = d // h
    q, kk, v = x @ p["q_proj.weight"].T, x @ p["k_proj.weight"].T, x @ p["v_proj.weight"].T
    out = np.zeros((bsz, t, d))
    for bi in range(bsz):
        for hi in range(h):
            sl = slice(hi * f, (hi + 1) * f)
            W, bias = p["W1"][hi].copy(), p["b1"][hi, 0].copy()
            g, be = p["ttt_norm_weight"][hi], p["ttt_norm_bias"][hi]
            for s in range(0, t, k):
                n = min(k, t - s)
                Q = np.array([_rope(q[bi, s + i, sl], i, cfg.rope_theta) for i in range(n)])
                K = np.array([_rope(kk[bi, s + i, sl], i, cfg.rope_theta) for i in range(n)])
                V = v[bi, s:s + n, sl]
                lr = np.array([cfg.ttt_base_lr / f / (1 + np.exp(-(x[bi, s + j] @ p["learnable_ttt_lr_weight"][hi, 0]
                                                                   + p["learnable_ttt_lr_bias"][hi, 0])))
                               for j in range(n)])
                tok = np.maximum(1.0 / np.arange(1, n + 1) + p["learnable_token_idx"][:n], 0)
                G = np.array([_grad_z(K[j] @ W + bias, V[j] - K[j], g, be) for j in range(n)])
                for i in range(n):
                    Wi, bi_ = W.copy(), bias.copy()
                    for j in range(i + 1):
                        Wi -= tok[i] * lr[j] * np.outer(K[j], G[j])
                        bi_ -= tok[i] * lr[j] * G[j]
                    out[bi, s + i, sl] = Q[i] + _ln(Q[i] @ Wi + bi_, g, be)
                for j in range(n):
                    W -= tok[n - 1] * lr[j] * np.outer(K[j], G[j])
                    bias -= tok[n - 1] * lr[j] * G[j]
    mu = out.mean(-1, keepdims=True)
    normed = (out - mu) / np.sqrt(out.var(-1, keepdims=True) + 1e-6) * p["post_norm.weight"] + p["post_norm.bias"]
    return normed @ p["o_proj.weight"].T


@pytest.mark.parametrize("t", [1, 4, 7, 13])
def test_dual_form_equals_primal(t, rng):
    cfg = _cfg(k=4)
    layer = _layer(rng, cfg)
    x = rng.standard_normal((2, t, 16))
    assert np.abs(layer.forward(x) - primal(layer.params, x, cfg)).max() < 1e-10


@pytest.mark.parametrize("t,k,d,h", [(9, 4, 16, 2), (37, 16, 64, 2), (20, 8, 96, 3), (5, 16, 256, 2), (37, 16, 128, 2)])
def test_c_inner_loop_matches_numpy_float64(t, k, d, h, rng):
    """float32 runs the C inner loop (src_c/ttt.c); float64 the NumPy reference: every output and
    gradient agrees to float32 accuracy (head widths 32, 64 and 128 take the specialized copies; 64 the
    AVX2 row tiles, with a last mini-batch of 5 rows: tiles of 3 and 2)."""
    cfg = _cfg(k=k, d=d, h=h)
    l64 = _layer(rng, cfg)
    l32 = TTTLinear(cfg, dtype=np.float32, params={n: v.astype(np.float32) for n, v in l64.params.items()})
    x = rng.standard_normal((2, t, d))
    y64, y32 = l64.forward(x), l32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and np.abs(y32 - y64).max() < 1e-4 * np.abs(y64).max()
    r = rng.standard_normal((2, t, d))
    d64, g64 = l64.backward(r)
    d32, g32 = l32.backward(r.astype(np.float32))
    assert d32.dtype == np.float32 and all(v.dtype == np.float32 for v in g32.values())
    assert np.abs(d32 - d64).max() < 1e-3 * np.abs(d64).max()
    for name in g64:
        scale = np.abs(g64[name]).max()
        assert np.abs(g32[name] - g64[name]).max() <= 2e-3 * scale + 1e-6, name


@pytest.mark.parametrize("d,h", [(64, 4), (128, 2)])  # head width 64: the AVX2 row tiles against plain C
def test_c_inner_loop_same_bits_on_every_path_and_thread_count(rng, threads, d, h):
    import bitttt

    cfg = _cfg(k=8, d=d, h=h)
    layer = _layer(rng, cfg, np.float32)
    x = rng.standard_normal((3, 21, d)).astype(np.float32)
    r = rng.standard_normal((3, 21, d)).astype(np.float32)
    before = bitttt.get_kernel()
    outs = []
    try:
        for name in bitttt.available_kernels():
            for n in (1, 2, 5):
                bitttt.set_kernel(name)
                bitttt.set_num_threads(n)
                y = layer.forward(x)
                dx, g = layer.backward(r)
                outs.append([y, dx] + [g[k] for k in sorted(g)])
    finally:
        bitttt.set_kernel(before)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32))


def test_ternary_layer_runs_in_both_dtypes(rng):
    cfg = _cfg(ternary=True, k=16, d=64, h=4)
    for dtype in (np.float32, np.float64):
        layer = _layer(rng, cfg, dtype)
        x = rng.standard_normal((2, 21, 64)).astype(dtype)
        y = layer.forward(x)
        dx, g = layer.backward(np.ones_like(y))
        assert y.dtype == dtype and dx.dtype == dtype and np.isfinite(dx).all()
        assert all(g[k].shape == v.shape for k, v in layer.params.items())


def test_nonfinite_input_or_parameter_names_the_layer(rng):
    layer = _layer(rng, _cfg())
    x = rng.standard_normal((1, 5, 16))
    x[0, 2, 3] = np.nan
    with pytest.raises(NonFiniteError, match="TTTLinear.*input"):
        layer.forward(x)
    layer.params["W1"][0, 0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="TTTLinear.*W1"):
        layer.forward(rng.standard_normal((1, 5, 16)))


def test_bad_shapes_and_order(rng):
    layer = _layer(rng, _cfg())
    with pytest.raises(ValueError, match="expects x"):
        layer.forward(rng.standard_normal((5, 16)))
    with pytest.raises(TypeError, match="float64"):
        layer.forward(rng.standard_normal((1, 5, 16)).astype(np.float32))
    with pytest.raises(RuntimeError, match="forward first"):
        TTTLinear(_cfg()).backward(np.zeros((1, 5, 16)))


def test_wrong_parameter_shape_is_refused(rng):
    layer = _layer(rng, _cfg(), np.float32)
    layer.params["W1"] = np.zeros((2, 8, 7), np.float32)
    with pytest.raises(ValueError, match="W1 has shape"):
        layer.forward(rng.standard_normal((1, 5, 16)).astype(np.float32))
