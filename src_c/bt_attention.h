/*
 * bt_attention.h -- causal softmax attention with grouped-query heads (GQA), float32: the
 * training forward and backward computed in tiles with an online softmax (no [T, T] array,
 * the backward recomputes the scores from the saved log-sum-exp, as FlashAttention does),
 * and the attention of new tokens against a KV cache (prefill in blocks, one-token decode).
 *
 * Shapes (C-contiguous): B sequences, H query heads, Hkv key/value heads (Hkv divides H; query
 * head h reads key/value head h / (H / Hkv)), T tokens, f head dim.
 *   q, out, dq, dout  [B, H, T, f]      k, v, dk, dv  [B, Hkv, T, f]      lse  [B, H, T]
 *   out[i] = sum_{j <= i} softmax_j(scale q_i . k_j) v_j,   lse[i] = log sum_{j <= i} exp(scale q_i . k_j)
 * Every output element is computed by one thread in a fixed order, so the thread count never
 * changes a bit of the result.  The spec is bitttt/backend/numpy.py (attention_forward,
 * attention_backward, attention_cached).
 */
#ifndef BT_ATTENTION_H
#define BT_ATTENTION_H

#include <stdint.h>

#include "bt_common.h"  /* BT_OK and the BT_ERR_* codes these return */

typedef struct {
    int64_t B, H, Hkv, T, f, tile;  /* tile: query and key rows per block of scores */
    float scale;                    /* usually 1 / sqrt(f) */
} bt_attn_dims;

/* out [B, H, T, f], lse [B, H, T].  Parallel over (sequence, head, query tile).
 * BT_OK, BT_ERR_NOMEM, or BT_ERR_SHAPE for inconsistent dims. */
int bt_attn_forward(const bt_attn_dims *d, const float *q, const float *k, const float *v, float *out, float *lse);

/* dout -> dq [B, H, T, f], dk, dv [B, Hkv, T, f] (overwritten).  Parallel over (sequence,
 * key/value head): each thread owns the dk, dv rows of its head and the dq rows of its query
 * heads.  BT_OK, BT_ERR_NOMEM or BT_ERR_SHAPE. */
int bt_attn_backward(const bt_attn_dims *d, const float *q, const float *k, const float *v, const float *out,
                     const float *lse, const float *dout, float *dq, float *dk, float *dv);

/* Element types of a KV cache. */
enum { BT_KV_F32 = 0, BT_KV_F16 = 1, BT_KV_I8 = 2 };

/* T new queries q [T, H, f] at positions start .. start+T-1 against a cache kc, vc
 * [Hkv, cap, f] (rows 0 .. start+T-1 live; float32, IEEE half as uint16, or int8 codes with
 * the per-head, per-token scales ks, vs [Hkv, cap]: k = code * ks) -> out [T, H, f].  Query i
 * reads keys 0 .. start+i.  Parallel over (token, key/value head): the G query heads of a group
 * read each cached row once.  BT_OK, BT_ERR_NOMEM or BT_ERR_SHAPE. */
int bt_attn_cached(int64_t T, int64_t H, int64_t Hkv, int64_t f, int64_t cap, int64_t start, float scale,
                   int kv_type, const float *q, const void *kc, const void *vc, const float *ks, const float *vs,
                   float *out);

#endif
