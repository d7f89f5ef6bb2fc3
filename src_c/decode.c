/* decode.c -- a decoded token through a BitLlama layer and the LM head (bt_decode.h). */
#include "bt_decode.h"

#include <math.h>

#include "bt_int8.h"
#include "bt_kernels.h"
#include "bt_ops.h"
#include "bt_quant.h"
#include "bt_ttt.h"

#define DEC_LN_EPS 1e-6f

static int64_t up16(int64_t n) { return (n + 15) & ~(int64_t)15; }

size_t bt_decode_scratch_floats(const bt_dec_dims *d) {
    const int64_t D = d->D, I = d->I;
    /* xn, q, k, v, o, pn, xh, y: D each; g, u, h, sg: I each; ttt: 3 D; lr: H;
     * int8 activations: padded(max(D, I)) bytes; sums and scales */
    const int64_t big = bt_padded_cols(D > I ? D : I);
    return (size_t)(8 * up16(D) + 4 * up16(I) + 3 * up16(D) + up16(d->H) + up16(big / 4 + 1) + 32);
}

typedef struct {
    float *xn, *q, *k, *v, *o, *pn, *xh, *y, *g, *u, *h, *sg, *ttt, *lr;
    int8_t *q8;
    int32_t *sums;
    float *a, *r;
} dec_bufs;

static dec_bufs carve(const bt_dec_dims *d, float *s) {
    const int64_t D = up16(d->D), I = up16(d->I);
    const int64_t big = bt_padded_cols(d->D > d->I ? d->D : d->I);
    dec_bufs b;
    b.xn = s; b.q = s + D; b.k = s + 2 * D; b.v = s + 3 * D; b.o = s + 4 * D; b.pn = s + 5 * D;
    b.xh = s + 6 * D; b.y = s + 7 * D;
    s += 8 * D;
    b.g = s; b.u = s + I; b.h = s + 2 * I; b.sg = s + 3 * I;
    s += 4 * I;
    b.ttt = s;
    s += 3 * D;
    b.lr = s;
    s += up16(d->H);
    b.q8 = (int8_t *)s;
    s += up16(big / 4 + 1);
    b.sums = (int32_t *)s;
    b.a = s + 16;
    b.r = s + 24;
    return b;
}

/* y = Qa(x) . W^T for one token: x [W.cols] float32 -> y [W.rows]. */
static int bitlinear1(const bt_ternary *w, const float *x, dec_bufs *b, float *y) {
    const int err = bt_quantize_act(x, 1, w->cols, w->cols, b->q8, bt_padded_cols(w->cols), b->a, b->sums);
    if (err) return err;
    return bt_gemm_i8_sums(w, b->q8, bt_padded_cols(w->cols), b->sums, b->a, 1, y, w->rows);
}

/* Three projections of the same quantized input share one quantization. */
static int project3(const bt_ternary *w0, const bt_ternary *w1, const bt_ternary *w2, const float *x, dec_bufs *b,
                    float *y0, float *y1, float *y2) {
    const int64_t kp = bt_padded_cols(w0->cols);
    int err = bt_quantize_act(x, 1, w0->cols, w0->cols, b->q8, kp, b->a, b->sums);
    if (!err) err = bt_gemm_i8_sums(w0, b->q8, kp, b->sums, b->a, 1, y0, w0->rows);
    if (!err) err = bt_gemm_i8_sums(w1, b->q8, kp, b->sums, b->a, 1, y1, w1->rows);
    if (!err && w2) err = bt_gemm_i8_sums(w2, b->q8, kp, b->sums, b->a, 1, y2, w2->rows);
    return err;
}

static void rope1(float *x, int64_t H, int64_t f, const float *c, const float *s) {
    for (int64_t h = 0; h < H; h++) {
        float *xr = x + h * f;
        for (int64_t j = 0; j < f / 2; j++) {
            const float x0 = xr[2 * j], x1 = xr[2 * j + 1];
            xr[2 * j] = x0 * c[j] - x1 * s[j];
            xr[2 * j + 1] = x0 * s[j] + x1 * c[j];
        }
    }
}

int bt_decode_layer(const bt_dec_dims *d, const bt_dec_layer *l, const bt_dec_state *s, int64_t pos, float *x,
                    float *scratch) {
    const int64_t D = d->D, H = d->H, f = d->f, I = d->I;
    dec_bufs b = carve(d, scratch);
    int err;

    /* TTT block */
    bt_rmsnorm_fwd(x, l->norm1, 1, D, d->rms_eps, b.xn, b.r);
    if ((err = project3(&l->wq, &l->wk, &l->wv, b.xn, &b, b.q, b.k, b.v))) return err;
    for (int64_t h = 0; h < H; h++) {
        const float *w = l->lr_w + h * D;
        float z = 0.0f;
        for (int64_t c = 0; c < D; c++) z += b.xn[c] * w[c];
        z += l->lr_b[h];
        b.lr[h] = d->lr_scale * (0.5f + 0.5f * tanhf(0.5f * z));
    }
    const float *cs = d->cos + pos * (f / 2), *sn = d->sin + pos * (f / 2);
    rope1(b.q, H, f, cs, sn);
    rope1(b.k, H, f, cs, sn);
    bt_ttt_decode(H, f, d->K, pos, b.q, b.k, b.v, b.lr, l->tok[pos], l->gamma, l->beta, s->W0, s->b0, s->Kb, s->Gb,
                  s->Sb, b.o, b.ttt);
    bt_layernorm_fwd(b.o, l->post_w, l->post_b, 1, D, DEC_LN_EPS, b.pn, b.xh, b.r);
    if ((err = bitlinear1(&l->wo, b.pn, &b, b.y))) return err;
    for (int64_t c = 0; c < D; c++) x[c] += b.y[c];

    /* SwiGLU block */
    bt_rmsnorm_fwd(x, l->norm2, 1, D, d->rms_eps, b.xn, b.r);
    if ((err = project3(&l->wgate, &l->wup, NULL, b.xn, &b, b.g, b.u, NULL))) return err;
    bt_swiglu_fwd(b.g, b.u, I, b.h, b.sg);
    if ((err = bitlinear1(&l->wdown, b.h, &b, b.y))) return err;
    for (int64_t c = 0; c < D; c++) x[c] += b.y[c];
    return BT_OK;
}

int bt_decode_head(const bt_dec_dims *d, const float *x, const float *norm_w, const int8_t *Wq, const float *wscale,
                   const float *head, int64_t V, float *logits, float *scratch) {
    const int64_t D = d->D;
    dec_bufs b = carve(d, scratch);
    bt_rmsnorm_fwd(x, norm_w, 1, D, d->rms_eps, b.xn, b.r);
    if (Wq) {
        const int err = bt_quantize_act(b.xn, 1, D, D, b.q8, D, b.a, b.sums);
        if (err) return err;
        bt_gemm_s8(Wq, D, wscale, V, D, b.q8, D, b.a, 1, logits, V);
        return BT_OK;
    }
    return bt_sgemm(0, 1, 1, V, D, b.xn, D, head, D, logits, V);
}
