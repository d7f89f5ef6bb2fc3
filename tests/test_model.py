"""BitLlama: whole-model gradients, state dict, validation."""
import numpy as np
import pytest
from gradcheck import max_rel_error

import bitttt
from bitttt import BitLlama, BitLlamaConfig
from bitttt.layers import NonFiniteError
from bitttt.model import param_shapes


def _small(ternary=False, tie=True, layers=2):
    return BitLlamaConfig(vocab_size=11, hidden_size=8, num_heads=2, intermediate_size=12, num_layers=layers,
                          mini_batch_size=4, ternary=ternary, tie_word_embeddings=tie)


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("masked", [False, True])
def test_two_layer_model_gradients(tie, masked, rng):
    m = BitLlama(_small(tie=tie), dtype=np.float64)
    m.init_weights(3)
    for v in m.params.values():
        v += rng.normal(0, 0.2, v.shape)
    tokens = rng.integers(0, 11, (2, 7))
    targets = rng.integers(0, 11, (2, 7))
    mask = (rng.random((2, 7)) > 0.3).astype(np.float64) if masked else None
    if masked:
        mask[0, 0] = 1
    loss, grads = m.loss_and_grads(tokens, targets, mask)
    assert list(grads) == list(m.params)
    err, where = max_rel_error(lambda: m.loss_and_grads(tokens, targets, mask)[0], m.params, grads, rng, samples=3)
    assert err < 1e-6, where


def test_tied_head_gradient_includes_both_uses(rng):
    cfg = _small(tie=True)
    m = BitLlama(cfg, dtype=np.float64)
    untied = BitLlama(BitLlamaConfig(**dict(cfg.to_dict(), tie_word_embeddings=False)), dtype=np.float64)
    sd = m.state_dict()
    untied.load_state_dict(dict(sd, **{"lm_head.weight": sd["embed.weight"].copy()}))
    tokens, targets = rng.integers(0, 11, (1, 6)), rng.integers(0, 11, (1, 6))
    l1, g1 = m.loss_and_grads(tokens, targets)
    l2, g2 = untied.loss_and_grads(tokens, targets)
    assert l1 == pytest.approx(l2, rel=1e-12)
    assert np.allclose(g1["embed.weight"], g2["embed.weight"] + g2["lm_head.weight"], rtol=1e-10, atol=1e-14)


def test_forward_shapes_dtypes_and_state_dict(rng):
    cfg = BitLlamaConfig(vocab_size=64, hidden_size=32, num_heads=2, intermediate_size=48, num_layers=2)
    m = BitLlama(cfg)
    tokens = rng.integers(0, 64, (3, 21))
    logits = m.forward(tokens)
    assert logits.shape == (3, 21, 64) and logits.dtype == np.float32
    assert m.forward(tokens[0]).shape == (21, 64)
    sd = m.state_dict()
    assert {k: v.shape for k, v in sd.items()} == param_shapes(cfg)
    m2 = BitLlama(cfg)
    m2.init_weights(seed=99)
    assert not np.array_equal(m2.forward(tokens), logits)
    m2.load_state_dict(sd)
    assert np.array_equal(m2.forward(tokens), logits)
    loss, grads = m.loss_and_grads(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss - np.log(64)) < 0.2  # a fresh model is close to uniform
    assert all(g.dtype == np.float32 and np.isfinite(g).all() for g in grads.values())


def test_init_is_deterministic():
    cfg = _small()
    a, b = BitLlama(cfg), BitLlama(cfg)
    a.init_weights(5)
    b.init_weights(5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_load_state_dict_rejects_mismatches(rng):
    m = BitLlama(_small())
    sd = m.state_dict()
    with pytest.raises(ValueError, match="missing layers.1"):
        m.load_state_dict({k: v for k, v in sd.items() if not k.startswith("layers.1.")})
    with pytest.raises(ValueError, match="unexpected lm_head"):
        m.load_state_dict(dict(sd, **{"lm_head.weight": sd["embed.weight"]}))
    bad = dict(sd)
    bad["layers.0.ttt.W1"] = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="layers.0.ttt.W1: shape"):
        m.load_state_dict(bad)
    bad = {k: v.copy() for k, v in sd.items()}
    bad["norm_f.weight"][0] = np.nan
    with pytest.raises(NonFiniteError, match="norm_f.weight"):
        m.load_state_dict(bad)
    assert all(np.array_equal(m.params[k], sd[k]) for k in sd)  # nothing changed


def test_bad_tokens_targets_and_values(rng):
    m = BitLlama(_small())
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 11\)"):
        m.forward(np.array([[1, 11]]))
    with pytest.raises(TypeError, match="integer"):
        m.forward(np.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="shape"):
        m.forward(np.zeros((1, 0), int))
    with pytest.raises(ValueError, match="all zeros"):
        m.loss_and_grads(np.ones((1, 3), int), np.ones((1, 3), int), np.zeros((1, 3)))
    m.params["layers.1.mlp.up_proj.weight"][0, 0] = np.inf
    with pytest.raises(NonFiniteError, match="layers.1.mlp.up_proj.weight"):
        m.forward(np.ones((1, 3), int))


def test_diverging_loss_is_reported(rng):
    m = BitLlama(_small(), dtype=np.float32)
    m.params["embed.weight"][:] = 3e38  # overflows inside the first layer
    with pytest.raises(NonFiniteError, match="layers.0"):
        m.loss_and_grads(np.ones((1, 3), int), np.ones((1, 3), int))


def test_ternary_model_trains_a_step(rng):
    cfg = BitLlamaConfig(vocab_size=32, hidden_size=64, num_heads=4, intermediate_size=96, num_layers=2,
                         mini_batch_size=8, ternary=True)
    m = BitLlama(cfg)
    data = np.tile(np.arange(32), 4)[None, :]
    before, grads = m.loss_and_grads(data[:, :-1], data[:, 1:])
    for k in m.params:
        m.params[k] -= 0.5 * grads[k] / (np.abs(grads[k]).max() + 1e-12) * 0.02
    after, _ = m.loss_and_grads(data[:, :-1], data[:, 1:])
    assert np.isfinite(after) and after < before
    assert isinstance(bitttt.BitLlama, type)
