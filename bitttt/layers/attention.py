"""Causal softmax attention with GQA (a Llama attention layer on BitLinear), forward and backward
side by side, and its KV cache for inference.

Shapes: B batch, T tokens, D hidden, H query heads, Hkv key/value heads (Hkv divides H; query
head h reads key/value head h // (H / Hkv)), f = D / H.

Forward, for an input x [B, T, D] (already RMS-normalized by the block):
  Q = BitLinear(x; q_proj) [B, H, T, f];  K_, V = BitLinear(x; k_proj, v_proj) [B, Hkv, T, f]
  Q, K_ = RoPE at absolute positions t = 0 .. T-1, rotating the pairs (2j, 2j+1) of each head by
          t theta^(-2j / f) (the convention of the TTT layer, whose positions are t mod K; not
          the half-split pairing (j, j + f/2) of the Hugging Face Llama code)
  O[h, i] = sum_{j <= i} softmax_j(Q[h, i] . K_[h // G, j] / sqrt(f)) V[h // G, j]
  y = BitLinear(O merged to [B, T, D]; o_proj)
The attention itself is the backend's `attention_forward`: tiles of queries against tiles of
keys with a running max and sum (online softmax), so no [T, T] array is ever made and training
memory grows with T; the backward recomputes the scores tile by tile from the saved
log-sum-exp (as FlashAttention does).

Inference: each attention layer keeps a KVCache (keys after RoPE, and values, of every token
read: float16 by default, or int8 with one absmax scale per head and token, or float32), and
`attention_prefill` reads T new tokens against it (a prompt in blocks, or one decoded token):
the same backend op either way, so a prompt read at once or in chunks gives the same values.
A cache holds at most config.max_position_embeddings tokens; the model refuses to read past it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..config import BitLlamaConfig
from ..params import attention_block
from .bit_linear import BitLinearCache, SharedInput, bitlinear_backward, bitlinear_forward
from .common import StandaloneLayer, check_finite

TILE = 64  # query and key tile of the training attention (rows of scores computed at once)
KV_DTYPES = ("float16", "int8", "float32")


def attention_param_shapes(cfg: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """The layer's parameter names (without the layers.{i}.attn. prefix) and shapes."""
    return {local: shape for local, shape, _, _ in attention_block(cfg)}


class AttentionLayerCache(NamedTuple):
    q: BitLinearCache
    k: BitLinearCache
    v: BitLinearCache
    cos: np.ndarray
    sin: np.ndarray
    inner: tuple          # the backend's attention cache
    o: BitLinearCache
    shape: tuple          # (B, T, D)


def _split(x: np.ndarray, h: int) -> np.ndarray:
    """[B, T, h f] -> [B, h, T, f] (a contiguous copy)."""
    b, t, d = x.shape
    return np.ascontiguousarray(x.reshape(b, t, h, d // h).transpose(0, 2, 1, 3))


def _merge(x: np.ndarray) -> np.ndarray:
    b, h, t, f = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(b, t, h * f)


def _check_shapes(p: dict, cfg: BitLlamaConfig, name: str) -> None:
    for pname, shape in attention_param_shapes(cfg).items():
        w = p[pname]
        got = (w.rows, w.cols) if hasattr(w, "rows") else tuple(w.shape)
        if got != shape:
            raise ValueError(f"{name}: parameter {pname} has shape {got}, the config needs {shape}")


def attention_forward(be, p: dict, x: np.ndarray, cfg: BitLlamaConfig, name: str = "attn", tile: int = TILE):
    """x [B, T, D] -> (y [B, T, D], cache).  p: the layer's parameters by local name."""
    bsz, t, d = x.shape
    h, hkv, f = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    if t > cfg.max_position_embeddings:
        raise ValueError(f"{name}: {t} tokens exceed config.max_position_embeddings = {cfg.max_position_embeddings}")
    _check_shapes(p, cfg, name)
    xs = SharedInput(be, x)
    q, cq = bitlinear_forward(be, xs, p["q_proj.weight"], cfg.ternary)
    k, ck = bitlinear_forward(be, xs, p["k_proj.weight"], cfg.ternary)
    v, cv = bitlinear_forward(be, xs, p["v_proj.weight"], cfg.ternary)
    cos, sin = be.rope_tables(np.arange(t), f, cfg.rope_theta, x.dtype)
    Q = be.rope_apply(_split(q, h), cos, sin)
    K = be.rope_apply(_split(k, hkv), cos, sin)
    out, inner = be.attention_forward(Q, K, _split(v, hkv), 1.0 / math.sqrt(f), tile)
    y, co = bitlinear_forward(be, _merge(out), p["o_proj.weight"], cfg.ternary)
    check_finite(name, output=y)
    return y, AttentionLayerCache(cq, ck, cv, cos, sin, inner, co, (bsz, t, d))


def attention_backward(be, dy: np.ndarray, c: AttentionLayerCache, cfg: BitLlamaConfig):
    """dy [B, T, D] -> (dx [B, T, D], grads under the parameter names)."""
    h = cfg.num_heads
    g = {}
    dmerged, g["o_proj.weight"] = bitlinear_backward(be, dy, c.o)
    dQ, dK, dV = be.attention_backward(_split(dmerged, h), c.inner)
    dq = _merge(be.rope_apply(dQ, c.cos, c.sin, inverse=True))
    dk = _merge(be.rope_apply(dK, c.cos, c.sin, inverse=True))
    dx, g["q_proj.weight"] = bitlinear_backward(be, dq, c.q)
    dxk, g["k_proj.weight"] = bitlinear_backward(be, dk, c.k)
    dxv, g["v_proj.weight"] = bitlinear_backward(be, _merge(dV), c.v)
    dx += dxk
    dx += dxv
    return dx, g


# ---------------------------------------------------------------------------------------
# Inference: the KV cache.
# ---------------------------------------------------------------------------------------
class KVCache:
    """One attention layer's keys (after RoPE) and values of every token read.

    k, v [Hkv, capacity, f]: float16 or float32 values, or int8 codes with per-head, per-token
    absmax scales ks, vs [Hkv, capacity] (k = codes * ks); rows < n are live.  The capacity
    doubles as tokens arrive, up to `max_len` (config.max_position_embeddings)."""

    def __init__(self, kv_heads: int, head_dim: int, max_len: int, dtype: str = "float16", capacity: int = 256):
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype must be one of {', '.join(KV_DTYPES)}, got {dtype!r}")
        self.dtype, self.max_len, self.n = dtype, int(max_len), 0
        cap = max(1, min(int(capacity), self.max_len))
        store = np.int8 if dtype == "int8" else np.dtype(dtype)
        self.k = np.zeros((kv_heads, cap, head_dim), store)
        self.v = np.zeros_like(self.k)
        self.ks = np.zeros((kv_heads, cap), np.float32) if dtype == "int8" else None
        self.vs = np.zeros_like(self.ks) if dtype == "int8" else None

    @property
    def capacity(self) -> int:
        return self.k.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes of the live rows (keys, values and their scales)."""
        per = 2 * self.k.shape[0] * self.k.shape[2] * self.k.itemsize + (8 * self.k.shape[0] if self.ks is not None
                                                                         else 0)
        return per * self.n

    def copy(self) -> KVCache:
        c = KVCache.__new__(KVCache)
        c.dtype, c.max_len, c.n = self.dtype, self.max_len, self.n
        c.k, c.v = self.k.copy(), self.v.copy()
        c.ks = None if self.ks is None else self.ks.copy()
        c.vs = None if self.vs is None else self.vs.copy()
        return c

    def _grow(self, need: int) -> None:
        if need <= self.capacity:
            return
        cap = min(max(need, 2 * self.capacity), self.max_len)
        for name in ("k", "v", "ks", "vs"):
            a = getattr(self, name)
            if a is not None:
                b = np.zeros((a.shape[0], cap) + a.shape[2:], a.dtype)
                b[:, :self.n] = a[:, :self.n]
                setattr(self, name, b)

    def append(self, k: np.ndarray, v: np.ndarray) -> None:
        """k, v [T, Hkv, f] (float) become rows n .. n+T-1."""
        t = k.shape[0]
        if self.n + t > self.max_len:
            raise ValueError(f"the KV cache holds at most {self.max_len} tokens (config.max_position_embeddings)")
        self._grow(self.n + t)
        s = slice(self.n, self.n + t)
        for src, dst, sc in ((k, self.k, self.ks), (v, self.v, self.vs)):
            x = src.transpose(1, 0, 2)  # [Hkv, T, f]
            if sc is None:
                dst[:, s] = x
            else:
                amax = np.abs(x).max(axis=-1)
                scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
                dst[:, s] = np.clip(np.rint(x / scale[..., None]), -127, 127)
                sc[:, s] = scale
        self.n += t


def attention_prefill(be, p: dict, x: np.ndarray, cache: KVCache, cfg: BitLlamaConfig) -> np.ndarray:
    """x [T, D] (the layer's normalized input, one sequence) -> y [T, D]; the T tokens, at
    positions cache.n .. cache.n+T-1, are appended to `cache` and attend to every token before."""
    t, d = x.shape
    h, hkv, f = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    dt = np.dtype(be.DTYPE)
    xs = SharedInput(be, np.ascontiguousarray(x))
    q, _ = bitlinear_forward(be, xs, p["q_proj.weight"], cfg.ternary)
    k, _ = bitlinear_forward(be, xs, p["k_proj.weight"], cfg.ternary)
    v, _ = bitlinear_forward(be, xs, p["v_proj.weight"], cfg.ternary)
    start = cache.n
    cos, sin = be.rope_tables(np.arange(start, start + t), f, cfg.rope_theta, dt)
    cos, sin = cos[:, None, :], sin[:, None, :]
    q = np.ascontiguousarray(be.rope_apply(q.reshape(t, h, f), cos, sin), dtype=dt)
    k = be.rope_apply(k.reshape(t, hkv, f), cos, sin)
    cache.append(k, v.reshape(t, hkv, f))
    out = np.empty((t, h, f), dtype=dt)
    be.attention_cached(q, cache.k, cache.v, cache.ks, cache.vs, start, 1.0 / math.sqrt(f), out)
    y, _ = bitlinear_forward(be, out.reshape(t, d), p["o_proj.weight"], cfg.ternary)
    return y


class Attention(StandaloneLayer):
    """An attention layer on its own: parameters under the names of attention_param_shapes,
    forward and backward, on the backend of `dtype` (float32: cpu, float64: numpy) or `backend`.

    layer = Attention(cfg); y = layer.forward(x)  (x [B, T, D]); dx, grads = layer.backward(dy).
    """

    NAME = "Attention"
    block = staticmethod(attention_block)

    def __init__(self, config: BitLlamaConfig, dtype=None, params: dict | None = None, backend=None,
                 tile: int = TILE):
        self.tile = int(tile)
        super().__init__(config, dtype, params, backend)

    def _forward(self, x: np.ndarray):
        return attention_forward(self.backend, self.params, x, self.config, self.NAME, self.tile)

    def _backward(self, dy: np.ndarray, cache):
        return attention_backward(self.backend, dy, cache, self.config)
