"""The `cpu` backend: the ops of `bitttt.backend.numpy` in float32 on bitttt's C kernels.

Same names, same arguments, same meaning as the numpy backend (the spec); the tests compare
the two.  Weights of BitLinear layers are `PackedTernary` (2 bits per weight) and activations
int8 codes with per-token scales.  Every kernel runs on bitttt's own thread pool and gives the
same bits on every ISA path and thread count.  Ops with no C kernel (RoPE, the gate's sigmoid,
embedding rows) are the numpy backend's functions computed in float32.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .. import _core, kernels
from ..ternary import PackedTernary
from . import numpy as ref

NAME = "cpu"
DTYPE = np.dtype(np.float32)
LN_EPS = ref.LN_EPS

sigmoid = ref.sigmoid
rope_tables = ref.rope_tables
rope_apply = ref.rope_apply
embedding_forward = ref.embedding_forward
embedding_backward = ref.embedding_backward


def _c(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


# -- dense products -----------------------------------------------------------------------
def matmul(a: np.ndarray, b: np.ndarray, trans_a: bool = False, trans_b: bool = False) -> np.ndarray:
    """op(a) @ op(b) on bitttt's GEMM (sums in order of the inner index: the same bits anywhere)."""
    return kernels.sgemm(np.ascontiguousarray(a), np.ascontiguousarray(b), trans_a, trans_b)


# -- BitLinear -------------------------------------------------------------------------------
def quantize_weight(w: np.ndarray) -> PackedTernary:
    """Qw(W) packed at 2 bits per weight."""
    return PackedTernary.quantize(w)


def is_quantized(w) -> bool:
    return isinstance(w, PackedTernary)


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [M, K] -> (codes int8 [M, K], a float32 [M]): Qa(x) = codes / a."""
    return kernels.quantize_activations(np.ascontiguousarray(x))


def qlinear(xq: tuple[np.ndarray, np.ndarray], wq: PackedTernary) -> np.ndarray:
    """int8 x ternary products, scaled: Qa(x) Qw(W)^T [M, N]."""
    return kernels.gemm_i8(wq, xq[0], xq[1])


def qlinear_dx(dy: np.ndarray, wq: PackedTernary) -> np.ndarray:
    return kernels.matmul_t(wq, _c(dy))


def qlinear_dw(dy: np.ndarray, xq: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """dY^T Qa(x) straight from the int8 codes (no dequantized copy of x)."""
    return kernels.sgemm_tn_q8(_c(dy), xq[0], xq[1])


# -- norms -------------------------------------------------------------------------------------
class RMSNormCache(NamedTuple):
    x: np.ndarray  # [M, D]
    r: np.ndarray  # 1 / rms [M]
    w: np.ndarray
    shape: tuple


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, RMSNormCache]:
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    y = np.empty_like(x2)
    r = np.empty(x2.shape[0], dtype=np.float32)
    _core.rmsnorm_fwd(x2, np.ascontiguousarray(w), eps, y, r)
    return y.reshape(x.shape), RMSNormCache(x2, r, w, x.shape)


def rmsnorm_backward(dy: np.ndarray, c: RMSNormCache) -> tuple[np.ndarray, np.ndarray]:
    dx = np.empty_like(c.x)
    dw = np.empty(c.x.shape[1], dtype=np.float32)
    _core.rmsnorm_bwd(_c(dy.reshape(c.x.shape)), c.x, np.ascontiguousarray(c.w), c.r, dx, dw)
    return dx.reshape(c.shape), dw


class LayerNormCache(NamedTuple):
    xh: np.ndarray  # [M, D]
    r: np.ndarray   # [M]
    w: np.ndarray
    shape: tuple


def layernorm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> tuple[np.ndarray, LayerNormCache]:
    """x [..., D], w and b [D]."""
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
    y, xh = np.empty_like(x2), np.empty_like(x2)
    r = np.empty(x2.shape[0], dtype=np.float32)
    _core.layernorm_fwd(x2, np.ascontiguousarray(w), np.ascontiguousarray(b), eps, y, xh, r)
    return y.reshape(x.shape), LayerNormCache(xh, r, w, x.shape)


def layernorm_backward(dy: np.ndarray, c: LayerNormCache, reduce_axes=None):
    """dw and db summed over every row (`reduce_axes` other than None is the numpy backend's)."""
    if reduce_axes is not None:
        raise ValueError("the cpu backend's layernorm_backward sums dw and db over all rows")
    dx = np.empty_like(c.xh)
    dw = np.empty(c.xh.shape[1], dtype=np.float32)
    db = np.empty(c.xh.shape[1], dtype=np.float32)
    _core.layernorm_bwd(_c(dy.reshape(c.xh.shape)), c.xh, np.ascontiguousarray(c.w), c.r, dx, dw, db)
    return dx.reshape(c.shape), dw, db


# -- SwiGLU gate -------------------------------------------------------------------------------
def swiglu_forward(g: np.ndarray, u: np.ndarray, keep_sg: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """-> (h, sigmoid(g) or None): without keep_sg sigmoid(g) is never stored (the backward recomputes it)."""
    g, u = np.ascontiguousarray(g), np.ascontiguousarray(u)
    h = np.empty_like(g)
    sg = np.empty_like(g) if keep_sg else None
    _core.swiglu_fwd(g.reshape(-1), u.reshape(-1), h.reshape(-1), None if sg is None else sg.reshape(-1))
    return h, sg


def swiglu_backward(dh: np.ndarray, g: np.ndarray, u: np.ndarray,
                    sg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """sg None: recomputed in C from g by the forward's expression (the same bits)."""
    dh = _c(dh)
    dg, du = np.empty_like(g), np.empty_like(g)
    _core.swiglu_bwd(dh.reshape(-1), g.reshape(-1), u.reshape(-1), None if sg is None else sg.reshape(-1),
                     dg.reshape(-1), du.reshape(-1))
    return dg, du


# -- cross-entropy -----------------------------------------------------------------------------
class XentCache(NamedTuple):
    dlogits: np.ndarray  # the gradient, computed with the loss


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray, m: np.ndarray, total, overwrite: bool = False):
    """Softmax, loss and gradient fused in C (src_c/ops.c); the loss summed in double.  overwrite:
    the gradient is written over the logits (float32, contiguous) instead of a new array."""
    v = logits.shape[-1]
    v2 = np.ascontiguousarray(logits.reshape(-1, v), dtype=np.float32)
    wt = (m / total).astype(np.float32).reshape(-1)
    d = v2 if overwrite else np.empty_like(v2)
    rows = np.empty(v2.shape[0], dtype=np.float64)
    _core.softmax_xent(v2, np.ascontiguousarray(targets.reshape(-1), dtype=np.int64), wt, d, rows)
    return logits.dtype.type(rows.sum()), XentCache(d.reshape(logits.shape))


def cross_entropy_backward(c: XentCache, dloss: float = 1.0) -> np.ndarray:
    return c.dlogits if dloss == 1.0 else c.dlogits * c.dlogits.dtype.type(dloss)


# -- TTT-Linear inner loop (src_c/ttt.c) ----------------------------------------------------------
TTTGrads = ref.TTTGrads


class TTTCache(NamedTuple):
    args: tuple         # the C loop's inputs, handed again to its backward
    Ws: np.ndarray      # inner weights at each mini-batch start [B H, chunks, f, f]
    saved: np.ndarray   # what the backward needs per (sequence x head, mini-batch)
    shape: tuple        # (B, T, D, H, Kmb)
    stream: dict        # the streaming arguments (Winit, binit, reset), empty without them


def _stream_args(init, resets, bsz: int, h: int, f: int, nch: int) -> dict:
    """The C loop's optional streaming arguments from ttt_forward's init / resets."""
    out = {}
    if init is not None:
        W, b = init
        out["Winit"] = _c(np.asarray(W, np.float32).reshape(bsz * h, f, f))
        out["binit"] = _c(np.asarray(b, np.float32).reshape(bsz * h, f))
    if resets is not None:
        r = np.ascontiguousarray(resets, dtype=np.uint8)
        if r.shape != (bsz, nch):
            raise ValueError(f"ttt_forward: resets has shape {r.shape}, expected {(bsz, nch)} "
                             "(sequences x mini-batches)")
        out["reset"] = r
    return out


def ttt_forward(q, k, v, lr, tok, W1, b1, gamma, beta, num_heads: int, mini_batch: int, rope_theta: float, *,
                init=None, resets=None, final: bool = False):
    """The numpy backend's ttt_forward in C: sequences x heads in parallel, RoPE inside."""
    bsz, t, d = q.shape
    h, kmb = num_heads, mini_batch
    f = d // h
    cos, sin = rope_tables(np.arange(kmb), f, rope_theta, np.float32)  # positions t mod Kmb
    nch = -(-t // kmb)
    Ws = np.empty((bsz * h, nch, f, f), dtype=np.float32)
    saved = np.empty((bsz * h, nch, _core.ttt_saved_floats(kmb, f)), dtype=np.float32)
    merged = np.empty((bsz, t, d), dtype=np.float32)
    args = (h, _c(q), _c(k), _c(v), cos, sin, _c(lr), _c(tok), _c(W1), _c(b1.reshape(h, f)), _c(gamma), _c(beta))
    stream = _stream_args(init, resets, bsz, h, f, nch)
    if final:
        Wf = np.empty((bsz, h, f, f), dtype=np.float32)
        bf = np.empty((bsz, h, 1, f), dtype=np.float32)
        _core.ttt_forward(*args, merged, Ws, saved, Wfin=Wf.reshape(bsz * h, f, f), bfin=bf.reshape(bsz * h, f),
                          **stream)
        return merged, TTTCache(args, Ws, saved, (bsz, t, d, h, kmb), stream), (Wf, bf)
    _core.ttt_forward(*args, merged, Ws, saved, **stream)
    return merged, TTTCache(args, Ws, saved, (bsz, t, d, h, kmb), stream)


def ttt_backward(dmerged: np.ndarray, c: TTTCache) -> TTTGrads:
    bsz, t, d, h, kmb = c.shape
    f, r = d // h, bsz * h
    dq, dk, dv = (np.empty((bsz, t, d), dtype=np.float32) for _ in range(3))
    dlr = np.empty((bsz, h, t), dtype=np.float32)
    dtok_r = np.empty((r, kmb), dtype=np.float32)
    dW1_r = np.empty((r, f, f), dtype=np.float32)
    db1_r, dgamma_r, dbeta_r = (np.empty((r, f), dtype=np.float32) for _ in range(3))
    _core.ttt_backward(*c.args, c.Ws, c.saved, np.ascontiguousarray(dmerged), dq, dk, dv, dlr, dtok_r, dW1_r, db1_r,
                       dgamma_r, dbeta_r, **c.stream)
    return TTTGrads(dq, dk, dv, dlr, dtok_r.sum(axis=0), dW1_r.reshape(bsz, h, f, f).sum(axis=0),
                    db1_r.reshape(bsz, h, 1, f).sum(axis=0), dgamma_r.reshape(bsz, h, f).sum(axis=0),
                    dbeta_r.reshape(bsz, h, f).sum(axis=0))


def ttt_prefill(pos: int, q, k, v, x, lr_w, lr_b, lr_scale: float, tok, gamma, beta, W0, b0, Kb, Gb, Sb, out) -> None:
    """The numpy backend's ttt_prefill in C (bt_ttt_prefill): heads in parallel, token by token."""
    _core.ttt_prefill(pos, q, k, v, x, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb, Sb, out)


# -- causal GQA attention (src_c/attention.c) ------------------------------------------------------
AttentionCache = ref.AttentionCache


def attention_forward(q, k, v, scale: float, tile: int = 64):
    """The numpy backend's attention_forward in C: (sequence, head, query tile) in parallel."""
    q, k, v = _c(q), _c(k), _c(v)
    out = np.empty_like(q)
    lse = np.empty(q.shape[:3], dtype=np.float32)
    _core.attn_forward(q, k, v, scale, tile, out, lse)
    return out, AttentionCache(q, k, v, out, lse, float(scale), int(tile))


def attention_backward(dout, c):
    """Scores recomputed in C tile by tile; (sequence, key/value head) in parallel."""
    dq, dk, dv = np.empty_like(c.q), np.empty_like(c.k), np.empty_like(c.v)
    _core.attn_backward(c.q, c.k, c.v, c.out, c.lse, _c(dout), c.scale, c.tile, dq, dk, dv)
    return dq, dk, dv


def attention_cached(q, kc, vc, ks, vs, start: int, scale: float, out) -> None:
    """The numpy backend's attention_cached in C (float32, float16 or int8 caches read as they are)."""
    _core.attn_cached(_c(q), kc, vc, ks, vs, start, scale, out)


# -- LM head -------------------------------------------------------------------------------------
Int8Head = ref.Int8Head


def lm_head(x: np.ndarray, head) -> np.ndarray:
    """x [M, D] -> logits [M, V] against a float head [V, D] or an Int8Head."""
    if isinstance(head, Int8Head):
        xq, a = kernels.quantize_activations(np.ascontiguousarray(x))
        logits = np.empty((x.shape[0], head.q.shape[0]), dtype=np.float32)
        _core.gemm_s8(head.q, head.scale, xq, a, logits)
        return logits
    return matmul(x, head, trans_b=True)


# -- one-token decode: every layer in one C call --------------------------------------------------
def fused_decoder(dims: dict, layers: list[dict], head: dict):
    """The C decoder (src_c/decode.c) over the model's packed weights; see _core.Decoder."""
    return _core.Decoder(dims, layers, head)


# -- optimizer -------------------------------------------------------------------------------------
def adamw(p, g, m, v, lr: float, beta1: float, beta2: float, eps: float, wd: float, bc1: float, bc2: float,
          gscale: float) -> None:
    _core.adamw(p.reshape(-1), _c(g).reshape(-1), m.reshape(-1), v.reshape(-1), lr, beta1, beta2, eps, wd, bc1,
                bc2, gscale)


def sumsq(x: np.ndarray) -> float:
    return _core.sumsq(x)
