"""Every op and layer: the hand-written backward against float64 finite differences (numpy
backend), STE formulas, and the cpu backend against the numpy backend on the same cases."""
import numpy as np
import pytest
from gradcheck import max_rel_error

import bitttt
from bitttt import _core
from bitttt.backend import get
from bitttt.config import BitLlamaConfig
from bitttt.layers import (
    bitlinear_backward,
    bitlinear_forward,
    cross_entropy_backward,
    cross_entropy_forward,
    swiglu_backward,
    swiglu_forward,
)

TOL = 1e-6
NP, CPU = get("numpy"), get("cpu")
embedding_forward, embedding_backward = NP.embedding_forward, NP.embedding_backward
rmsnorm_forward, rmsnorm_backward = NP.rmsnorm_forward, NP.rmsnorm_backward
layernorm_forward, layernorm_backward = NP.layernorm_forward, NP.layernorm_backward
BE = NP  # the finite-difference checks run on the float64 spec


def be_of(dtype):
    """The backend that computes in dtype: float64 numpy, float32 cpu."""
    return NP if np.dtype(dtype) == np.float64 else CPU


def _check(f, arrays, grads, rng, **kw):
    err, where = max_rel_error(f, arrays, grads, rng, **kw)
    assert err < TOL, where


def test_embedding(rng):
    w = rng.standard_normal((7, 5))
    ids = np.array([[1, 3, 3], [0, 6, 1]])
    r = rng.standard_normal((2, 3, 5))
    dw = embedding_backward(r, ids, 7)
    _check(lambda: float((embedding_forward(w, ids) * r).sum()), {"w": w}, {"w": dw}, rng)
    assert np.array_equal(dw[3], r[0, 1] + r[0, 2])  # repeated ids accumulate


def test_rmsnorm(rng):
    x, w = rng.standard_normal((2, 3, 6)), rng.standard_normal(6)
    r = rng.standard_normal((2, 3, 6))
    y, c = rmsnorm_forward(x, w, 1e-6)
    assert np.allclose(y, x / np.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-6) * w)
    dx, dw = rmsnorm_backward(r, c)
    _check(lambda: float((rmsnorm_forward(x, w, 1e-6)[0] * r).sum()), {"x": x, "w": w}, {"x": dx, "w": dw}, rng)


def test_layernorm(rng):
    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal(6), rng.standard_normal(6)
    r = rng.standard_normal((4, 6))
    _, c = layernorm_forward(x, w, b, 1e-6)
    dx, dw, db = layernorm_backward(r, c)
    f = lambda: float((layernorm_forward(x, w, b, 1e-6)[0] * r).sum())  # noqa: E731
    _check(f, {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, rng)


def test_bitlinear_float_mode(rng):
    x, w = rng.standard_normal((2, 3, 5)), rng.standard_normal((4, 5))
    r = rng.standard_normal((2, 3, 4))
    y, c = bitlinear_forward(BE, x, w, ternary=False)
    assert np.allclose(y, x @ w.T)
    dx, dw = bitlinear_backward(BE, r, c)
    _check(lambda: float((bitlinear_forward(BE, x, w, False)[0] * r).sum()), {"x": x, "w": w}, {"x": dx, "w": dw}, rng)


def _qw(w):
    s = np.abs(w.astype(np.float64)).mean() + 1e-5
    s = w.dtype.type(s)
    return np.clip(np.rint(w / s), -1, 1) * s


def _qa(x):
    a = x.dtype.type(127) / np.maximum(np.abs(x).max(-1, keepdims=True), x.dtype.type(1e-5))
    return np.clip(np.rint(x * a), -128, 127) / a


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_bitlinear_ternary_forward_and_ste(dtype, rng):
    x = rng.standard_normal((2, 3, 300)).astype(dtype)
    w = (rng.standard_normal((7, 300)) * 0.02).astype(dtype)
    r = rng.standard_normal((2, 3, 7)).astype(dtype)
    y, c = bitlinear_forward(be_of(dtype), x, w, ternary=True)
    ref = _qa(x).astype(np.float64) @ _qw(w).astype(np.float64).T
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert y.dtype == dtype and np.abs(y - ref).max() <= tol * np.abs(ref).max()
    dx, dw = bitlinear_backward(be_of(dtype), r, c)
    # straight-through: dX = dY Qw(W), dW = dY^T Qa(x); no gradient through s or a
    assert dx.dtype == dtype and dw.dtype == dtype
    ref_dx = r.astype(np.float64) @ _qw(w).astype(np.float64)
    ref_dw = r.reshape(-1, 7).T.astype(np.float64) @ _qa(x).reshape(-1, 300).astype(np.float64)
    assert np.abs(dx - ref_dx).max() <= tol * np.abs(ref_dx).max()
    assert np.abs(dw - ref_dw).max() <= tol * np.abs(ref_dw).max()
    assert np.array_equal(NP.quantize_weight(w).values, _qw(w)) and np.array_equal(NP.quantize_act(x), _qa(x))


def test_bitlinear_ternary_float32_uses_packed_kernels(rng):
    x = rng.standard_normal((5, 256)).astype(np.float32)
    w = rng.standard_normal((9, 256)).astype(np.float32)
    y, _ = bitlinear_forward(CPU, x, w, ternary=True)
    assert np.array_equal(y, bitttt.bitlinear(bitttt.PackedTernary.quantize(w), x))


def test_swiglu_float_mode(rng):
    x = rng.standard_normal((2, 3, 5))
    wg, wu, wd = rng.standard_normal((6, 5)), rng.standard_normal((6, 5)), rng.standard_normal((5, 6))
    r = rng.standard_normal((2, 3, 5))
    y, c = swiglu_forward(BE, x, wg, wu, wd, False)
    g = x @ wg.T
    assert np.allclose(y, ((g / (1 + np.exp(-g))) * (x @ wu.T)) @ wd.T)
    dx, dg, du, dd = swiglu_backward(BE, r, c)
    f = lambda: float((swiglu_forward(BE, x, wg, wu, wd, False)[0] * r).sum())  # noqa: E731
    _check(f, {"x": x, "wg": wg, "wu": wu, "wd": wd}, {"x": dx, "wg": dg, "wu": du, "wd": dd}, rng)


def test_swiglu_ternary_ste(rng):
    x = rng.standard_normal((4, 8))
    wg, wu, wd = rng.standard_normal((6, 8)), rng.standard_normal((6, 8)), rng.standard_normal((8, 6))
    r = rng.standard_normal((4, 8))
    _, c = swiglu_forward(BE, x, wg, wu, wd, True)
    dx, dg, du, dd = swiglu_backward(BE, r, c)
    g, u = _qa(x) @ _qw(wg).T, _qa(x) @ _qw(wu).T
    sg = 1 / (1 + np.exp(-g))
    h = g * sg * u
    assert np.allclose(dd, r.T @ _qa(h))
    dh = r @ _qw(wd)
    dgg = dh * u * sg * (1 + g * (1 - sg))
    assert np.allclose(dg, dgg.T @ _qa(x)) and np.allclose(du, (dh * g * sg).T @ _qa(x))
    assert np.allclose(dx, dgg @ _qw(wg) + (dh * g * sg) @ _qw(wu))


@pytest.mark.parametrize("masked", [False, True])
def test_cross_entropy(masked, rng):
    logits = rng.standard_normal((2, 5, 7))
    targets = rng.integers(0, 7, (2, 5))
    mask = (rng.random((2, 5)) > 0.4).astype(np.int8) if masked else None
    if masked:
        mask[0, 0] = 1
    loss, c = cross_entropy_forward(BE, logits, targets, mask)
    lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -np.take_along_axis(lp, targets[..., None], -1)[..., 0]
    m = np.ones((2, 5)) if mask is None else mask
    assert loss == pytest.approx((ce * m).sum() / m.sum(), rel=1e-12)
    d = cross_entropy_backward(BE, c)
    _check(lambda: float(cross_entropy_forward(BE, logits, targets, mask)[0]), {"logits": logits}, {"logits": d}, rng)
    if masked:
        assert not d[mask == 0].any()


def test_cross_entropy_bad_input():
    logits = np.zeros((1, 3, 4))
    with pytest.raises(ValueError, match="all zeros"):
        cross_entropy_forward(BE, logits, np.zeros((1, 3), int), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="token ids"):
        cross_entropy_forward(BE, logits, np.full((1, 3), 4), None)
    with pytest.raises(ValueError, match="shape"):
        cross_entropy_forward(BE, logits, np.zeros((1, 2), int), None)


def test_config_round_trip_and_validation(tmp_path):
    c = BitLlamaConfig(vocab_size=100, hidden_size=32, num_heads=4, ternary=False)
    assert BitLlamaConfig.from_json(c.to_json()) == c
    c.to_json(tmp_path / "c.json")
    assert BitLlamaConfig.from_json(tmp_path / "c.json") == c
    with pytest.raises(ValueError, match="divisible"):
        BitLlamaConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown config key"):
        BitLlamaConfig.from_dict({"hidden": 3})
    with pytest.raises(ValueError, match="num_layers"):
        BitLlamaConfig(num_layers=0)
    with pytest.raises(TypeError, match="ternary"):
        BitLlamaConfig(ternary="yes")
    with pytest.raises(ValueError, match="not valid JSON"):
        BitLlamaConfig.from_json("{nope")


def _c_vs_numpy(fn64, fn32, tol=2e-5):
    """The float32 path (C, src_c/ops.c) against the float64 path (NumPy) of the same function."""
    outs64, outs32 = fn64(), fn32()
    for a, b in zip(outs64, outs32):
        assert b.dtype == np.float32
        assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1e-3)  # D = 1: dx is 0 up to rounding


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (130, 257)])
def test_fused_ops_match_numpy(shape, rng):
    x = rng.standard_normal(shape) * 3
    w = rng.standard_normal(shape[-1])
    r = rng.standard_normal(shape)
    u = rng.standard_normal(shape)

    def rms(dt):
        y, c = be_of(dt).rmsnorm_forward(x.astype(dt), w.astype(dt), 1e-6)
        dx, dw = be_of(dt).rmsnorm_backward(r.astype(dt), c)
        return y, dx, dw

    _c_vs_numpy(lambda: rms(np.float64), lambda: rms(np.float32))

    bias = rng.standard_normal(shape[-1])

    def ln(dt):
        y, c = be_of(dt).layernorm_forward(x.astype(dt), w.astype(dt), bias.astype(dt), 1e-6)
        return (y, *be_of(dt).layernorm_backward(r.astype(dt), c))

    if shape[-1] > 1:  # D = 1: LayerNorm's output is b exactly, its dx is noise on both sides
        _c_vs_numpy(lambda: ln(np.float64), lambda: ln(np.float32), tol=1e-4)

    wg, wu, wd = (rng.standard_normal((5, shape[-1])), rng.standard_normal((5, shape[-1])),
                  rng.standard_normal((shape[-1], 5)))

    def swi(dt):
        y, c = swiglu_forward(be_of(dt), x.astype(dt), wg.astype(dt), wu.astype(dt), wd.astype(dt), False)
        return (y, *swiglu_backward(be_of(dt), r.astype(dt), c))

    _c_vs_numpy(lambda: swi(np.float64), lambda: swi(np.float32), tol=1e-4)

    targets = rng.integers(0, shape[-1], shape[:-1])
    mask = (rng.random(shape[:-1]) > 0.3).astype(np.float32)
    mask.reshape(-1)[0] = 1

    def xent(dt):
        loss, c = cross_entropy_forward(be_of(dt), x.astype(dt), targets, mask)
        return np.array([loss]), cross_entropy_backward(be_of(dt), c)

    _c_vs_numpy(lambda: xent(np.float64), lambda: xent(np.float32), tol=1e-5)
    del u


def test_fused_ops_same_bits_on_every_path_and_thread_count(rng, threads):
    x = rng.standard_normal((200, 300)).astype(np.float32)
    w = rng.standard_normal(300).astype(np.float32)
    r = rng.standard_normal((200, 300)).astype(np.float32)
    targets = rng.integers(0, 300, 200)
    before = bitttt.get_kernel()
    outs = []
    try:
        for name in bitttt.available_kernels():
            for n in (1, 2, 3):
                bitttt.set_kernel(name)
                bitttt.set_num_threads(n)
                y, c = CPU.rmsnorm_forward(x, w, 1e-6)
                dx, dw = CPU.rmsnorm_backward(r, c)
                loss, cl = cross_entropy_forward(CPU, x, targets, None)
                yl, cln = CPU.layernorm_forward(x, w, w[::-1].copy(), 1e-6)
                g, u = x * 5, r.copy()
                h, sg = np.empty_like(g), np.empty_like(g)
                _core.swiglu_fwd(g.reshape(-1), u.reshape(-1), h.reshape(-1), sg.reshape(-1))
                dg, du = np.empty_like(g), np.empty_like(g)
                _core.swiglu_bwd(x.reshape(-1), g.reshape(-1), u.reshape(-1), sg.reshape(-1), dg.reshape(-1),
                                 du.reshape(-1))
                outs.append([y, dx, dw, np.array([loss]), cross_entropy_backward(CPU, cl), yl,
                             *CPU.layernorm_backward(r, cln), h, sg, dg, du])
    finally:
        bitttt.set_kernel(before)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert np.array_equal(a, b)
