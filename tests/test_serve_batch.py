"""BitLlama.step_batch: B sequences' next tokens in one pass equal the sequences stepped one
by one, bit for bit (logits and every tensor of every state), on the int8 paths."""
import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig
from bitttt.session import InferenceModel

STATE = ("W0", "b0", "Kb", "Gb", "Sb")


def _model(ternary=True, backend="cpu", seed=0):
    cfg = BitLlamaConfig(vocab_size=300, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                         mini_batch_size=8, ternary=ternary)
    m = BitLlama(cfg, backend=backend)
    m.init_weights(seed)
    rng = np.random.default_rng(seed + 1)
    m.params["embed.weight"] *= 40
    for k, v in m.params.items():
        if k.endswith(("learnable_token_idx", "learnable_ttt_lr_bias", "ttt_norm_bias")):
            m.params[k] = (v + rng.normal(0, 0.3, v.shape)).astype(m.dtype)
    return m


def _check(step_batch, step_one, new_state, feed, vocab, batch=5, steps=20, seed=0, exact=True):
    rng = np.random.default_rng(seed)
    states = [new_state() for _ in range(batch)]
    for i, s in enumerate(states):  # different lengths: the sequences sit at different mini-batch positions
        feed(s, rng.integers(0, vocab, 3 + 2 * i))
    ref = [s.copy() for s in states]
    assert len({s.pos for s in states}) > 1
    for _ in range(steps):  # crosses mini-batch boundaries (K = 8 in the tiny model)
        toks = rng.integers(0, vocab, batch)
        got = step_batch(states, toks)
        want = np.stack([step_one(r, int(t)) for r, t in zip(ref, toks)])
        assert got.shape == (batch, vocab)
        if exact:
            assert np.array_equal(got, want)
        else:
            assert np.abs(got - want).max() <= 1e-12 * np.abs(want).max()
    for s, r in zip(states, ref):
        assert (s.pos, s.n_tokens) == (r.pos, r.n_tokens)
        for name in STATE:
            a, b = getattr(s, name), getattr(r, name)
            assert np.array_equal(a, b) if exact else np.allclose(a, b, rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("ternary", [True, False])
def test_step_batch_equals_one_by_one_fused(ternary):
    """cpu backend, model made for inference: one by one is the fused C decoder (ternary)."""
    im = InferenceModel.from_model(_model(ternary))
    m = im.model
    _check(m.step_batch, m.step, im.new_state, lambda s, ids: im.feed(s, ids), 300)


def test_step_batch_equals_one_by_one_shipped_int8_head():
    """The shipped model: packed weights and an int8 LM head (gemm_s8)."""
    import bitttt
    from bitttt.infer import SHIPPED_MODEL

    im = bitttt.load(SHIPPED_MODEL).im
    assert isinstance(im.model.head, im.model.backend.Int8Head)
    m = im.model
    _check(m.step_batch, m.step, im.new_state, lambda s, ids: im.feed(s, ids), im.config.vocab_size, batch=4,
           steps=18)


def test_step_batch_numpy_backend_matches_prefill():
    """The float64 spec: NumPy's BLAS may sum a [B, K] product in another order than [1, K], so
    this path agrees to rounding, not to the bit."""
    m = _model(True, backend="numpy")
    _check(m.step_batch, lambda s, t: m.prefill(s, [t]), m.new_state, m.prefill, 300, batch=3, steps=10, exact=False)


def test_step_batch_one_state_and_errors():
    im = InferenceModel.from_model(_model(True))
    m = im.model
    s, r = im.new_state(), im.new_state()
    assert np.array_equal(m.step_batch([s], [7])[0], m.step(r, 7))
    with pytest.raises(ValueError, match="one token per state"):
        m.step_batch([s, r], [1])
    with pytest.raises(ValueError, match="twice"):
        m.step_batch([s, s], [1, 2])
    with pytest.raises(ValueError, match="token ids must be in"):
        m.step_batch([s], [300])
    assert s.n_tokens == 1  # refused calls changed nothing
