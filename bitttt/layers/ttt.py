"""TTT-Linear (Sun et al. 2024, arXiv 2407.04620), forward and backward side by side.

Shapes: B batch, T tokens, D hidden, H heads, f = D / H, K mini-batch size, n <= K the
length of one mini-batch (the last one may be shorter).

Forward, for an input x [B, T, D] (already RMS-normalized by the block):
  Q, K_, V = BitLinear(x; q_proj, k_proj, v_proj), split in heads [B, H, T, f]
  Q, K_    = RoPE over pairs (2j, 2j+1), position t mod K
  lr[b,h,t] = ttt_base_lr * sigmoid(x[b,t] . a_h + c_h) / f          (learning-rate gate)
  tok[i]    = max(1 / (i + 1) + learnable_token_idx[i], 0)            (per-position scale)
  state (W, b) starts at (W1, b1) for every sequence; per mini-batch (dual form):
    E     = tok[:n, None] * lr[None, :]            eta[i, j] for i, j < n
    Z1    = K_ W + b;  G = d/dZ1 of 1/2 ||LN(Z1) - (V - K_)||^2    (per row, closed form)
    A     = tril(Q K_^T)                          (diagonal included)
    b_bar = b - tril(E) G
    Zb    = Q W - (tril(E) * A) G + b_bar
    out   = Q + LN(Zb)                            (inner LN: per-head weight/bias, eps 1e-6)
    W    <- W - K_^T (E[n-1]^T * G),   b <- b - E[n-1] G
  y = o_proj(post_norm(out merged to [B, T, D]))   (post_norm: LayerNorm over D, eps 1e-6)

Backward goes through every step, the carried state included: nothing is detached.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..config import BitLlamaConfig
from ..params import ttt_block
from .bit_linear import BitLinearCache, SharedInput, bitlinear_backward, bitlinear_forward
from .common import StandaloneLayer, check_finite

LN_EPS = 1e-6


def ttt_param_shapes(cfg: BitLlamaConfig) -> dict[str, tuple[int, ...]]:
    """The layer's parameter names (without the layers.{i}.ttt. prefix) and shapes."""
    return {local: shape for local, shape, _, _ in ttt_block(cfg)}


class TTTLayerCache(NamedTuple):
    x: np.ndarray | None    # the layer input [B, T, D] (None: ttt_forward(keep_input=False), ttt_backward's x)
    q: BitLinearCache
    k: BitLinearCache
    v: BitLinearCache
    sg: np.ndarray          # sigmoid of the learning-rate gate [B, H, T]
    tok_pre: np.ndarray     # 1 / (i + 1) + learnable_token_idx [K]
    inner: tuple            # the backend's TTT inner-loop cache
    post_norm: tuple        # the backend's LayerNorm cache
    o: BitLinearCache
    final: tuple | None = None  # streaming: the state after the window, (W [B, H, f, f], b [B, H, 1, f])


class TTTLayerState(NamedTuple):
    """One layer's recurrent state (views into the model's stacked state): W0 [H, f, f], b0 [H, f]
    (the inner model at the start of the current mini-batch), Kb, Gb [H, K, f] (keys and
    lr-weighted inner gradients of the tokens read in it), Sb [H, f] (the sum of those gradients)."""

    W0: np.ndarray
    b0: np.ndarray
    Kb: np.ndarray
    Gb: np.ndarray
    Sb: np.ndarray


def _check_shapes(p: dict, cfg: BitLlamaConfig, name: str) -> None:
    for pname, shape in ttt_param_shapes(cfg).items():  # the C loop trusts these shapes
        if tuple(p[pname].shape) != shape:
            raise ValueError(f"{name}: parameter {pname} has shape {tuple(p[pname].shape)}, the config needs {shape}")


def token_scales(p: dict, k: int, dt) -> tuple[np.ndarray, np.ndarray]:
    """(tok_pre, tok) [K]: tok[i] = max(1 / (i + 1) + learnable_token_idx[i], 0)."""
    tok_pre = dt.type(1.0) / np.arange(1, k + 1, dtype=dt) + p["learnable_token_idx"]
    return tok_pre, np.maximum(tok_pre, dt.type(0.0))


def ttt_forward(be, p: dict, x: np.ndarray, cfg: BitLlamaConfig, name: str = "ttt", *, init=None, resets=None,
                keep_input: bool = True):
    """x [B, T, D] -> (y [B, T, D], cache).  p: the layer's parameters by local name
    (ttt_param_shapes); the inner loop is the backend's ttt_forward (dual form).  keep_input=False:
    the cache does not hold x (the caller keeps it, or can recompute it, and hands it to ttt_backward).

    Streaming training: init = (W [B, H, f, f], b [B, H, 1, f]) the state each sequence starts from
    (carried from the window before; a constant for the backward: the gradient is truncated at the
    window edge), resets [B, ceil(T / K)] 0/1 the mini-batches that start from (W1, b1) instead; with
    either, cache.final holds the state after the window."""
    bsz, t, d = x.shape
    h, f, k = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    dt = x.dtype
    _check_shapes(p, cfg, name)
    xs = SharedInput(be, x)  # q, k and v quantize x once
    q, cq = bitlinear_forward(be, xs, p["q_proj.weight"], cfg.ternary)
    kx, ck = bitlinear_forward(be, xs, p["k_proj.weight"], cfg.ternary)
    v, cv = bitlinear_forward(be, xs, p["v_proj.weight"], cfg.ternary)
    # learning-rate gate on the unquantized input
    a = p["learnable_ttt_lr_weight"][:, 0, :]  # [H, D]
    pre = be.matmul(x.reshape(-1, d), a, trans_b=True).reshape(bsz, t, h).transpose(0, 2, 1) \
        + p["learnable_ttt_lr_bias"][None, :, :]
    sg = be.sigmoid(pre)
    lr = sg * dt.type(cfg.ttt_base_lr / f)  # [B, H, T]
    tok_pre, tok = token_scales(p, k, dt)
    inner_args = (q, kx, v, lr, tok, p["W1"], p["b1"], p["ttt_norm_weight"], p["ttt_norm_bias"], h, k, cfg.rope_theta)
    final = None
    if init is None and resets is None:
        merged, inner = be.ttt_forward(*inner_args)
    else:
        merged, inner, final = be.ttt_forward(*inner_args, init=init, resets=resets, final=True)
    normed, cpn = be.layernorm_forward(merged, p["post_norm.weight"], p["post_norm.bias"], LN_EPS)
    y, co = bitlinear_forward(be, normed, p["o_proj.weight"], cfg.ternary)
    check_finite(name, output=y)
    return y, TTTLayerCache(x if keep_input else None, cq, ck, cv, sg, tok_pre, inner, cpn, co, final)


def ttt_backward(be, dy: np.ndarray, c: TTTLayerCache, p: dict, cfg: BitLlamaConfig, x: np.ndarray | None = None):
    """dy [B, T, D] -> (dx [B, T, D], grads under the parameter names).  x: the layer input
    [B, T, D], needed when the cache was made with keep_input=False (the same bits as the forward's)."""
    x = c.x if x is None else x
    if x is None:
        raise ValueError("ttt_backward: the cache holds no input (keep_input=False): pass x")
    bsz, t, d = x.shape
    h, f = cfg.num_heads, cfg.head_dim
    dt = x.dtype.type
    g = {}
    # each temporary is dropped once read (the step's peak memory is here, in the last layer)
    dnormed, g["o_proj.weight"] = bitlinear_backward(be, dy, c.o)
    dmerged, g["post_norm.weight"], g["post_norm.bias"] = be.layernorm_backward(dnormed, c.post_norm)
    del dnormed
    ig = be.ttt_backward(dmerged, c.inner)
    del dmerged
    g["W1"], g["b1"], g["ttt_norm_weight"], g["ttt_norm_bias"] = ig.dW1, ig.db1, ig.dgamma, ig.dbeta
    g["learnable_token_idx"] = ig.dtok * (c.tok_pre >= 0)
    dq, dk, dv, dlr = ig.dq, ig.dk, ig.dv, ig.dlr
    del ig
    dpre = dlr * dt(cfg.ttt_base_lr / f) * c.sg * (1 - c.sg)  # [B, H, T]
    a = p["learnable_ttt_lr_weight"][:, 0, :]
    dpre_t = np.ascontiguousarray(dpre.transpose(0, 2, 1)).reshape(-1, h)  # [B*T, H]
    g["learnable_ttt_lr_weight"] = be.matmul(dpre_t, x.reshape(-1, d), trans_a=True)[:, None, :]
    g["learnable_ttt_lr_bias"] = dpre.sum(axis=(0, 2))[:, None]
    dx = be.matmul(dpre_t, a).reshape(bsz, t, d)
    # in place, in the same order: ((dx + dxq) + dxk) + dxv
    for dz, bc, name in ((dq, c.q, "q_proj.weight"), (dk, c.k, "k_proj.weight"), (dv, c.v, "v_proj.weight")):
        dxz, g[name] = bitlinear_backward(be, dz, bc)
        dx += dxz
    return dx, g


# ---------------------------------------------------------------------------------------
# Inference: the recurrent state, read token by token.
# ---------------------------------------------------------------------------------------
def ttt_initial_state(p: dict, cfg: BitLlamaConfig, dtype) -> dict[str, np.ndarray]:
    """A fresh state: (W0, b0) = the trained (W1, b1), empty mini-batch sums."""
    h, f, k = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size
    return {"W0": np.array(p["W1"], dtype=dtype), "b0": np.array(p["b1"], dtype=dtype).reshape(h, f),
            "Kb": np.zeros((h, k, f), dtype), "Gb": np.zeros((h, k, f), dtype), "Sb": np.zeros((h, f), dtype)}


def blend_toward(a: np.ndarray, a1: np.ndarray, keep) -> None:
    """a <- a1 + keep (a - a1), in place (a state decaying toward the fresh state a1); keep is
    used as given (a NumPy scalar keeps its precision)."""
    a -= a1
    a *= keep
    a += a1


def _rotated_qkv(be, p: dict, x: np.ndarray, at: np.ndarray, cfg: BitLlamaConfig):
    """The inner loop's inputs for rows x [M, D] (contiguous): q and k rotated at the mini-batch
    positions `at` [M], and v -> three contiguous [M, D] arrays (q, k, v quantize x once)."""
    m, d = x.shape
    h, f = cfg.num_heads, cfg.head_dim
    xs = SharedInput(be, x)
    q, _ = bitlinear_forward(be, xs, p["q_proj.weight"], cfg.ternary)
    kx, _ = bitlinear_forward(be, xs, p["k_proj.weight"], cfg.ternary)
    v, _ = bitlinear_forward(be, xs, p["v_proj.weight"], cfg.ternary)
    cos, sin = be.rope_tables(np.arange(cfg.mini_batch_size), f, cfg.rope_theta, np.dtype(be.DTYPE))
    cos, sin = cos[at][:, None, :], sin[at][:, None, :]
    q = np.ascontiguousarray(be.rope_apply(q.reshape(m, h, f), cos, sin).reshape(m, d))
    kx = np.ascontiguousarray(be.rope_apply(kx.reshape(m, h, f), cos, sin).reshape(m, d))
    return q, kx, np.ascontiguousarray(v)


def ttt_prefill(be, p: dict, x: np.ndarray, st: TTTLayerState, pos: int, cfg: BitLlamaConfig) -> np.ndarray:
    """x [T, D] (the layer's normalized input, one sequence) -> y [T, D]; the state `st`, at
    position `pos` of its mini-batch, reads the T tokens (updated in place).  The arithmetic of
    the training forward, token by token: read at once, in chunks or one by one, the same bits."""
    t, d = x.shape
    f, k = cfg.head_dim, cfg.mini_batch_size
    dt = np.dtype(be.DTYPE)
    x = np.ascontiguousarray(x)
    q, kx, v = _rotated_qkv(be, p, x, (pos + np.arange(t)) % k, cfg)
    _, tok = token_scales(p, k, dt)
    merged = np.empty((t, d), dtype=dt)
    be.ttt_prefill(pos, q, kx, v, x, p["learnable_ttt_lr_weight"][:, 0, :],
                   p["learnable_ttt_lr_bias"].reshape(-1), cfg.ttt_base_lr / f, tok, p["ttt_norm_weight"],
                   p["ttt_norm_bias"], st.W0, st.b0, st.Kb, st.Gb, st.Sb, merged)
    normed, _ = be.layernorm_forward(merged, p["post_norm.weight"], p["post_norm.bias"], LN_EPS)
    y, _ = bitlinear_forward(be, np.ascontiguousarray(normed), p["o_proj.weight"], cfg.ternary)
    return y


def ttt_step_batch(be, p: dict, x: np.ndarray, states: list, positions: list, cfg: BitLlamaConfig) -> np.ndarray:
    """x [B, D] (the layer's normalized input: one token of each of B sequences) -> y [B, D].
    q, k, v and o are one GEMM each over the B rows (the weights read once); each sequence's
    state `states[b]` (a TTTLayerState, at position `positions[b]` of its mini-batch) reads its
    token through the same C inner loop as ttt_prefill with T = 1, so the bits equal B prefills."""
    bsz, d = x.shape
    f, k = cfg.head_dim, cfg.mini_batch_size
    dt = np.dtype(be.DTYPE)
    x = np.ascontiguousarray(x)
    q, kx, v = _rotated_qkv(be, p, x, np.asarray(positions, dtype=np.int64) % k, cfg)
    _, tok = token_scales(p, k, dt)
    lr_w, lr_b = p["learnable_ttt_lr_weight"][:, 0, :], p["learnable_ttt_lr_bias"].reshape(-1)
    merged = np.empty((bsz, d), dtype=dt)
    for b, st in enumerate(states):
        be.ttt_prefill(int(positions[b]), q[b:b + 1], kx[b:b + 1], v[b:b + 1], x[b:b + 1], lr_w, lr_b,
                       cfg.ttt_base_lr / f, tok, p["ttt_norm_weight"], p["ttt_norm_bias"], st.W0, st.b0, st.Kb,
                       st.Gb, st.Sb, merged[b:b + 1])
    normed, _ = be.layernorm_forward(merged, p["post_norm.weight"], p["post_norm.bias"], LN_EPS)
    y, _ = bitlinear_forward(be, np.ascontiguousarray(normed), p["o_proj.weight"], cfg.ternary)
    return y


class TTTLinear(StandaloneLayer):
    """A TTT-Linear layer on its own: parameters under the names of ttt_param_shapes,
    forward and backward, on the backend of `dtype` (float32: cpu, float64: numpy) or `backend`.

    layer = TTTLinear(cfg); layer.init_weights(seed); y = layer.forward(x)  (x [B, T, D]);
    dx, grads = layer.backward(dy)  (after a forward).
    """

    NAME = "TTTLinear"
    block = staticmethod(ttt_block)

    def _forward(self, x: np.ndarray):
        check_finite(self.NAME, input=x, **{k.replace(".", "_"): v for k, v in self.params.items()})
        return ttt_forward(self.backend, self.params, x, self.config, self.NAME)

    def _backward(self, dy: np.ndarray, cache):
        return ttt_backward(self.backend, dy, cache, self.params, self.config)
