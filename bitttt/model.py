"""BitLlama-TTT: embedding, N blocks of (RMSNorm -> TTT-Linear, RMSNorm -> SwiGLU), RMSNorm, LM head.

    h = x + TTT(RMSNorm(x; layers.i.norm1.weight))
    x = h + MLP(RMSNorm(h; layers.i.norm2.weight))
    logits = RMSNorm(x; norm_f.weight) @ lm_head^T      (lm_head = embed.weight when tied)

The tensor names below are the checkpoint format, the state dict and the gradient dict.
Forward and backward are ours (bitttt.layers); the model computes in float32 by default
and in float64 with BitLlama(config, dtype=np.float64), every intermediate included.
"""
from __future__ import annotations

import numpy as np

from .config import BitLlamaConfig
from .layers.common import NonFiniteError, check_finite, mm
from .layers.embedding import embedding_backward, embedding_forward
from .layers.loss import cross_entropy_backward, cross_entropy_forward
from .layers.norms import rmsnorm_backward, rmsnorm_forward
from .layers.swiglu import swiglu_backward, swiglu_forward
from .layers.ttt import ttt_backward, ttt_forward, ttt_init, ttt_param_shapes


def param_shapes(cfg: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the model with its shape."""
    v, d, i = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size
    shapes = {"embed.weight": (v, d)}
    for li in range(cfg.num_layers):
        pre = f"layers.{li}."
        shapes[pre + "norm1.weight"] = (d,)
        shapes[pre + "norm2.weight"] = (d,)
        for name, shape in ttt_param_shapes(cfg).items():
            shapes[pre + "ttt." + name] = shape
        shapes[pre + "mlp.gate_proj.weight"] = (i, d)
        shapes[pre + "mlp.up_proj.weight"] = (i, d)
        shapes[pre + "mlp.down_proj.weight"] = (d, i)
    shapes["norm_f.weight"] = (d,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def _check_norm(where: str, cache) -> None:
    """RMSNorm's 1/rms is 0 when the squares overflow: the stream has blown up."""
    r = cache[2]
    if not (np.isfinite(r).all() and (r > 0).all()):
        raise NonFiniteError(f"{where}: the residual stream overflows (values too large for the dtype)")


class BitLlama:
    """The model.  Parameters live in `self.params` (name -> ndarray of `self.dtype`)."""

    def __init__(self, config: BitLlamaConfig, dtype=np.float32):
        if not isinstance(config, BitLlamaConfig):
            raise TypeError(f"config must be a BitLlamaConfig, got {type(config).__name__}")
        config.validate()
        self.config = config
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.params: dict[str, np.ndarray] = {}
        self.init_weights(0)

    # -- parameters -----------------------------------------------------------------
    def init_weights(self, seed: int = 0) -> None:
        """Normal(0, 0.02) matrices, unit norm weights, zero biases; deterministic in `seed`."""
        cfg, rng = self.config, np.random.default_rng(seed)
        p = {"embed.weight": rng.normal(0.0, 0.02, (cfg.vocab_size, cfg.hidden_size))}
        for li in range(cfg.num_layers):
            pre = f"layers.{li}."
            p[pre + "norm1.weight"] = np.ones(cfg.hidden_size)
            p[pre + "norm2.weight"] = np.ones(cfg.hidden_size)
            for name, v in ttt_init(cfg, rng, np.float64).items():
                p[pre + "ttt." + name] = v
            i, d = cfg.intermediate_size, cfg.hidden_size
            p[pre + "mlp.gate_proj.weight"] = rng.normal(0.0, 0.02, (i, d))
            p[pre + "mlp.up_proj.weight"] = rng.normal(0.0, 0.02, (i, d))
            p[pre + "mlp.down_proj.weight"] = rng.normal(0.0, 0.02 / np.sqrt(2 * cfg.num_layers), (d, i))
        p["norm_f.weight"] = np.ones(cfg.hidden_size)
        if not cfg.tie_word_embeddings:
            p["lm_head.weight"] = rng.normal(0.0, 0.02, (cfg.vocab_size, cfg.hidden_size))
        self.params = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in p.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        """A copy of every parameter, by tensor name."""
        return {k: v.copy() for k, v in self.params.items()}

    def load_state_dict(self, d: dict) -> None:
        """Load parameters by name; every name and shape must match the config (ValueError)."""
        shapes = param_shapes(self.config)
        missing = sorted(set(shapes) - set(d))
        unexpected = sorted(set(d) - set(shapes))
        if missing or unexpected:
            raise ValueError("state dict does not match the config: "
                             + (f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                                if missing else "")
                             + (f"unexpected {', '.join(unexpected[:5])}" if unexpected else ""))
        new = {}
        for name, shape in shapes.items():
            v = np.asarray(d[name])
            if v.shape != shape:
                raise ValueError(f"{name}: shape {v.shape} does not match the config's {shape}")
            if v.dtype.kind not in "fiu":
                raise TypeError(f"{name}: expected a numeric array, got dtype {v.dtype}")
            check_finite(name, value=v)
            new[name] = np.ascontiguousarray(v, dtype=self.dtype)
        self.params = new

    def num_params(self) -> int:
        return int(sum(v.size for v in self.params.values()))

    # -- forward / backward ---------------------------------------------------------
    def _check_tokens(self, tokens) -> np.ndarray:
        t = np.asarray(tokens)
        if t.dtype.kind not in "iu":
            raise TypeError(f"tokens must be integer ids, got dtype {t.dtype}")
        if t.ndim == 1:
            t = t[None]
        if t.ndim != 2 or t.size == 0:
            raise ValueError(f"tokens must have shape [B, T] with B, T >= 1, got {np.shape(tokens)}")
        v = self.config.vocab_size
        if t.min() < 0 or t.max() >= v:
            raise ValueError(f"token ids must be in [0, {v}), got values in [{t.min()}, {t.max()}]")
        return t.astype(np.int64)

    def _head(self) -> np.ndarray:
        return self.params["embed.weight" if self.config.tie_word_embeddings else "lm_head.weight"]

    def _forward(self, tokens: np.ndarray):
        cfg, p = self.config, self.params
        for name, v in p.items():
            if not np.isfinite(v).all():
                raise NonFiniteError(f"parameter {name} contains NaN or infinity")
        x = embedding_forward(p["embed.weight"], tokens)
        caches = []
        for li in range(cfg.num_layers):
            pre = f"layers.{li}."
            tp = {k[len(pre) + 4:]: v for k, v in p.items() if k.startswith(pre + "ttt.")}
            n1, c1 = rmsnorm_forward(x, p[pre + "norm1.weight"], cfg.rms_norm_eps)
            _check_norm(pre + "norm1", c1)
            a, ct = ttt_forward(tp, n1, cfg, name=pre + "ttt")
            h = np.add(x, a, out=a)  # a is the layer's own output: no new array
            n2, c2 = rmsnorm_forward(h, p[pre + "norm2.weight"], cfg.rms_norm_eps)
            _check_norm(pre + "norm2", c2)
            m, cm = swiglu_forward(n2, p[pre + "mlp.gate_proj.weight"], p[pre + "mlp.up_proj.weight"],
                                   p[pre + "mlp.down_proj.weight"], cfg.ternary)
            x = np.add(h, m, out=m)
            check_finite(pre + "mlp", output=x)
            caches.append((tp, c1, ct, c2, cm))
        nf, cf = rmsnorm_forward(x, p["norm_f.weight"], cfg.rms_norm_eps)
        _check_norm("norm_f", cf)
        logits = mm(nf.reshape(-1, nf.shape[-1]), self._head(), trans_b=True).reshape(*nf.shape[:-1], -1)
        check_finite("lm_head", logits=logits)
        return logits, (tokens, caches, nf, cf)

    def forward(self, tokens) -> np.ndarray:
        """tokens int [B, T] (or [T]) -> logits [B, T, V] in the model dtype."""
        t = self._check_tokens(tokens)
        logits, _ = self._forward(t)
        return logits if np.ndim(tokens) == 2 else logits[0]

    def loss_and_grads(self, tokens, targets, mask=None) -> tuple[float, dict[str, np.ndarray]]:
        """Mean cross-entropy of logits[b, t] against targets[b, t] (weighted by a 0/1 mask)
        and its gradient for every parameter, by tensor name."""
        cfg, p = self.config, self.params
        t = self._check_tokens(tokens)
        tg = np.asarray(targets)
        if tg.ndim == 1 and t.shape[0] == 1:
            tg = tg[None]
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == 1 and t.shape[0] == 1:
                mask = mask[None]
        if tg.dtype.kind not in "iu":
            raise TypeError(f"targets must be integer ids, got dtype {tg.dtype}")
        logits, (tokens_, caches, nf, cf) = self._forward(t)
        loss, cl = cross_entropy_forward(logits, tg.astype(np.int64), mask)
        if not np.isfinite(loss):
            raise NonFiniteError(f"loss is {loss}: training diverged")
        g = {}
        dlogits = cross_entropy_backward(cl).astype(self.dtype)
        head = self._head()
        dl2 = dlogits.reshape(-1, dlogits.shape[-1])
        dhead = mm(dl2, nf.reshape(-1, nf.shape[-1]), trans_a=True)
        dnf = mm(dl2, head).reshape(nf.shape)
        dx, g["norm_f.weight"] = rmsnorm_backward(dnf, cf)
        for li in reversed(range(cfg.num_layers)):
            pre = f"layers.{li}."
            tp, c1, ct, c2, cm = caches[li]
            dn2, dgate, dup, ddown = swiglu_backward(dx, cm)
            g[pre + "mlp.gate_proj.weight"], g[pre + "mlp.up_proj.weight"] = dgate, dup
            g[pre + "mlp.down_proj.weight"] = ddown
            dh_norm, g[pre + "norm2.weight"] = rmsnorm_backward(dn2, c2)
            dh = np.add(dx, dh_norm, out=dh_norm)
            dn1, tg_grads = ttt_backward(dh, ct, tp, cfg)
            for k, v in tg_grads.items():
                g[pre + "ttt." + k] = v
            dx_norm, g[pre + "norm1.weight"] = rmsnorm_backward(dn1, c1)
            dx = np.add(dh, dx_norm, out=dx_norm)
        demb = embedding_backward(dx, tokens_, cfg.vocab_size)
        if cfg.tie_word_embeddings:
            g["embed.weight"] = demb + dhead
        else:
            g["embed.weight"] = demb
            g["lm_head.weight"] = dhead
        g = {k: np.ascontiguousarray(v, dtype=self.dtype) for k, v in g.items()}
        return float(loss), {k: g[k] for k in p}
