/*
 * bt_ttt.h -- the TTT-Linear inner loop (mini-batch gradient descent in the dual form),
 * forward and backward, fused per (sequence, head) and run in parallel over them.
 *
 * Shapes (all float32, C-contiguous): B sequences, H heads, D = H*f, R = B*H independent rows
 * (r = b*H + h), T tokens, f head dim, K mini-batch size, C = ceil(T / K) mini-batches (the
 * last may be shorter: n = T - (C-1)*K tokens).
 *   q, k, v   [B, T, D]   projections as the BitLinears give them (head h = columns h*f..);
 *                         RoPE is applied here to q and k (pairs (2j, 2j+1), position t mod K)
 *   cos, sin  [K, f/2]    RoPE tables for positions 0..K-1
 *   lr        [B, H, T]   gated learning rate of every token (ttt_base_lr * sigmoid(.) / f)
 *   tok       [K]         per-position scale max(1/(i+1) + learnable_token_idx[i], 0)
 *   W1 [H, f, f], b1 [H, f], gamma [H, f], beta [H, f]   initial state and inner LayerNorm
 * Per mini-batch (i, j < n; E[i][j] = tok[i] * lr[j]; eps 1e-6):
 *   Z1 = k W + b;  G = d/dZ1 1/2 ||LN(Z1) - (v - k)||^2            (closed form per row)
 *   b_bar[i] = b - sum_{j<=i} E[i][j] G[j]
 *   Zb[i]    = q[i] W - sum_{j<=i} E[i][j] (q[i].k[j]) G[j] + b_bar[i]
 *   out[i]   = q[i] + LN(Zb[i])
 *   W -= sum_j k[j]^T (E[n-1][j] G[j]);   b -= sum_j E[n-1][j] G[j]
 * The forward saves the state W entering every mini-batch (Ws [R, C, f, f]) and the
 * intermediates the backward needs (saved [R, C, bt_ttt_saved_floats(K, f)]).  Every sum runs in a fixed
 * order, so the thread count never changes the result; the ISA paths (scalar, AVX2,
 * AVX-512: the same C compiled for each) give identical bits.
 */
#ifndef BT_TTT_H
#define BT_TTT_H

#include <stdint.h>

typedef struct {
    int64_t B, H, T, f, K;
    const float *q, *k, *v, *cos, *sin, *lr, *tok, *W1, *b1, *gamma, *beta;
    /* Streaming (stateful) training; all NULL for sequences that start from (W1, b1):
     *   Winit [R, f, f], binit [R, f]  the state row r starts from (a state carried over from the
     *                                  window before); the backward treats it as a constant
     *   reset [B, C] (0/1)             1: the state is set to (W1, b1) at the start of that mini-batch
     *                                  (mini-batch 0 always starts from (W1, b1) without Winit)
     *   Wfin [R, f, f], bfin [R, f]    forward output: the state after the last mini-batch */
    const float *Winit, *binit;
    const uint8_t *reset;
    float *Wfin, *bfin;
} bt_ttt_args;

/* Floats saved per (row, mini-batch) for the backward. */
static inline int64_t bt_ttt_saved_floats(int64_t K, int64_t f) { return 6 * K * f + 4 * K + K * K; }

/* out [B, T, D] (heads side by side, as post_norm wants them); Ws [R, C, f, f];
 * saved [R, C, bt_ttt_saved_floats(K, f)].  BT_OK or BT_ERR_NOMEM. */
int bt_ttt_forward(const bt_ttt_args *a, float *out, float *Ws, float *saved);

/* dout [B, T, D] -> dq, dk, dv [B, T, D] (gradients of the raw, un-rotated projections),
 * dlr [B, H, T], and per-row partial parameter
 * gradients (the caller sums them over rows, in a fixed order): dtok [R, K],
 * dW1 [R, f, f], db1 [R, f], dgamma [R, f], dbeta [R, f].  With Winit or reset, dW1/db1 hold the
 * gradient through the mini-batches that started from (W1, b1) only: the gradient reaching a
 * carried Winit is dropped (truncated at the window edge).  BT_OK or BT_ERR_NOMEM. */
int bt_ttt_backward(const bt_ttt_args *a, const float *Ws, float *saved, const float *dout,
                    float *dq, float *dk, float *dv, float *dlr, float *dtok, float *dW1, float *db1,
                    float *dgamma, float *dbeta);

/* One decoded token through the inner loop of a layer, heads [h0, h1), on the calling thread
 * (inference; see bitttt/session.py for the state).  The token is number `pos` (0 <= pos < K) of its
 * mini-batch; the mini-batch's gradient sum is kept as factors, SW = sum_{t<=pos} Kb_t^T Gb_t:
 *   g = lr d/dz of 1/2 ||LN(k W0 + b0) - (v - k)||^2;  Kb_pos = k, Gb_pos = g, Sb += g;
 *   out = q + LN(q W0 + b0 - tok (q SW + Sb)).
 * The last token of a mini-batch (pos = K - 1) commits: W0 -= tok SW, b0 -= tok Sb, Sb = 0.
 * q, k, v, gamma, beta, out, b0, Sb: [H, f]; W0: [H, f, f]; Kb, Gb: [H, K, f]; lr: [H];
 * scratch: [H, 3 f] (head h uses its own part). */
void bt_ttt_decode_heads(int64_t h0, int64_t h1, int64_t f, int64_t K, int64_t pos, const float *q, const float *k,
                         const float *v, const float *lr, float tok, const float *gamma, const float *beta, float *W0,
                         float *b0, float *Kb, float *Gb, float *Sb, float *out, float *scratch);

/* T tokens in a row (a prompt), the first at mini-batch position pos0, token by token as
 * bt_ttt_decode_heads (the same arithmetic, so reading a prompt at once or token by token gives
 * the same bits), heads in parallel.  q, k, v, out: [T, H * f] (heads side by side, q and k
 * already rotated); xn: [T, H * f] the normalized layer input the learning rates read
 * (bt_ttt_lr with lr_w [H, H * f], lr_b [H]); tok: [K] the position scales. */
void bt_ttt_prefill(int64_t H, int64_t f, int64_t K, int64_t pos0, int64_t T, const float *q, const float *k,
                    const float *v, const float *xn, const float *lr_w, const float *lr_b, float lr_scale,
                    const float *tok, const float *gamma, const float *beta, float *W0, float *b0, float *Kb,
                    float *Gb, float *Sb, float *out, float *scratch);

/* A head's inner learning rate for one token: scale * sigmoid(x . w + b), x and w [D]; the dot
 * product in a fixed order of eight partial sums (decoding and prefill share it). */
float bt_ttt_lr(const float *x, const float *w, float b, int64_t D, float scale);

#endif /* BT_TTT_H */
