"""TTTLinear against the authors' own TTTLinear (test-time-training/ttt-lm-pytorch, ttt.py), float64.

A development check, skipped unless BITTTT_TTT_REF names a folder holding the authors' ttt.py and
torch and transformers (4.4x) are importable; neither is a dependency of bitttt and CI skips it:

    git clone https://github.com/test-time-training/ttt-lm-pytorch /tmp/ttt_ref
    pip install torch transformers==4.44.2
    BITTTT_TTT_REF=/tmp/ttt_ref python -m pytest -q tests/test_authors_reference.py

The reference builds its RoPE table in float32 whatever the model's dtype and its token scales in torch's
default dtype; the check swaps in the same table computed in float64 and makes float64 the default, so
that the output and every gradient can be compared to 1e-12.
"""
import os
import sys

import numpy as np
import pytest

from bitttt import BitLlamaConfig
from bitttt.layers import TTTLinear

REF_DIR = os.environ.get("BITTTT_TTT_REF")
if not REF_DIR or not os.path.isfile(os.path.join(REF_DIR, "ttt.py")):
    pytest.skip("set BITTTT_TTT_REF to a checkout of test-time-training/ttt-lm-pytorch", allow_module_level=True)
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, REF_DIR)
ref = pytest.importorskip("ttt")


class _Rope64(torch.nn.Module):
    """The reference's rotary table (cat(freqs, freqs), cos and sin), computed in float64."""

    def __init__(self, dim: int, base: float):
        super().__init__()
        self.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))

    def forward(self, x, position_ids):
        freqs = position_ids[:, :, None].double() * self.inv_freq[None, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@pytest.fixture
def float64_default():
    """The reference makes some constants (the token scales 1/(i+1)) in torch's default dtype."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.mark.parametrize("D,H,K,T,B", [(32, 4, 16, 37, 2), (64, 2, 16, 16, 1), (48, 3, 4, 11, 3),
                                       (64, 4, 16, 5, 2), (128, 2, 16, 64, 1)])
def test_forward_and_every_gradient_match_the_authors_code(D, H, K, T, B, float64_default):
    rng = np.random.default_rng(D * 1000 + T)
    cfg = BitLlamaConfig(vocab_size=32, hidden_size=D, num_heads=H, intermediate_size=2 * D, num_layers=1,
                         mini_batch_size=K, ternary=False)
    ours = TTTLinear(cfg, dtype=np.float64)
    ours.init_weights(3)
    for name, v in ours.params.items():  # move off the init so that every parameter matters
        v += rng.normal(0, 0.05 if "proj" in name else 0.3, v.shape)
    rc = ref.TTTConfig(hidden_size=D, num_attention_heads=H, mini_batch_size=K, ttt_layer_type="linear",
                       use_gate=False, share_qk=False, pre_conv=False, ttt_base_lr=1.0, rope_theta=10000.0)
    theirs = ref.TTTLinear(rc, layer_idx=0).double()
    theirs.rotary_emb = _Rope64(D // H, 10000.0)
    sd = theirs.state_dict()
    assert set(sd) == set(ours.params)
    theirs.load_state_dict({k: torch.from_numpy(ours.params[k].copy()).reshape(sd[k].shape) for k in sd})

    x = rng.normal(0, 1, (B, T, D))
    dy = rng.normal(0, 1, (B, T, D))
    y = ours.forward(x)
    dx, grads = ours.backward(dy)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = theirs(xt, position_ids=torch.arange(T)[None].expand(B, T))
    (yt * torch.from_numpy(dy)).sum().backward()

    def close(a, b):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12 * np.abs(b).max())

    close(y, yt.detach().numpy())
    close(dx, xt.grad.numpy())
    for name, p in theirs.named_parameters():
        close(grads[name].reshape(p.shape), p.grad.numpy())
