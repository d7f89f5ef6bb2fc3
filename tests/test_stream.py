"""Streaming (stateful) training: the TTT state carried across consecutive windows, the gradient
truncated at the window edge, resets at mini-batch starts, the Streams loader and a bit-identical
resume in the middle of a stream."""
import copy
import json
import os

import numpy as np
import pytest
from gradcheck import max_rel_error

from bitttt import BitLlama, BitLlamaConfig
from bitttt.backend import cpu as CPU
from bitttt.backend import numpy as NP
from bitttt.data import Streams, TokenData
from bitttt.formats import CheckpointError, load_checkpoint
from bitttt.model import StreamCarry


def _cfg(**kw):
    base = dict(vocab_size=13, hidden_size=8, num_heads=2, intermediate_size=12, num_layers=2, mini_batch_size=4,
                ternary=False)
    base.update(kw)
    return BitLlamaConfig(**base)


def _model(cfg, seed=3, dtype=np.float64, rng=None):
    m = BitLlama(cfg, dtype=dtype)
    m.init_weights(seed)
    if rng is not None:
        for v in m.params.values():
            v += rng.normal(0, 0.2, v.shape).astype(v.dtype)
    return m


def _xent(logits, targets):
    mx = logits.max(-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(-1)) + mx[..., 0]
    return float((lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).mean())


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_windows_with_a_carried_state_equal_one_long_read(dtype, rng):
    """Window 2 read from the state window 1 left gives the loss of the same tokens in one forward
    over both windows (the carry is the whole state: nothing is lost at the edge)."""
    cfg = _cfg()
    m = _model(cfg, dtype=dtype, rng=rng)
    ids = rng.integers(0, 13, (3, 17))
    x, y = ids[:, :-1], ids[:, 1:]
    full = m.forward(x)
    carry = StreamCarry(cfg, 3, dtype)
    l1, g1 = m.loss_and_grads(x[:, :8], y[:, :8], carry=carry)
    l0, g0 = m.loss_and_grads(x[:, :8], y[:, :8])
    assert l1 == l0 and all(np.array_equal(g1[k], g0[k]) for k in g0)  # a fresh carry is the plain forward
    assert not carry.fresh.any()
    l2, _ = m.loss_and_grads(x[:, 8:], y[:, 8:], carry=carry)
    assert l2 == pytest.approx(_xent(full[:, 8:].astype(np.float64), y[:, 8:]), rel=1e-12 if dtype == np.float64
                               else 1e-6)
    # forward(carry=) hands on the same state as loss_and_grads(carry=)
    c1 = StreamCarry(cfg, 3, dtype)
    m.loss_and_grads(x[:, :8], y[:, :8], carry=c1)
    c2 = StreamCarry(cfg, 3, dtype)
    m.forward(x[:, :8], carry=c2)
    for li in c2.layers:
        assert np.array_equal(c2.W[li], c1.W[li]) and np.array_equal(c2.b[li], c1.b[li])
        assert np.abs(c2.W[li] - m.params[f"layers.{li}.ttt.W1"][None]).max() > 0  # it has read the window
    np.testing.assert_allclose(m.forward(x[:, 8:], carry=c2), full[:, 8:], rtol=1e-10 if dtype == np.float64
                               else 1e-4, atol=1e-10 if dtype == np.float64 else 1e-4)


def _carried(m, cfg, x, y, bsz):
    carry = StreamCarry(cfg, bsz, np.float64)
    m.loss_and_grads(x, y, carry=carry)
    return carry


@pytest.mark.parametrize("with_resets", [False, True])
def test_streaming_gradient_is_the_truncated_gradient(with_resets, rng):
    """Finite differences (float64) of the loss of a window whose starting state is held fixed
    (the carried state as a constant) equal the analytic gradient: the truncated-BPTT formula.
    With resets, mini-batch 1 of row 0 restarts from (W1, b1) inside the window."""
    cfg = _cfg()
    m = _model(cfg, rng=rng)
    ids = rng.integers(0, 13, (2, 17))
    x, y = ids[:, :-1], ids[:, 1:]
    carry = _carried(m, cfg, x[:, :8], y[:, :8], 2)
    resets = None
    if with_resets:
        resets = np.zeros((2, 2), np.uint8)
        resets[0, 1] = 1
    loss, grads = m.loss_and_grads(x[:, 8:], y[:, 8:], carry=copy.deepcopy(carry), resets=resets)
    arrays = {k: v for k, v in m.params.items() if with_resets or not k.endswith(("W1", "b1"))}
    err, where = max_rel_error(lambda: m.loss_and_grads(x[:, 8:], y[:, 8:], carry=copy.deepcopy(carry),
                                                        resets=resets)[0], arrays, grads, rng, samples=3)
    assert err < 1e-6, where
    # W1 and b1 get a gradient only through the mini-batches that start from them
    if not with_resets:
        assert np.abs(grads["layers.0.ttt.W1"]).max() == 0 and np.abs(grads["layers.1.ttt.b1"]).max() == 0
    else:
        assert np.abs(grads["layers.0.ttt.W1"]).max() > 0


def test_fresh_rows_start_from_the_trained_state(rng):
    """A carry row marked fresh gives exactly the loss and gradient of a plain window for that row."""
    cfg = _cfg()
    m = _model(cfg, rng=rng)
    ids = rng.integers(0, 13, (2, 17))
    x, y = ids[:, :-1], ids[:, 1:]
    carry = _carried(m, cfg, x[:, :8], y[:, :8], 2)
    carry.fresh[:] = True
    l1, g1 = m.loss_and_grads(x[:, 8:], y[:, 8:], carry=carry)
    l0, g0 = m.loss_and_grads(x[:, 8:], y[:, 8:])
    assert l1 == pytest.approx(l0, rel=1e-13)
    for k in g0:
        np.testing.assert_allclose(g1[k], g0[k], rtol=1e-10, atol=1e-13)


def test_cpu_streaming_equals_numpy(rng):
    """The C inner loop with a carried state, resets and the final state equals the float64 spec."""
    cfg = _cfg(hidden_size=32, intermediate_size=24)
    m64 = _model(cfg, rng=rng)
    m32 = BitLlama(cfg, dtype=np.float32)
    m32.load_state_dict({k: v.astype(np.float32) for k, v in m64.params.items()})
    ids = rng.integers(0, 13, (2, 25))
    x, y = ids[:, :-1], ids[:, 1:]
    c64, c32 = StreamCarry(cfg, 2, np.float64), StreamCarry(cfg, 2, np.float32)
    resets = np.zeros((2, 3), np.uint8)
    resets[1, 2] = 1
    for w in range(2):
        sl = slice(12 * w, 12 * w + 12)
        a, ga = m64.loss_and_grads(x[:, sl], y[:, sl], carry=c64, resets=resets)
        b, gb = m32.loss_and_grads(x[:, sl], y[:, sl], carry=c32, resets=resets)
        assert b == pytest.approx(a, rel=1e-5)
        for k in ga:
            assert np.abs(ga[k] - gb[k]).max() <= 1e-4 * max(np.abs(ga[k]).max(), 1e-3), k
        for li in c64.layers:
            np.testing.assert_allclose(c32.W[li], c64.W[li], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(c32.b[li], c64.b[li], rtol=1e-4, atol=1e-5)


def test_op_streaming_arguments_on_both_backends(rng):
    """The backend op alone: init + resets + final on cpu and numpy; a row whose every mini-batch
    continues a carried state gets no gradient for (W1, b1); bad reset shapes are refused."""
    b, t, h, f, k = 2, 10, 2, 4, 4
    d = h * f
    q, kx, v = (rng.normal(0, 1, (b, t, d)) for _ in range(3))
    lr = rng.uniform(0.01, 0.1, (b, h, t))
    tok = rng.uniform(0.2, 1.0, k)
    W1, b1 = rng.normal(0, 0.3, (h, f, f)), rng.normal(0, 0.3, (h, 1, f))
    gam, bet = rng.normal(1, 0.1, (h, f)), rng.normal(0, 0.1, (h, f))
    init = (rng.normal(0, 0.3, (b, h, f, f)), rng.normal(0, 0.3, (b, h, 1, f)))
    resets = np.array([[0, 1, 0], [0, 0, 0]], np.uint8)
    args = (q, kx, v, lr, tok, W1, b1, gam, bet)
    o64, c64, (Wf64, bf64) = NP.ttt_forward(*args, h, k, 500.0, init=init, resets=resets, final=True)
    o32, c32, (Wf32, bf32) = CPU.ttt_forward(*(a.astype(np.float32) for a in args), h, k, 500.0,
                                             init=tuple(a.astype(np.float32) for a in init), resets=resets,
                                             final=True)
    np.testing.assert_allclose(o32, o64, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(Wf32, Wf64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(bf32, bf64, rtol=1e-4, atol=1e-5)
    dm = rng.normal(0, 1, (b, t, d))
    g64, g32 = NP.ttt_backward(dm, c64), CPU.ttt_backward(dm.astype(np.float32), c32)
    for name in g64._fields:
        x64, x32 = getattr(g64, name), getattr(g32, name)
        assert np.abs(x64 - x32).max() <= 1e-4 * max(np.abs(x64).max(), 1e-3), name
    # only row 0 restarts (at mini-batch 1): (W1, b1)'s gradient is row 0's from mini-batch 1 on
    only0 = NP.ttt_backward(dm * np.array([1.0, 0.0])[:, None, None], c64)
    np.testing.assert_allclose(g64.dW1, only0.dW1, rtol=1e-12, atol=1e-14)
    # with no init and no resets the final state equals the start of a next window
    _, _, (Wa, ba) = CPU.ttt_forward(*(a.astype(np.float32) for a in args), h, k, 500.0, final=True)
    assert Wa.shape == (b, h, f, f) and np.isfinite(Wa).all()
    with pytest.raises(ValueError, match="resets has shape"):
        CPU.ttt_forward(*(a.astype(np.float32) for a in args), h, k, 500.0, resets=np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="resets has shape"):
        NP.ttt_forward(*args, h, k, 500.0, resets=np.zeros((3, 3), np.uint8))


def _token_folder(tmp_path, n=1000, vocab=50):
    """A prepared folder of n ids 0..n-1 mod vocab (a tokenizer file is not needed by TokenData)."""
    from bitttt.data.layout import FORMAT, FORMAT_VERSION

    d = tmp_path / "tok"
    d.mkdir()
    (np.arange(n) % vocab).astype("<u2").tofile(d / "train.bin")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "dtype": "uint16",
                "tokenizer": {"vocab_size": vocab, "sha256": "0" * 64},
                "splits": {"train": {"file": "train.bin", "tokens": n}}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    return TokenData(d, "train")


def test_streams_read_consecutive_windows(tmp_path):
    data = _token_folder(tmp_path, n=1001, vocab=1000)  # id == position
    s = Streams(data, batch_size=3, seq_len=10, seed=4, groups=2)
    assert s.n_windows == 99
    seen = {}
    for i in range(8):
        x, y, m = s.next()
        g = i % 2
        assert s.group == g and m is None
        assert np.array_equal(y, x + 1)
        if i < 2:
            assert s.fresh.all()
        else:
            prev = seen[g]
            follows = (x[:, 0] == prev[:, -1] + 1)
            assert np.array_equal(~follows, s.fresh)  # fresh exactly where the stream jumped (the wrap)
        seen[g] = x
    state = s.state()
    after = [s.next() for _ in range(3)]
    s2 = Streams(data, batch_size=3, seq_len=10, seed=4, groups=2)
    s2.load_state(state)
    for (a, _, _), (b, _, _) in zip(after, [s2.next() for _ in range(3)]):
        assert np.array_equal(a, b)
    # the streams start spread over the text
    starts = Streams(data, batch_size=4, seq_len=10, seed=0).first
    assert len(set(starts.tolist())) == 4
    with pytest.raises(ValueError, match="groups"):
        Streams(data, batch_size=3, seq_len=10, groups=0)
    with pytest.raises(ValueError, match="too few"):
        Streams(data, batch_size=3, seq_len=2000)


def _stream_config(tmp_path, name, **kw):
    from bitttt.trainer import TrainConfig

    text = "\n<|endoftext|>\n".join(
        f"Story {i}. The {w} went to the {v} and saw a {u} there." for i, (w, v, u) in
        enumerate(zip(["cat", "dog", "bird", "fox"] * 60, ["park", "shop", "hill", "lake", "sea"] * 48,
                      ["tree", "boat", "kite"] * 80)))
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(text)
    base = dict(out_dir=str(tmp_path / "runs"), name=name, corpus=[str(corpus)], vocab_size=300,
                model={"hidden_size": 16, "num_layers": 2, "num_heads": 2, "intermediate_size": 24,
                       "mini_batch_size": 4},
                batch_size=2, seq_len=16, grad_accum=2, stream=True, reset_at_eot=True, max_steps=6, max_time=0,
                eval_interval=3, eval_batches=2, ckpt_interval=3, log_interval=1, sample_tokens=0, threads=1,
                warmup_steps=2)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_mid_stream_is_bit_identical(tmp_path):
    """Six steps in one go equal three steps, a stop, and a resume for three more: weights,
    optimizer moments and the carried states (part of the checkpoint) bit for bit."""
    from bitttt.trainer import Trainer

    straight = Trainer(_stream_config(tmp_path, "straight"), progress=False)
    straight.fit()
    part = Trainer(_stream_config(tmp_path, "part", max_steps=6), progress=False)
    for _ in range(3):
        part.train_step()
    part.save()
    resumed = Trainer.resume(os.path.join(str(tmp_path / "runs"), "part"), progress=False)
    assert resumed.step == 3
    for g, c in enumerate(resumed.carries):
        for li in c.layers:
            assert np.array_equal(c.W[li], part.carries[g].W[li])
    resumed.fit()
    for k, v in straight.model.params.items():
        assert np.array_equal(v, resumed.model.params[k]), k
    for k, v in straight.opt.state_tensors().items():
        assert np.array_equal(v, resumed.opt.state_tensors()[k]), k
    for g in range(2):
        for li in straight.carries[g].layers:
            assert np.array_equal(straight.carries[g].W[li], resumed.carries[g].W[li])
        assert np.array_equal(straight.carries[g].fresh, resumed.carries[g].fresh)
    # the checkpoint holds the streaming state; one without it is refused with the reason
    ck = load_checkpoint(os.path.join(straight.ckpt_dir, "step_0000006.safetensors"))
    assert sorted(ck.extra) == sorted(f"stream.{g}.{n}" for g in range(2)
                                      for n in ("W.0", "W.1", "b.0", "b.1", "fresh", "read"))


def test_streaming_state_differs_from_random_windows_and_is_checked(tmp_path):
    from bitttt.formats import save_checkpoint
    from bitttt.trainer import Trainer

    t = Trainer(_stream_config(tmp_path, "chk", max_steps=2), progress=False)
    t.train_step()
    assert not any(c.fresh.all() for c in t.carries)
    path = t.save()
    ck = load_checkpoint(path)
    bad = dict(ck.extra)
    bad["stream.0.W.0"] = bad["stream.0.W.0"][:1]
    save_checkpoint(path, params=ck.params, optim=ck.optim, config=ck.config, train=ck.train, state=ck.state,
                    tokenizer=ck.tokenizer, extra=bad)
    with pytest.raises(CheckpointError, match="stream.0.W.0"):
        load_checkpoint(path)


def test_stream_settings_are_validated(tmp_path):
    from bitttt.trainer import TrainConfig

    with pytest.raises(ValueError, match="reset_at_eot needs train.stream"):
        TrainConfig(reset_at_eot=True, stream=False)
    with pytest.raises(TypeError, match="train.stream must be true or false"):
        TrainConfig(stream=1)
    cfg = _cfg()
    m = _model(cfg)
    with pytest.raises(ValueError, match="holds 3 sequences"):
        m.loss_and_grads(np.zeros((2, 8), int), np.zeros((2, 8), int), carry=StreamCarry(cfg, 3))


def test_training_memory_per_token_does_not_grow_with_length(rng):
    """The backward keeps O(T) intermediates (no T x T buffer): the traced peak of a step per
    token is the same at T = 256 x 4 sequences and T = 1024 x 1 sequence (the same tokens)."""
    import tracemalloc

    cfg = _cfg(vocab_size=64, hidden_size=32, intermediate_size=48, mini_batch_size=16)
    m = _model(cfg, dtype=np.float32)
    per_token = []
    for bsz, t in ((4, 256), (1, 1024)):
        ids = rng.integers(0, 64, (bsz, t + 1))
        m.loss_and_grads(ids[:, :-1], ids[:, 1:])  # warm caches
        tracemalloc.start()
        m.loss_and_grads(ids[:, :-1], ids[:, 1:], carry=StreamCarry(cfg, bsz))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        per_token.append(peak / (bsz * t))
    assert per_token[1] < 1.15 * per_token[0], per_token


def test_state_decay_reads_the_same_in_training_and_inference(rng):
    """With config.state_decay the state moves back toward the fresh state every
    state_decay_every tokens: the training windows with a carried state (decayed at the window
    edges) give the logits the recurrent read gives (prefill at once, in pieces or token by
    token), and one decay point moves the state exactly the share asked."""
    cfg = _cfg(state_decay=0.25, state_decay_every=8)
    assert cfg.to_dict()["state_decay"] == 0.25 and "state_decay" not in _cfg().to_dict()
    m = _model(cfg, rng=rng)
    ids = rng.integers(0, 13, 25)
    carry = StreamCarry(cfg, 1, np.float64)
    train = np.concatenate([m.forward(ids[None, w * 8:(w + 1) * 8], carry=carry)[0] for w in range(3)])
    st = m.new_state()
    read = m.prefill(st, ids[:24], all_logits=True)
    np.testing.assert_allclose(read, train, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(st.W0, np.stack([carry.W[li][0] for li in carry.layers]), rtol=1e-9, atol=1e-12)
    pieces = m.new_state()
    got = np.concatenate([m.prefill(pieces, ids[a:b], all_logits=True) for a, b in ((0, 5), (5, 13), (13, 24))])
    np.testing.assert_allclose(got, read, rtol=1e-12, atol=1e-13)
    one = m.new_state()
    steps = np.stack([m.step(one, int(t)) for t in ids[:24]])
    np.testing.assert_allclose(steps, read, rtol=1e-12, atol=1e-13)
    # one decay point: W <- W1 + 0.75 (W - W1)
    plain = BitLlama(_cfg(), dtype=np.float64)
    plain.load_state_dict(m.params)
    a, b = plain.new_state(), m.new_state()
    plain.prefill(a, ids[:8])
    m.prefill(b, ids[:8])
    W1 = m.new_state().W0
    np.testing.assert_allclose(b.W0, W1 + 0.75 * (a.W0 - W1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad,match", [({"state_decay": 1.0, "state_decay_every": 8}, "in \\[0, 1\\)"),
                                       ({"state_decay": 0.5}, "go together"),
                                       ({"state_decay": 0.5, "state_decay_every": 6}, "multiple of"),
                                       ({"state_decay": "x", "state_decay_every": 8}, "must be a number")])
def test_state_decay_settings_are_checked(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        _cfg(**bad)
