/*
 * bt_decode.h -- one decoded token through every BitLlama layer and the LM head, in C
 * (inference; bitttt/session.py builds these structs once per model).
 *
 * A layer (shapes: D hidden, H heads of f = D / H, I intermediate, K mini-batch):
 *   n = RMSNorm(x; norm1)                        xq = Qa(n)
 *   q, k, v = xq . Wq^T, Wk^T, Wv^T              (packed ternary, exact int8 sums)
 *   lr[h] = lr_scale * sigmoid(n . lr_w[h] + lr_b[h])      (reads n unquantized)
 *   q, k rotated by RoPE at position pos         (cos, sin: [K, f / 2])
 *   o = bt_ttt_decode_heads(...)                  (state updated in place)
 *   x += Qa(LN(o; post_w, post_b)) . Wo^T
 *   n = RMSNorm(x; norm2);  x += Qa(silu(Qa(n) Wg^T) * (Qa(n) Wu^T)) . Wd^T
 * Every buffer comes from the caller's scratch (bt_decode_scratch_floats): nothing is
 * allocated per token.
 */
#ifndef BT_DECODE_H
#define BT_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "bt_ternary.h"

typedef struct {
    int64_t D, H, f, I, K;
    float rms_eps;    /* RMSNorm epsilon (the TTT LayerNorms use 1e-6)      */
    float lr_scale;   /* ttt_base_lr / f                                     */
    const float *cos, *sin; /* [K, f / 2] RoPE tables                       */
} bt_dec_dims;

typedef struct {
    bt_ternary wq, wk, wv, wo, wgate, wup, wdown;
    const float *norm1, *norm2;       /* [D]     */
    const float *lr_w, *lr_b;         /* [H, D], [H] */
    const float *gamma, *beta;        /* [H, f]  inner LayerNorm */
    const float *tok;                 /* [K]     position scales, clamped at 0 */
    const float *post_w, *post_b;     /* [D]     */
} bt_dec_layer;

typedef struct {
    float *W0, *b0, *Kb, *Gb, *Sb;    /* [H, f, f], [H, f], [H, K, f], [H, K, f], [H, f] */
} bt_dec_state;

/* Floats of scratch bt_decode_token needs (64-byte aligned by the caller). */
size_t bt_decode_scratch_floats(const bt_dec_dims *d);

typedef struct {
    const float *norm_w;              /* [D] final RMSNorm */
    const int8_t *Wq;                 /* int8 head [V, D] with row scales wscale [V], or NULL */
    const float *wscale;
    const float *Wf;                  /* float32 head [V, D] when Wq is NULL */
    int64_t V;
} bt_dec_head;

/* x [D] in place: the token at mini-batch position pos (0 <= pos < K) through the L layers
 * (states [L], updated in place), then, when hd is given, logits [V] = RMSNorm(x; norm_w) .
 * head^T (int8 head: activations quantized per token, exact int32 sums).  One thread team
 * for the whole token; results do not depend on the thread count.
 * BT_OK, or BT_ERR_NONFINITE when an activation to quantize holds NaN or inf. */
int bt_decode_token(const bt_dec_dims *d, const bt_dec_layer *layers, const bt_dec_state *states, int64_t L,
                    int64_t pos, float *x, const bt_dec_head *hd, float *logits, float *scratch);

/* Below this many bytes of weights per token (default 16 MiB) bt_decode_token runs on one
 * thread.  Sets it when bytes >= 0; returns the previous value (tests lower it to 0). */
double bt_decode_min_parallel_bytes(double bytes);

#endif /* BT_DECODE_H */
