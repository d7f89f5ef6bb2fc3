/* decode.c -- a decoded token through a BitLlama layer and the LM head (bt_decode.h). */
#include "bt_decode.h"

#include <math.h>

#include "bt_int8.h"
#include "bt_kernels.h"
#include "bt_ops.h"
#include "bt_quant.h"
#include "bt_cpu.h"
#include "bt_ttt.h"

#ifdef BT_HAVE_X86
#include <xmmintrin.h>
#endif

static double min_parallel_bytes = 16.0 * 1024 * 1024;

double bt_decode_min_parallel_bytes(double bytes) {
    const double old = min_parallel_bytes;
    if (bytes >= 0.0) min_parallel_bytes = bytes;
    return old;
}

static int64_t up16(int64_t n) { return (n + 15) & ~(int64_t)15; }

/* Pitch of the quantized activations: enough zero padding for the kernels of either format. */
static int64_t act_cols(int64_t K) { return bt_fmt_padded_cols(BT_FMT_T1, K); }

size_t bt_decode_scratch_floats(const bt_dec_dims *d) {
    const int64_t D = d->D, I = d->I;
    /* xn, q, k, v, o, pn, xh, y: D each; g, u, h, sg: I each; ttt: 3 D; lr: H;
     * int8 activations: padded(max(D, I)) bytes; sums and scales */
    const int64_t big = act_cols(D > I ? D : I);
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
    const int64_t big = act_cols(d->D > d->I ? d->D : d->I);
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

static void rope1(float *x, int64_t f, const float *c, const float *s) {
    for (int64_t j = 0; j < f / 2; j++) {
        const float x0 = x[2 * j], x1 = x[2 * j + 1];
        x[2 * j] = x0 * c[j] - x1 * s[j];
        x[2 * j + 1] = x0 * s[j] + x1 * c[j];
    }
}

/* Quantize x [K] into the shared int8 buffer (zero padded to act_cols(K)). */
static int quant1(const float *x, int64_t K, dec_bufs *b) {
    return bt_quantize_act(x, 1, K, K, b->q8, act_cols(K), b->a, b->sums);
}

/* Rows [n0, n1) of y = Qa W^T on the calling thread; then x[n0, n1) += y[n0, n1) when x is given
 * (a residual: each thread adds the rows it made, so no thread waits on the others for it). */
static void gemv_range(const bt_ternary *w, const dec_bufs *b, int64_t n0, int64_t n1, float *y, float *x) {
    bt_gemm_i8_rows(w, b->q8, act_cols(w->cols), b->sums, b->a, 1, n0, n1, y, w->rows);
    if (x)
        for (int64_t c = n0; c < n1; c++) x[c] += y[c];
}

static void gemv_rows(const bt_ternary *w, const dec_bufs *b, float *y, float *x) {
    int64_t n0, n1;
    bt_thread_range(w->rows, 4, &n0, &n1);
    gemv_range(w, b, n0, n1, y, x);
}

/* While one thread runs a single-thread step (and the others wait for it), memory would idle:
 * each thread first prefetches into L2 the start of what it reads next, up to this many bytes
 * per matrix, which the products' own prefetch (bt_prefetch.h) then runs ahead of. */
#ifndef DEC_NEXT_BYTES
#define DEC_NEXT_BYTES 8192
#endif

static void pf_next(const void *p, int64_t bytes) {
#ifdef BT_HAVE_X86
    const char *c = (const char *)p;
    if (bytes > DEC_NEXT_BYTES) bytes = DEC_NEXT_BYTES;
    for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(c + o, _MM_HINT_T1);
#else
    (void)p;
    (void)bytes;
#endif
}

/* The start of rows [n0, n1) of w. */
static void pf_range(const bt_ternary *w, int64_t n0, int64_t n1) {
    if (n1 > n0) pf_next(w->codes + n0 * w->stride, (n1 - n0) * w->stride);
}

/* The start of the calling thread's rows of w under gemv_rows. */
static void pf_rows(const bt_ternary *w) {
    int64_t n0, n1;
    bt_thread_range(w->rows, 4, &n0, &n1);
    pf_range(w, n0, n1);
}

/* The start of the calling thread's rows of q, k, v (split by heads, or as gemv_rows). */
static void pf_qkv(const bt_dec_layer *l, int64_t H, int64_t f, int by_heads) {
    if (by_heads) {
        int64_t h0, h1;
        bt_thread_range(H, 1, &h0, &h1);
        pf_range(&l->wq, h0 * f, h1 * f);
        pf_range(&l->wk, h0 * f, h1 * f);
        pf_range(&l->wv, h0 * f, h1 * f);
    } else {
        pf_rows(&l->wq);
        pf_rows(&l->wk);
        pf_rows(&l->wv);
    }
}

/* The single-thread step before layer li (its first RMSNorm and quantization), or with li = L
 * before the int8 head (the final RMSNorm; the head reads the activations at pitch D). */
static int prep_layer(const bt_dec_dims *d, const bt_dec_layer *layers, int64_t li, int64_t L, const float *x,
                      const bt_dec_head *hd, dec_bufs *b) {
    const int64_t D = d->D;
    if (li < L) {
        bt_rmsnorm_fwd(x, layers[li].norm1, 1, D, d->rms_eps, b->xn, b->r);
        return quant1(b->xn, D, b);
    }
    if (hd && hd->Wq) {
        bt_rmsnorm_fwd(x, hd->norm_w, 1, D, d->rms_eps, b->xn, b->r);
        return bt_quantize_act(b->xn, 1, D, D, b->q8, D, b->a, b->sums);
    }
    return BT_OK;
}

/* The phases of a layer alternate between one thread (norms, quantization: vectors of D or I)
 * and all threads (row ranges of the products, head ranges of the TTT step), in one parallel
 * region per token: no thread team is started per product.  Each output is computed by one
 * thread with the same arithmetic whatever the thread count, so results do not depend on it.
 * Four barriers per layer: q, k, v are split by heads (rows [h0 f, h1 f)), the same heads the
 * thread then steps, so the TTT step waits for no other thread; the residuals are added by the
 * thread that made the rows; the next layer's RMSNorm runs in the step that ends this one. */
int bt_decode_token(const bt_dec_dims *d, const bt_dec_layer *layers, const bt_dec_state *states, int64_t L,
                    int64_t pos, float *x, const bt_dec_head *hd, float *logits, float *scratch) {
    const int64_t D = d->D, H = d->H, f = d->f, I = d->I;
    dec_bufs b = carve(d, scratch);
    int err = BT_OK;
    int nt = bt_get_threads();
    if (nt > H) nt = (int)H;
    /* A small model's token is a few hundred microseconds of work: the barriers of each layer
     * would cost more than a second thread gains (and far more on cores shared with another
     * program), so below bt_decode_min_parallel_bytes of weights per token it runs on one thread. */
    double bytes = hd ? (double)hd->V * (double)D * (hd->Wq ? 1.0 : 4.0) : 0.0;
    for (int64_t li = 0; li < L; li++) {
        const bt_ternary *ws[7] = {&layers[li].wq, &layers[li].wk, &layers[li].wv, &layers[li].wo,
                                   &layers[li].wgate, &layers[li].wup, &layers[li].wdown};
        for (int j = 0; j < 7; j++) bytes += (double)ws[j]->rows * (double)ws[j]->stride;
    }
    if (bytes < min_parallel_bytes) nt = 1;
    /* q, k, v by heads where head boundaries fall on whole 4-row tiles */
    const int by_heads = f % 4 == 0;
    BT_PARALLEL(nt) {
        if (L > 0) pf_qkv(layers, H, f, by_heads);
#ifdef _OPENMP
#pragma omp single
#endif
        {
            const int e = prep_layer(d, layers, 0, L, x, hd, &b);
            if (e) err = e;
        }
        for (int64_t li = 0; li < L && !err; li++) {
            const bt_dec_layer *l = layers + li;
            const bt_dec_state *s = states + li;
            /* TTT block: q k v = Qa(RMSNorm(x)) W^T (the step before made Qa) */
            int64_t h0, h1;
            bt_thread_range(H, 1, &h0, &h1);
            if (by_heads) {
                gemv_range(&l->wq, &b, h0 * f, h1 * f, b.q, NULL);
                gemv_range(&l->wk, &b, h0 * f, h1 * f, b.k, NULL);
                gemv_range(&l->wv, &b, h0 * f, h1 * f, b.v, NULL);
            } else {
                gemv_rows(&l->wq, &b, b.q, NULL);
                gemv_rows(&l->wk, &b, b.k, NULL);
                gemv_rows(&l->wv, &b, b.v, NULL);
#ifdef _OPENMP
#pragma omp barrier
#endif
            }
            /* per head: learning rate, RoPE, the inner step */
            const float *cs = d->cos + pos * (f / 2), *sn = d->sin + pos * (f / 2);
            for (int64_t h = h0; h < h1; h++) {
                b.lr[h] = bt_ttt_lr(b.xn, l->lr_w + h * D, l->lr_b[h], D, d->lr_scale);
                rope1(b.q + h * f, f, cs, sn);
                rope1(b.k + h * f, f, cs, sn);
            }
            bt_ttt_decode_heads(h0, h1, f, d->K, pos, b.q, b.k, b.v, b.lr, l->tok[pos], l->gamma, l->beta, s->W0,
                                s->b0, s->Kb, s->Gb, s->Sb, b.o, b.ttt);
            pf_rows(&l->wo);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            {
                bt_layernorm_fwd(b.o, l->post_w, l->post_b, 1, D, BT_LN_EPS, b.pn, b.xh, b.r);
                const int e = quant1(b.pn, D, &b);
                if (e) err = e;
            }
            if (err) break;
            gemv_rows(&l->wo, &b, b.y, x); /* x += Qa(LN(o)) Wo^T */
            pf_rows(&l->wgate);
            pf_rows(&l->wup);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            { /* SwiGLU block: n = RMSNorm(x), h = silu(Qa(n) Wg^T) * Qa(n) Wu^T */
                bt_rmsnorm_fwd(x, l->norm2, 1, D, d->rms_eps, b.xn, b.r);
                const int e = quant1(b.xn, D, &b);
                if (e) err = e;
            }
            if (err) break;
            {
                int64_t n0, n1;
                bt_thread_range(I, 4, &n0, &n1);
                const int64_t kp = act_cols(D);
                bt_gemm_i8_rows(&l->wgate, b.q8, kp, b.sums, b.a, 1, n0, n1, b.g, I);
                bt_gemm_i8_rows(&l->wup, b.q8, kp, b.sums, b.a, 1, n0, n1, b.u, I);
                if (n1 > n0) bt_swiglu_fwd(b.g + n0, b.u + n0, n1 - n0, b.h + n0, b.sg + n0);
            }
            pf_rows(&l->wdown);
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            {
                const int e = quant1(b.h, I, &b);
                if (e) err = e;
            }
            if (err) break;
            gemv_rows(&l->wdown, &b, b.y, x); /* x += Qa(h) Wd^T */
            if (li + 1 < L) {
                pf_qkv(l + 1, H, f, by_heads);
            } else if (hd && hd->Wq) {
                int64_t n0, n1;
                bt_thread_range(hd->V, 16, &n0, &n1);
                if (n1 > n0) pf_next(hd->Wq + n0 * D, (n1 - n0) * D);
            }
#ifdef _OPENMP
#pragma omp barrier
#pragma omp single
#endif
            {
                const int e = prep_layer(d, layers, li + 1, L, x, hd, &b);
                if (e) err = e;
            }
        }
        if (!err && hd && hd->Wq) { /* int8 head: rows split like the products */
            int64_t n0, n1;
            bt_thread_range(hd->V, 16, &n0, &n1);
            bt_gemm_s8_rows(hd->Wq, D, hd->wscale, n0, n1, D, b.q8, D, b.a, 1, logits, hd->V);
        }
    }
    if (!err && hd && !hd->Wq) {
        bt_rmsnorm_fwd(x, hd->norm_w, 1, D, d->rms_eps, b.xn, b.r);
        err = bt_sgemm(0, 1, 1, hd->V, D, b.xn, D, hd->Wf, D, logits, hd->V);
    }
    return err;
}
