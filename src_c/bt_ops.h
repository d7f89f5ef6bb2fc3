/*
 * bt_ops.h -- fused row-wise float32 operations of the training step (norms, SwiGLU gate,
 * softmax cross-entropy), forward and backward, parallel over rows.
 *
 * x, y, dy, dx: [M, D] C-contiguous float32.  Row sums use the fixed 8-lane order of
 * ttt.c; parameter gradients summed over rows (dw, db) are reduced per block of
 * BT_OPS_ROWS rows and the blocks are then added in order, so neither the thread count
 * nor the ISA changes a bit of any result; exp is computed by a polynomial in plain C
 * (bt_expf in ops.c) for the same reason.
 */
#ifndef BT_OPS_H
#define BT_OPS_H

#include <stdint.h>

#define BT_OPS_ROWS 64

/* RMSNorm: r[m] = 1 / sqrt(mean(x_m^2) + eps), y = x * r * w. */
void bt_rmsnorm_fwd(const float *x, const float *w, int64_t M, int64_t D, float eps, float *y, float *r);
/* xn = x * r, g = dy * w: dx = r * (g - xn * mean(g * xn)); dw = sum_rows dy * xn.
 * Returns BT_OK or BT_ERR_NOMEM. */
int bt_rmsnorm_bwd(const float *dy, const float *x, const float *w, const float *r, int64_t M, int64_t D,
                   float *dx, float *dw);

/* LayerNorm: xh = (x - mean) * r, r[m] = 1 / sqrt(var + eps), y = xh * w + b. */
void bt_layernorm_fwd(const float *x, const float *w, const float *b, int64_t M, int64_t D, float eps, float *y,
                      float *xh, float *r);
/* g = dy * w: dx = r * (g - mean(g) - xh * mean(g * xh)); dw = sum_rows dy * xh; db = sum_rows dy. */
int bt_layernorm_bwd(const float *dy, const float *xh, const float *w, const float *r, int64_t M, int64_t D,
                     float *dx, float *dw, float *db);

/* SwiGLU gate over n elements: sg = sigmoid(g), h = g * sg * u (sg may be NULL: not stored). */
void bt_swiglu_fwd(const float *g, const float *u, int64_t n, float *h, float *sg);
/* du = dh * g * sg;  dg = dh * u * sg * (1 + g * (1 - sg)).  sg NULL: recomputed from g by the
 * forward's expression (the same bits as the sg it would have stored). */
void bt_swiglu_bwd(const float *dh, const float *g, const float *u, const float *sg, int64_t n, float *dg,
                   float *du);

/* Softmax cross-entropy, fused with its gradient.  logits [M, V]; targets [M]; wt [M] the
 * weight of each row (mask / sum(mask)).  loss[m] = wt[m] * (logsumexp(l_m) - l_m[target]) in
 * double; dlogits[m] = wt[m] * (softmax(l_m) - onehot(target)); dlogits may be logits. */
void bt_softmax_xent(const float *logits, const int64_t *targets, const float *wt, int64_t M, int64_t V,
                     float *dlogits, double *loss);

#endif /* BT_OPS_H */
