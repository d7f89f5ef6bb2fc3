"""Cross-check against PyTorch autograd on the same architecture (bench/torch_bitllama.py).

Skipped where PyTorch is not installed (CI); run it on a machine that has it."""
import os
import sys

import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from torch_bitllama import TorchBitLlama  # noqa: E402


@pytest.mark.parametrize("ternary", [False, True])
def test_loss_and_every_gradient_match_autograd(ternary, rng):
    cfg = BitLlamaConfig(vocab_size=50, hidden_size=32, num_heads=4, intermediate_size=40, num_layers=2,
                         mini_batch_size=4, ternary=ternary)
    m = BitLlama(cfg, dtype=np.float64)
    m.init_weights(2)
    for v in m.params.values():
        v += rng.normal(0, 0.1, v.shape)
    tokens, targets = rng.integers(0, 50, (2, 11)), rng.integers(0, 50, (2, 11))
    loss, grads = m.loss_and_grads(tokens, targets)
    tm = TorchBitLlama(cfg, m.params)
    tl = tm.loss(torch.from_numpy(tokens), torch.from_numpy(targets))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12)
    for name, g in grads.items():
        ref = tm.w(name).grad.numpy()
        assert np.abs(g - ref).max() <= 1e-10 * max(np.abs(ref).max(), 1e-12), name
