"""Every backend against the numpy backend (float64, the spec) on the same cases, and the
inference path (prefill, step) against the training forward on each backend."""
import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig
from bitttt.backend import OPS, for_dtype, get, resolve
from bitttt.layers.ttt import TTTLayerState, ttt_forward, ttt_initial_state, ttt_prefill
from bitttt.params import module_params

NP = get("numpy")
OTHERS = [get("cpu")]  # the GPU backend joins here


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1e-6), np.abs(a - b).max()


def test_backend_choice():
    assert for_dtype(np.float64) is NP and resolve(None, None).NAME == "cpu"
    assert resolve("numpy") is NP and resolve(NP, np.float64) is NP
    with pytest.raises(TypeError, match="computes in float64"):
        resolve("numpy", np.float32)
    with pytest.raises(ValueError, match="unknown backend"):
        get("tpu")
    with pytest.raises(TypeError, match="float32"):
        BitLlama(BitLlamaConfig(), dtype=np.float16)
    assert BitLlama(BitLlamaConfig(vocab_size=32, hidden_size=16, num_heads=2), backend="numpy").dtype == np.float64


def test_op_names_are_the_same_in_every_backend():
    for be in [NP] + OTHERS:
        assert be.DTYPE in (np.float32, np.float64) and be.NAME
        missing = sorted(n for n in OPS if not callable(getattr(be, n, None)))
        assert not missing, f"{be.NAME} lacks {missing}"


@pytest.mark.parametrize("be", OTHERS, ids=lambda b: b.NAME)
def test_elementwise_and_norm_ops(be, rng):
    x = rng.standard_normal((5, 40)) * 2
    w, b = rng.standard_normal(40), rng.standard_normal(40)
    r = rng.standard_normal((5, 40))
    lo = lambda a: a.astype(be.DTYPE)  # noqa: E731
    for name in ("rmsnorm", "layernorm"):
        args = (w, 1e-6) if name == "rmsnorm" else (w, b, 1e-6)
        y64, c64 = getattr(NP, name + "_forward")(x, *args)
        y, c = getattr(be, name + "_forward")(lo(x), *map(lambda a: lo(a) if isinstance(a, np.ndarray) else a, args))
        _close(y64, y, 1e-5)
        for g64, g in zip(getattr(NP, name + "_backward")(r, c64), getattr(be, name + "_backward")(lo(r), c)):
            _close(g64, g, 1e-4)
    h64, s64 = NP.swiglu_forward(x, r)
    h, s = be.swiglu_forward(lo(x), lo(r))
    _close(h64, h, 1e-5)
    for a, b_ in zip(NP.swiglu_backward(w * x, x, r, s64), be.swiglu_backward(lo(w * x), lo(x), lo(r), s)):
        _close(a, b_, 1e-5)
    t = rng.integers(0, 40, 5)
    m = np.array([1, 0, 1, 1, 1.0])
    l64, cx64 = NP.cross_entropy_forward(x, t, m, m.sum())
    lx, cx = be.cross_entropy_forward(lo(x), t, lo(m), lo(m).sum())
    _close([l64], [lx], 1e-6)
    _close(NP.cross_entropy_backward(cx64), be.cross_entropy_backward(cx), 1e-5)


@pytest.mark.parametrize("be", OTHERS, ids=lambda b: b.NAME)
def test_linear_ops_and_head(be, rng):
    x = rng.standard_normal((7, 300))
    w = rng.standard_normal((9, 300)) * 0.02
    dy = rng.standard_normal((7, 9))
    lo = lambda a: np.ascontiguousarray(a, be.DTYPE)  # noqa: E731
    wq64, xq64 = NP.quantize_weight(w), NP.quantize_act(x)
    wq, xq = be.quantize_weight(lo(w)), be.quantize_act(lo(x))
    assert be.is_quantized(wq) and not be.is_quantized(w)
    _close(NP.qlinear(xq64, wq64), be.qlinear(xq, wq), 2e-5)
    _close(NP.qlinear_dx(dy, wq64), be.qlinear_dx(lo(dy), wq), 2e-5)
    _close(NP.qlinear_dw(dy, xq64), be.qlinear_dw(lo(dy), xq), 2e-5)
    _close(NP.matmul(x, w, trans_b=True), be.matmul(lo(x), lo(w), trans_b=True), 1e-5)
    _close(NP.matmul(dy, x, trans_a=True), be.matmul(lo(dy), lo(x), trans_a=True), 1e-5)
    q = rng.integers(-127, 128, (9, 300)).astype(np.int8)
    head = NP.Int8Head(q, (rng.random(9) * 0.01).astype(np.float32))
    _close(NP.lm_head(x, head), be.lm_head(lo(x), head), 1e-6)  # exact int sums, float scales
    _close(NP.lm_head(x, w), be.lm_head(lo(x), lo(w)), 1e-5)


@pytest.mark.parametrize("be", OTHERS, ids=lambda b: b.NAME)
def test_adamw_and_sumsq(be, rng):
    p64, g = rng.standard_normal(50), rng.standard_normal(50)
    m64, v64 = np.zeros(50), np.zeros(50)
    p, m, v = p64.astype(be.DTYPE), m64.astype(be.DTYPE), v64.astype(be.DTYPE)
    for _ in range(3):
        NP.adamw(p64, g, m64, v64, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5, 0.3, 0.7)
        be.adamw(p, g.astype(be.DTYPE), m, v, 1e-2, 0.9, 0.95, 1e-8, 0.1, 0.5, 0.3, 0.7)
    _close(p64, p, 1e-6)
    assert be.sumsq(g.astype(be.DTYPE)) == pytest.approx(NP.sumsq(g), rel=1e-6)


def _cfg(k=4, ternary=True, d=32, h=2):
    return BitLlamaConfig(vocab_size=50, hidden_size=d, num_layers=2, num_heads=h, intermediate_size=40,
                          mini_batch_size=k, ternary=ternary, ttt_base_lr=0.8)


def _trained_looking(cfg, backend, seed=0):
    m = BitLlama(cfg, backend=backend)
    m.init_weights(seed)
    rng = np.random.default_rng(seed + 1)
    for k, v in m.params.items():
        if k.endswith(("learnable_token_idx", "learnable_ttt_lr_bias", "ttt_norm_bias", "b1")):
            m.params[k] = (v + rng.normal(0, 0.3, v.shape)).astype(m.dtype)
    return m


@pytest.mark.parametrize("be", OTHERS, ids=lambda b: b.NAME)
@pytest.mark.parametrize("t", [3, 8, 11])
def test_ttt_inner_loop(be, t, rng):
    b, h, f, k = 2, 2, 16, 4
    d = h * f
    q, kx, v = (rng.standard_normal((b, t, d)) for _ in range(3))
    lr = rng.random((b, h, t)) * 0.1
    tok = np.array([1.0, 0.4, 0.0, 0.3])
    W1, b1 = rng.standard_normal((h, f, f)) * 0.1, rng.standard_normal((h, 1, f)) * 0.1
    gam, bet = 1 + rng.standard_normal((h, f)) * 0.1, rng.standard_normal((h, f)) * 0.1
    args = (q, kx, v, lr, tok, W1, b1, gam, bet)
    o64, c64 = NP.ttt_forward(*args, h, k, 500.0)
    o, c = be.ttt_forward(*(a.astype(be.DTYPE) for a in args), h, k, 500.0)
    _close(o64, o, 1e-4)
    dout = rng.standard_normal((b, t, d))
    for a, b_ in zip(NP.ttt_backward(dout, c64), be.ttt_backward(dout.astype(be.DTYPE), c)):
        _close(a, b_, 5e-4)


@pytest.mark.parametrize("backend", ["numpy", "cpu"])
@pytest.mark.parametrize("ternary", [True, False])
def test_prefill_equals_the_training_forward(backend, ternary):
    """The recurrent read (token by token, any chunking) gives the dual form's outputs."""
    cfg = _cfg(ternary=ternary)
    m = _trained_looking(cfg, backend)
    ids = np.random.default_rng(3).integers(0, 50, 19)  # not a multiple of K
    ref = m.forward(ids)
    im = BitLlama.for_inference(cfg, m.params, backend=backend)
    tol = 1e-10 if backend == "numpy" else 2e-3
    st = im.new_state()
    _close(ref, im.prefill(st, ids, all_logits=True), tol)
    parts, st2, i = [], im.new_state(), 0
    for n in (1, 5, 4, 9):
        parts.append(im.prefill(st2, ids[i:i + n], all_logits=True))
        i += n
    got = np.concatenate(parts)
    if backend == "cpu":
        assert np.array_equal(got, im.prefill(im.new_state(), ids, all_logits=True))  # same bits
    else:
        _close(ref, got, 1e-10)
    assert st2.n_tokens == 19 and st2.pos == 19 % cfg.mini_batch_size


def test_numpy_and_cpu_prefill_agree_on_the_state(rng):
    cfg = _cfg()
    m64 = _trained_looking(cfg, "numpy")
    p64 = module_params(m64.params, cfg, 0, "ttt")
    p32 = {k: v.astype(np.float32) for k, v in p64.items()}
    x = rng.standard_normal((6, cfg.hidden_size))
    s64 = ttt_initial_state(p64, cfg, np.float64)
    s32 = ttt_initial_state(p32, cfg, np.float32)
    y64 = ttt_prefill(NP, p64, x, TTTLayerState(**s64), 1, cfg)
    y32 = ttt_prefill(get("cpu"), p32, x.astype(np.float32), TTTLayerState(**s32), 1, cfg)
    _close(y64, y32, 2e-3)
    live = (1 + 6) % cfg.mini_batch_size  # rows of the open mini-batch (3)
    for name in ("W0", "b0", "Sb"):
        _close(s64[name], s32[name], 1e-4)
    for name in ("Kb", "Gb"):
        _close(s64[name][:, :live], s32[name][:, :live], 1e-4)
    # and the whole sequence through the dual form gives the same outputs
    ref, _ = ttt_forward(NP, p64, x[None], cfg)
    s = ttt_initial_state(p64, cfg, np.float64)
    _close(ref[0], ttt_prefill(NP, p64, x, TTTLayerState(**s), 0, cfg), 1e-10)


def test_fused_step_equals_the_generic_step():
    cfg = _cfg(k=8, d=64, h=4)
    m = _trained_looking(cfg, "cpu")
    im = BitLlama.for_inference(cfg, m.params)
    assert im._fused_decoder() is not None
    ids = np.random.default_rng(4).integers(0, 50, 21)
    a, b = im.new_state(), im.new_state()
    for t in ids:
        la = im.step(a, int(t))
        lb = im.prefill(b, [int(t)])
        assert np.array_equal(la, lb)
    for x, y in zip(a.arrays().values(), b.arrays().values()):
        assert np.array_equal(x, y)
    assert a.pos == b.pos and a.n_tokens == b.n_tokens == 21


def test_inference_model_refuses_gradients():
    cfg = _cfg()
    im = BitLlama.for_inference(cfg, BitLlama(cfg).params)
    with pytest.raises(RuntimeError, match="prepared for inference"):
        im.loss_and_grads(np.zeros((1, 4), int), np.zeros((1, 4), int))
