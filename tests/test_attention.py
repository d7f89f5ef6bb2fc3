"""Attention and hybrid BitLlamas: the attention op and layer (finite differences in float64,
GQA, T not a multiple of the tile), the cpu backend against the numpy spec, whole attention and
hybrid models, the KV cache (greedy decoding against the full forward, chunks against all at
once, int8 and float16), the context limit, memory files, checkpoints and packed files."""
import math

import numpy as np
import pytest
from decode_check import assert_greedy_matches_forward
from gradcheck import max_rel_error

from bitttt import BitLlama, BitLlamaConfig
from bitttt.backend import OPS
from bitttt.backend import cpu as cpu_be
from bitttt.backend import numpy as np_be
from bitttt.layers.attention import Attention, KVCache

TYPES = {"attention": None, "hybrid": ["ttt", "attention"]}


def _cfg(kind="attention", ternary=False, **kw):
    base = dict(vocab_size=11, hidden_size=16, num_heads=4, num_kv_heads=2, intermediate_size=12, num_layers=2,
                mini_batch_size=4, ternary=ternary, arch="attention", layer_types=TYPES[kind])
    base.update(kw)
    return BitLlamaConfig(**base)


def _naive_attention(q, k, v, scale):
    """The definition: softmax over the causal [T, T] scores, key/value head h // G."""
    b, h, t, f = q.shape
    g = h // k.shape[1]
    kk, vv = np.repeat(k, g, axis=1), np.repeat(v, g, axis=1)
    s = np.einsum("bhqf,bhkf->bhqk", q, kk) * scale
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhqk,bhkf->bhqf", p / p.sum(-1, keepdims=True), vv)


# -- config ---------------------------------------------------------------------------------
def test_config_arch_fields_validate_and_round_trip():
    c = _cfg("hybrid")
    assert c.kind == "hybrid" and c.types == ("ttt", "attention") and c.kv_heads == 2
    assert BitLlamaConfig.from_json(c.to_json()) == c
    assert BitLlamaConfig(arch="attention").kind == "attention"
    old = BitLlamaConfig().to_dict()  # a TTT config writes none of the new fields: old files hash the same
    assert not {"arch", "layer_types", "num_kv_heads", "max_position_embeddings"} & set(old)
    assert BitLlamaConfig.from_dict(old).kind == "ttt"
    for kw, msg in ((dict(num_kv_heads=3), "must divide"), (dict(arch="llama"), "arch must be"),
                    (dict(layer_types=["ttt"]), "1 entries"), (dict(layer_types=["ttt", "mamba"]), "unknown layer"),
                    (dict(max_position_embeddings=0), ">= 1")):
        with pytest.raises(ValueError, match=msg):
            _cfg(**kw)
    with pytest.raises(TypeError):
        _cfg(num_kv_heads=2.0)


def test_parameter_table_follows_the_layer_types():
    from bitttt.params import param_shapes

    s = param_shapes(_cfg("hybrid"))
    assert "layers.0.ttt.W1" in s and "layers.1.attn.q_proj.weight" in s and "layers.1.ttt.W1" not in s
    assert s["layers.1.attn.k_proj.weight"] == (8, 16) and s["layers.1.attn.q_proj.weight"] == (16, 16)
    assert "attention_forward" in OPS and "attention_backward" in OPS and "attention_cached" in OPS


# -- the op -----------------------------------------------------------------------------------
@pytest.mark.parametrize("t,tile", [(1, 4), (13, 4), (16, 8), (23, 64)])
def test_tiled_attention_equals_the_definition(t, tile, rng):
    q = rng.normal(0, 1, (2, 4, t, 6))
    k, v = rng.normal(0, 1, (2, 2, t, 6)), rng.normal(0, 1, (2, 2, t, 6))
    out, c = np_be.attention_forward(q, k, v, 0.4, tile)
    assert np.allclose(out, _naive_attention(q, k, v, 0.4), rtol=1e-12, atol=1e-12)
    # causal: the first token attends to itself only; the future does not change the past
    assert np.allclose(out[:, :, 0], np.repeat(v, 2, axis=1)[:, :, 0])
    k2, v2 = k.copy(), v.copy()
    k2[:, :, -1] += 5
    v2[:, :, -1] -= 3
    out2, _ = np_be.attention_forward(q, k2, v2, 0.4, tile)
    assert np.array_equal(out2[:, :, :-1], out[:, :, :-1])


def test_attention_op_gradients_finite_differences(rng):
    t, tile = 11, 4  # not a multiple of the tile
    q = rng.normal(0, 1, (2, 4, t, 6))
    k, v = rng.normal(0, 1, (2, 2, t, 6)), rng.normal(0, 1, (2, 2, t, 6))
    w = rng.normal(0, 1, q.shape)
    w[:, :, 5:7] = 0  # masked query rows: their gradient must vanish

    def loss():
        return float((np_be.attention_forward(q, k, v, 0.3, tile)[0] * w).sum())

    out, c = np_be.attention_forward(q, k, v, 0.3, tile)
    dq, dk, dv = np_be.attention_backward(w, c)
    assert np.all(dq[:, :, 5:7] == 0)
    err, where = max_rel_error(loss, {"q": q, "k": k, "v": v}, {"q": dq, "k": dk, "v": dv}, rng, samples=20)
    assert err < 1e-7, where


def test_cpu_attention_equals_numpy(rng):
    t = 37
    q = rng.normal(0, 1, (2, 4, t, 8))
    k, v = rng.normal(0, 1, (2, 2, t, 8)), rng.normal(0, 1, (2, 2, t, 8))
    dout = rng.normal(0, 1, q.shape)
    ref, rc = np_be.attention_forward(q, k, v, 0.35, 16)
    got, gc = cpu_be.attention_forward(*(a.astype(np.float32) for a in (q, k, v)), 0.35, 16)
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-5
    for a, b in zip(np_be.attention_backward(dout, rc), cpu_be.attention_backward(dout.astype(np.float32), gc)):
        assert b.dtype == np.float32 and np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(a).max())


@pytest.mark.parametrize("kv", ["float32", "float16", "int8"])
def test_cached_attention_op_cpu_equals_numpy(kv, rng):
    hkv, cap, f, h, start, t = 2, 40, 8, 4, 19, 5
    cache = KVCache(hkv, f, 64, kv, capacity=cap)
    keys, vals = rng.normal(0, 1, (start + t, hkv, f)), rng.normal(0, 1, (start + t, hkv, f))
    cache.append(keys[:start], vals[:start])
    cache.append(keys[start:], vals[start:])
    q = rng.normal(0, 1, (t, h, f))
    ref = np.empty((t, h, f))
    np_be.attention_cached(q, cache.k, cache.v, cache.ks, cache.vs, start, 0.3, ref)
    got = np.empty((t, h, f), np.float32)
    cpu_be.attention_cached(q.astype(np.float32), cache.k, cache.v, cache.ks, cache.vs, start, 0.3, got)
    assert np.abs(got - ref).max() < 1e-5
    # against the full causal attention over the same (rounded) keys and values
    kf = cache.k[:, :start + t].astype(np.float64) * (1 if cache.ks is None else cache.ks[:, :start + t, None])
    vf = cache.v[:, :start + t].astype(np.float64) * (1 if cache.vs is None else cache.vs[:, :start + t, None])
    qa = np.zeros((1, h, start + t, f))
    qa[0, :, start:] = q.transpose(1, 0, 2)
    full = _naive_attention(qa, kf[None], vf[None], 0.3)[0, :, start:].transpose(1, 0, 2)
    assert np.allclose(ref, full, atol=1e-12)
    err = np.abs(kf.transpose(1, 0, 2) - keys).max()
    assert err < {"float32": 1e-6, "float16": 2e-3, "int8": 2e-2}[kv]


def test_cpu_float16_cache_reads_every_half_exactly():
    """A cache of one token per head: the output is the cached value itself (0 + 1 * v), so every
    finite float16 (subnormals included; -0 comes back as 0 + -0 = +0) must come back exactly."""
    from bitttt import _core

    halves = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    halves = halves[np.isfinite(halves) & (halves.view(np.uint16) != 0x8000)]
    f = 8
    h = -(-halves.size // f)
    vals = np.zeros(h * f, np.float16)
    vals[:halves.size] = halves
    vc = np.ascontiguousarray(vals.reshape(h, 1, f))
    out = np.empty((1, h, f), np.float32)
    _core.attn_cached(np.zeros((1, h, f), np.float32), np.zeros_like(vc), vc, None, None, 0, 1.0, out)
    assert np.array_equal(out.reshape(-1).view(np.uint32), vals.astype(np.float32).view(np.uint32))


def test_cpu_attention_same_bits_on_any_thread_count(rng, threads):
    import bitttt

    q = rng.normal(0, 1, (2, 4, 50, 8)).astype(np.float32)
    k, v = (rng.normal(0, 1, (2, 2, 50, 8)).astype(np.float32) for _ in range(2))
    runs = []
    for n in (1, 2, 3):
        bitttt.set_num_threads(n)
        out, c = cpu_be.attention_forward(q, k, v, 0.3, 16)
        runs.append((out, *cpu_be.attention_backward(q, c)))
    for r in runs[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(r, runs[0]))


def test_cpu_attention_rejects_bad_shapes():
    from bitttt import _core

    q = np.zeros((1, 3, 4, 8), np.float32)
    k = np.zeros((1, 2, 4, 8), np.float32)  # 2 does not divide 3
    with pytest.raises(ValueError, match="Hkv dividing H"):
        _core.attn_forward(q, k, k, 1.0, 4, np.empty_like(q), np.empty((1, 3, 4), np.float32))
    kc = np.zeros((1, 4, 8), np.float16)
    with pytest.raises(ValueError, match="do not fit"):  # 5 tokens past a cache of 4 rows
        _core.attn_cached(np.zeros((5, 1, 8), np.float32), kc, kc, None, None, 0, 1.0,
                          np.empty((5, 1, 8), np.float32))
    with pytest.raises(ValueError, match="scales"):
        kc8 = np.zeros((1, 4, 8), np.int8)
        _core.attn_cached(np.zeros((1, 1, 8), np.float32), kc8, kc8, None, None, 0, 1.0,
                          np.empty((1, 1, 8), np.float32))


# -- the layer -------------------------------------------------------------------------------
def test_attention_layer_gradients_finite_differences(rng):
    cfg = _cfg(hidden_size=12, num_heads=6, num_kv_heads=2)  # GQA: 3 query heads per key/value head
    layer = Attention(cfg, dtype=np.float64, tile=4)
    for v in layer.params.values():
        v += rng.normal(0, 0.3, v.shape)
    x = rng.normal(0, 1, (2, 9, 12))  # 9 tokens: not a multiple of the tile
    w = rng.normal(0, 1, (2, 9, 12))
    w[1, 3:] = 0  # masked positions

    def loss():
        return float((layer.forward(x) * w).sum())

    loss()
    dx, grads = layer.backward(w)
    err, where = max_rel_error(loss, dict(layer.params, x=x), dict(grads, x=dx), rng, samples=15)
    assert err < 1e-7, where


def test_attention_layer_cpu_equals_numpy(rng):
    cfg = _cfg(hidden_size=32, num_heads=4, num_kv_heads=1, ternary=True)
    a64 = Attention(cfg, dtype=np.float64, tile=16)
    a32 = Attention(cfg, backend="cpu", params={k: v.astype(np.float32) for k, v in a64.params.items()}, tile=16)
    x = rng.normal(0, 1, (2, 41, 32))
    y64, y32 = a64.forward(x), a32.forward(x.astype(np.float32))
    assert np.abs(y64 - y32).max() < 1e-3 * np.abs(y64).max()
    dy = rng.normal(0, 1, y64.shape)
    (dx64, g64), (dx32, g32) = a64.backward(dy), a32.backward(dy.astype(np.float32))
    assert np.abs(dx64 - dx32).max() < 1e-3 * np.abs(dx64).max()
    for k in g64:
        assert np.abs(g64[k] - g32[k]).max() < 1e-3 * np.abs(g64[k]).max(), k


# -- whole models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["attention", "hybrid"])
@pytest.mark.parametrize("masked", [False, True])
def test_two_layer_model_gradients(kind, masked, rng):
    m = BitLlama(_cfg(kind, tie_word_embeddings=not masked), dtype=np.float64)
    m.init_weights(3)
    for v in m.params.values():
        v += rng.normal(0, 0.2, v.shape)
    tokens, targets = rng.integers(0, 11, (2, 7)), rng.integers(0, 11, (2, 7))
    mask = (rng.random((2, 7)) > 0.3).astype(np.float64) if masked else None
    if masked:
        mask[0, 0] = 1
    loss, grads = m.loss_and_grads(tokens, targets, mask)
    assert list(grads) == list(m.params)
    err, where = max_rel_error(lambda: m.loss_and_grads(tokens, targets, mask)[0], m.params, grads, rng, samples=3)
    assert err < 1e-6, where


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
def test_model_cpu_equals_numpy(kind, rng):
    cfg = _cfg(kind, vocab_size=50, hidden_size=32, ternary=True)
    m64 = BitLlama(cfg, dtype=np.float64)
    m32 = BitLlama(cfg)
    m32.load_state_dict(m64.params)
    tokens = rng.integers(0, 50, (2, 30))
    l64, g64 = m64.loss_and_grads(tokens, tokens)
    l32, g32 = m32.loss_and_grads(tokens, tokens)
    assert l32 == pytest.approx(l64, rel=1e-5)
    for k in g64:
        assert np.abs(g64[k] - g32[k]).max() <= 2e-3 * np.abs(g64[k]).max() + 1e-7, k


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
@pytest.mark.parametrize("ternary", [False, True])
def test_loss_and_gradients_match_torch_autograd(kind, ternary, rng):
    """Against bench/torch_bitllama.py (scaled_dot_product_attention); skipped without PyTorch."""
    import os
    import sys

    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    from torch_bitllama import TorchBitLlama

    m = BitLlama(_cfg(kind, vocab_size=50, hidden_size=32, ternary=ternary), dtype=np.float64)
    m.init_weights(2)
    for v in m.params.values():
        v += rng.normal(0, 0.1, v.shape)
    tokens, targets = rng.integers(0, 50, (2, 11)), rng.integers(0, 50, (2, 11))
    loss, grads = m.loss_and_grads(tokens, targets)
    tm = TorchBitLlama(m.config, m.params)
    tl = tm.loss(torch.from_numpy(tokens), torch.from_numpy(targets))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    for name, g in grads.items():
        ref = tm.w(name).grad.numpy()
        assert np.abs(g - ref).max() <= 1e-10 * max(np.abs(ref).max(), 1e-12), name


def _trained_looking(kind, seed=0, **kw):
    cfg = _cfg(kind, vocab_size=300, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=96,
               mini_batch_size=8, ternary=True, **kw)
    m = BitLlama(cfg)
    m.init_weights(seed)
    m.params["embed.weight"] *= 40
    for k in m.params:
        if ".attn.q_proj" in k or ".attn.k_proj" in k:
            m.params[k] *= 4  # sharper attention than at init
    return m


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
@pytest.mark.parametrize("kv", ["float32", "int8"])
def test_kv_cache_prefill_chunks_and_steps_match_full_forward(kind, kv):
    from bitttt.session import InferenceModel

    m = _trained_looking(kind)
    im = InferenceModel.from_model(m)
    im.kv_dtype = kv
    ids = np.random.default_rng(0).integers(0, 300, 45)
    ref = m.forward(ids)
    st = im.new_state()
    got = im.feed(st, ids, all_logits=True)
    assert np.abs(got - ref).max() <= (2e-3 if kv == "float32" else 3e-2) * np.abs(ref).max()
    # in odd chunks and token by token (the decode step): the same C path per query, the same bits
    st2, parts, i = im.new_state(), [], 0
    for n in (1, 3, 8, 13, 1, 19):
        parts.append(im.feed(st2, ids[i:i + n], all_logits=True))
        i += n
    assert st2.n_tokens == 45 and st2.context == 45
    assert np.array_equal(np.concatenate(parts), got)
    st3 = im.new_state()
    one = np.stack([im.feed(st3, [t]) for t in ids])
    assert np.array_equal(one, got)
    for li, c in st.kv.items():
        assert np.array_equal(c.k[:, :45], st3.kv[li].k[:, :45]) and np.array_equal(c.v[:, :45], st3.kv[li].v[:, :45])


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
def test_greedy_decode_with_kv_cache_equals_full_forward_argmax(kind):
    from bitttt.session import InferenceModel

    m = _trained_looking(kind, seed=3)
    im = InferenceModel.from_model(m)  # float16 cache, the default
    prompt = list(np.random.default_rng(1).integers(0, 300, 11))
    st = im.new_state()
    assert st.kv[1].dtype == "float16"
    assert_greedy_matches_forward(m, im, st, prompt)


def test_int8_kv_cache_costs_little():
    from bitttt.session import InferenceModel

    m = _trained_looking("attention", seed=5)
    im = InferenceModel.from_model(m)
    ids = list(np.random.default_rng(2).integers(0, 300, 60))
    res = {}
    for kv in ("float32", "float16", "int8"):
        im.kv_dtype = kv
        res[kv] = im.score(ids, chunk=7)[0] / (len(ids) - 1)
    assert abs(res["float16"] - res["float32"]) < 1e-3 * res["float32"]
    assert abs(res["int8"] - res["float32"]) < 2e-2 * res["float32"]
    st = im.new_state()
    im.feed(st, ids)
    assert st.kv[0].nbytes == 60 * (2 * 2 * 16 + 2 * 2 * 4) and st.kv[0].k.dtype == np.int8


def test_context_limit_is_a_clear_error_and_changes_nothing():
    from bitttt.session import InferenceModel

    im = InferenceModel.from_model(_trained_looking("hybrid", max_position_embeddings=20))
    st = im.new_state()
    im.feed(st, list(range(15)))
    before = st.copy()
    with pytest.raises(ValueError, match="max_position_embeddings = 20"):
        im.feed(st, list(range(6)))
    assert st.context == 15 and st.ttt.n_tokens == 15 and st.ttt.pos == before.ttt.pos
    assert np.array_equal(st.ttt.W0, before.ttt.W0) and np.array_equal(st.kv[1].k, before.kv[1].k)
    im.feed(st, list(range(5)))  # up to the limit is fine
    with pytest.raises(ValueError, match="max_position_embeddings"):
        BitLlama(_cfg(max_position_embeddings=8)).forward(np.zeros(9, np.int64))


def test_memory_files_are_ttt_only(tmp_path):
    from bitttt.formats import MemoryFileError
    from bitttt.session import InferenceModel

    att = InferenceModel.from_model(_trained_looking("attention"))
    st = att.new_state()
    att.feed(st, [1, 2, 3])
    with pytest.raises(MemoryFileError, match="attention layers only"):
        att.save_memory(st, str(tmp_path / "a.mem"))
    assert not (tmp_path / "a.mem").exists()
    hyb = InferenceModel.from_model(_trained_looking("hybrid"))
    st = hyb.new_state()
    hyb.feed(st, list(range(13)))
    hyb.save_memory(st, str(tmp_path / "h.mem"))
    back = hyb.load_memory(str(tmp_path / "h.mem"))
    assert back.n_tokens == 13 and back.context == 0  # the TTT part only; the KV caches start empty
    for name in ("W0", "b0", "Kb", "Gb", "Sb"):
        assert np.array_equal(getattr(back.ttt, name), getattr(st.ttt, name))
    assert back.ttt.W0.shape[0] == 1  # one TTT layer of two


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
def test_checkpoint_export_and_load(kind, tmp_path):
    import bitttt
    from bitttt.data import train_tokenizer
    from bitttt.formats import export_checkpoint, save_checkpoint
    from bitttt.optim import AdamW
    from bitttt.session import InferenceModel

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "café", "naïve", "über", "日本", "語", "red", "ball"]
    (tmp_path / "t.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(400)), encoding="utf-8")
    tok = train_tokenizer([str(tmp_path / "t.txt")], vocab_size=300)
    m = _trained_looking(kind, seed=7)
    ck = tmp_path / "ck.safetensors"
    save_checkpoint(ck, params=m.params, optim=AdamW(m.params).state_tensors(), config=m.config, train={},
                    state={"step": 1, "optim_t": 0}, tokenizer=tok.to_bytes())
    out = tmp_path / "m.safetensors"
    export_checkpoint(str(ck), str(out), head="float32")
    a, b = InferenceModel.from_checkpoint(str(ck)), InferenceModel.from_model_file(str(out))
    assert a.config == m.config == b.config and a.model_id == b.model_id
    ids = np.random.default_rng(0).integers(0, 300, 29)
    la, lb = a.feed(a.new_state(), ids, all_logits=True), b.feed(b.new_state(), ids, all_logits=True)
    assert np.abs(la - lb).max() <= 1e-3 * np.abs(la).max()
    text = bitttt.load(str(out)).generate("the cat", max_tokens=5, seed=1)
    assert isinstance(text, str)


def test_training_memory_grows_linearly_in_t():
    """Peak traced memory of one training step per token at T = 4096 within 2x of T = 1024:
    no [T, T] buffer (one would be 4096^2 * 4 heads * 4 bytes = 256 MiB here)."""
    import tracemalloc

    cfg = BitLlamaConfig(vocab_size=64, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=32,
                         num_layers=1, arch="attention", max_position_embeddings=4096)
    m = BitLlama(cfg)
    rng = np.random.default_rng(0)
    per_token = {}
    for t in (1024, 4096):
        tokens = rng.integers(0, 64, (1, t))
        tracemalloc.start()
        m.loss_and_grads(tokens, tokens)
        per_token[t] = tracemalloc.get_traced_memory()[1] / t
        tracemalloc.stop()
    assert per_token[4096] < 2 * per_token[1024], per_token


def test_scale_matches_head_dim():
    assert math.isclose(1 / math.sqrt(_cfg().head_dim), 0.5)


# -- training, then the commands ----------------------------------------------------------------
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from bitttt.data import prepare

    rng = np.random.default_rng(0)
    names, verbs = ["Tom", "Anna", "Ben", "Lily", "Max", "Sue"], ["saw", "liked", "found", "lost", "made", "wanted"]
    things = ["ball", "cat", "tree", "cake", "boat", "kite", "dog"]
    docs = [" ".join(f"{rng.choice(names)} {rng.choice(verbs)} a {rng.choice(things)}." for _ in range(5)) + " The end."
            for _ in range(400)]
    d = tmp_path_factory.mktemp("corpus")
    (d / "stories.txt").write_text("\n<|endoftext|>\n".join(docs))
    prepare([str(d / "stories.txt")], str(d / "data"), vocab_size=300, val_fraction=0.1, seed=0, progress=False)
    return str(d / "data")


def _run(module, args, stdin=None):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=180)


@pytest.mark.parametrize("kind", ["attention", "hybrid"])
def test_train_then_infer_eval_chat_export(kind, prepared, tmp_path):
    from bitttt.trainer import TrainConfig, Trainer

    model = {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 64,
             "mini_batch_size": 8, "arch": "attention", "layer_types": TYPES[kind], "max_position_embeddings": 64}
    cfg = TrainConfig(data=prepared, out_dir=str(tmp_path), name="run", model=model, batch_size=4, seq_len=32,
                      max_steps=30, max_time=0.0, warmup_steps=5, lr=3e-3, min_lr=3e-4, eval_interval=30,
                      eval_batches=2, ckpt_interval=30, log_interval=10, seed=1, sample_tokens=0)
    tr = Trainer(cfg, progress=False)
    ev0 = tr.evaluate()
    tr.fit()
    ev1 = tr.evaluate()
    assert ev1["val_loss"] < ev0["val_loss"] - 0.5
    run = str(tmp_path / "run")
    r = _run("bitttt.infer", ["-m", run, "-p", "Tom saw", "-n", "8", "-s", "1"])
    assert r.returncode == 0 and r.stdout.startswith("Tom saw"), r.stderr
    r = _run("bitttt.infer", ["-m", run, "-p", "Tom saw a cat. " * 20, "-n", "4"])  # past the 64 tokens of context
    assert r.returncode == 2 and "max_position_embeddings = 64" in r.stderr, r.stderr
    (tmp_path / "v.txt").write_text("Tom saw a cat. Anna liked a ball. The end." * 8)
    r = _run("bitttt.eval", ["-m", run, "--data", str(tmp_path / "v.txt")])  # 128 tokens: windows of 64
    assert r.returncode == 0 and "perplexity" in r.stdout, r.stderr
    r = _run("bitttt.infer", ["-m", run, "-i", "-n", "4", "-s", "1", "--memory", str(tmp_path / "m.mem")],
             stdin="Tom saw\n/sleep\n/quit\n")
    if kind == "attention":
        assert r.returncode == 2 and "attention layers only" in r.stderr
        r = _run("bitttt.infer", ["-m", run, "-i", "-n", "4", "-s", "1"], stdin="Tom saw\n/sleep\n/quit\n")
        assert r.returncode == 0 and "[error: /sleep replays" in r.stdout, r.stderr
    else:
        assert r.returncode == 0 and "[slept: replayed" in r.stdout, r.stderr
        assert (tmp_path / "m.mem").exists()
    r = _run("bitttt.export", [run, "--out", str(tmp_path / "m.safetensors")])
    assert r.returncode == 0, r.stderr
    r = _run("bitttt.infer", ["-m", str(tmp_path / "m.safetensors"), "-p", "Anna", "-n", "6", "-s", "2"])
    assert r.returncode == 0 and r.stdout.startswith("Anna"), r.stderr
