/* kernels.c -- threading and panel drivers for bt_kernels.h, over the kernels of the current
 * table (bt_ops(), bt_isa_kernels.h). */
#include "bt_kernels.h"
#include "bt_arena.h"
#include "bt_cpu.h"
#include "bt_isa_kernels.h"
#include "bt_quant.h"

#include <math.h>

#include <stdlib.h>
#include <string.h>

/* Below this many weight-token products a call runs on one thread: waking
 * the pool costs more than it saves. */
#define BT_MIN_PARALLEL_WORK (1 << 18)

static int threads_for(double work, int64_t units) { return bt_threads_for(work, BT_MIN_PARALLEL_WORK, units); }

static void to_float(const bt_ternary *w, const float *a, int64_t M, int64_t n0, int64_t n1,
                     float *y, int64_t ldy) {
    for (int64_t m = 0; m < M; m++) {
        const float f = w->scale / a[m];
        float *row = y + m * ldy;
        for (int64_t n = n0; n < n1; n++) {
            int32_t v;
            memcpy(&v, row + n, sizeof v);
            row[n] = (float)v * f;
        }
    }
}

/* t1 weights, many tokens: rows [n0, n1) are copied to t2 a chunk at a time (BT_T1_CHUNK
 * bytes of t2 rows, kept in cache while the t2 kernels run over it), so the products are the
 * t2 kernels' on the same weights: the same integers.  Returns 0 when the buffers cannot be had
 * (then nothing is written). */
#define BT_T1_CHUNK (192 * 1024)

static int t1_rows_via_t2(const bt_isa_ops *ops, const bt_ternary *w, const int8_t *xq, int64_t ldq,
                          const int32_t *sums, const float *a, const float *fs, int64_t M, int64_t n0, int64_t n1,
                          void *out, int64_t ldo) {
    const int64_t s2 = bt_row_stride(w->cols);
    int64_t chunk = BT_T1_CHUNK / s2 / 24 * 24;
    chunk = chunk < 24 ? 24 : chunk;
    if (chunk > n1 - n0) chunk = n1 - n0;
    bt_ternary t = {chunk, w->cols, s2, w->scale, NULL, BT_FMT_T2};
    t.codes = (uint8_t *)aligned_alloc(BT_ALIGN, (size_t)(chunk * s2));
    if (!t.codes) return 0;
    int ok = 1;
    for (int64_t r0 = n0; r0 < n1 && ok; r0 += chunk) {
        const int64_t r1 = r0 + chunk < n1 ? r0 + chunk : n1;
        t.rows = r1 - r0;
        if (bt_transcode(w, r0, r1, &t) != BT_OK) {
            ok = 0;
            break;
        }
        float *y = (float *)out + r0;
        const int done = fs && ops->i8f(&t, xq, ldq, M, 0, t.rows, fs, y, ldo);
        if (!done) {
            ops->i8(&t, xq, ldq, sums, M, 0, t.rows, (int32_t *)out + r0, ldo);
            if (a) to_float(&t, a, M, 0, t.rows, y, ldo);
        }
    }
    free(t.codes);
    return ok;
}

/* Rows [n0, n1) of the product on the calling thread.  t1 weights: one token through the t1
 * kernel, more through t2 copies (token by token through the t1 kernel if those cannot be had). */
static void i8_rows(const bt_isa_ops *ops, const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                    const float *a, const float *fs, int64_t M, int64_t n0, int64_t n1, void *out, int64_t ldo) {
    if (n1 <= n0) return;
    int32_t *raw = (int32_t *)out; /* float output is first written as int32 in place */
    if (w->fmt == BT_FMT_T1) {
        if (M > 1 && t1_rows_via_t2(ops, w, xq, ldq, sums, a, fs, M, n0, n1, out, ldo)) return;
        ops->i8_t1(w, xq, ldq, sums, M, n0, n1, raw, ldo);
        if (a) to_float(w, a, M, n0, n1, (float *)out, ldo);
        return;
    }
    const int done = fs && ops->i8f(w, xq, ldq, M, n0, n1, fs, (float *)out, ldo);
    if (!done) {
        ops->i8(w, xq, ldq, sums, M, n0, n1, raw, ldo);
        if (a) to_float(w, a, M, n0, n1, (float *)out, ldo);
    }
}

/* Core of the int8 products: xq [M, ldq] padded to bt_fmt_padded_cols, sums given. */
static void gemm_i8_padded(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                           const float *a, int64_t M, void *out, int64_t ldo) {
    const bt_isa_ops *const ops = bt_ops();
    const int64_t N = w->rows;
    const int nt = threads_for((double)N * (double)w->cols * (double)M, (N + 3) / 4);
    float *fs = NULL; /* float products (i8f): the factors of to_float, applied as the tiles are stored */
    if (a && ops->i8f && (fs = (float *)malloc((size_t)M * sizeof(float))) != NULL)
        for (int64_t m = 0; m < M; m++) fs[m] = w->scale / a[m];
    BT_PARALLEL(nt) {
        int64_t n0, n1;
        bt_thread_range(N, 4, &n0, &n1);
        i8_rows(ops, w, xq, ldq, sums, a, fs, M, n0, n1, out, ldo);
    }
    free(fs);
}

static int check_scales(const float *a, int64_t M) {
    for (int64_t m = 0; m < M; m++)
        if (!(a[m] > 0.0f) || a[m] == (float)INFINITY) return BT_ERR_SCALE;
    return BT_OK;
}

/* Pads xq when K is not a whole number of blocks, computes the row sums, runs the product. */
static int gemm_i8_impl(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx,
                        const float *a, void *out, int64_t ldo) {
    if (M <= 0) return BT_OK;
    if (a && check_scales(a, M) != BT_OK) return BT_ERR_SCALE;
    const int64_t kp = bt_fmt_padded_cols(w->fmt, w->cols);
    const int pad = kp != w->cols;
    int32_t small[64];
    int32_t *sums = M <= 64 ? small : (int32_t *)malloc((size_t)M * sizeof(int32_t));
    int8_t *q = pad ? (int8_t *)aligned_alloc(BT_ALIGN, (size_t)(M * kp)) : NULL;
    if (!sums || (pad && !q)) {
        if (sums != small) free(sums);
        free(q);
        return BT_ERR_NOMEM;
    }
    bt_pad_act(xq, M, w->cols, ldx, pad ? q : (int8_t *)xq, pad ? kp : ldx, sums);
    gemm_i8_padded(w, pad ? q : xq, pad ? kp : ldx, sums, a, M, out, ldo);
    if (sums != small) free(sums);
    free(q);
    return BT_OK;
}

void bt_gemm_i8_rows(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums, const float *a,
                     int64_t M, int64_t n0, int64_t n1, float *y, int64_t ldy) {
    if (n1 <= n0 || M <= 0) return;
    const bt_isa_ops *const ops = bt_ops();
    (w->fmt == BT_FMT_T1 ? ops->i8_t1 : ops->i8)(w, xq, ldq, sums, M, n0, n1, (int32_t *)y, ldy);
    to_float(w, a, M, n0, n1, y, ldy);
}

int bt_gemm_i8_raw(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx, int32_t *out,
                   int64_t ldo) {
    return gemm_i8_impl(w, xq, M, ldx, NULL, out, ldo);
}

int bt_gemm_i8(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx, const float *a,
               float *y, int64_t ldy) {
    return gemm_i8_impl(w, xq, M, ldx, a, y, ldy);
}

int bt_bitlinear(const bt_ternary *w, const float *x, int64_t M, int64_t ldx, float *y, int64_t ldy,
                 float *a) {
    if (M <= 0) return BT_OK;
    const int64_t kp = bt_fmt_padded_cols(w->fmt, w->cols);
    int32_t small[64];
    int32_t *sums = M <= 64 ? small : (int32_t *)malloc((size_t)M * sizeof(int32_t));
    int8_t *q = (int8_t *)aligned_alloc(BT_ALIGN, (size_t)(M * kp));
    int err = (!sums || !q) ? BT_ERR_NOMEM : bt_quantize_act(x, M, w->cols, ldx, q, kp, a, sums);
    if (err == BT_OK) gemm_i8_padded(w, q, kp, sums, a, M, y, ldy);
    if (sums != small) free(sums);
    free(q);
    return err;
}

/* Shared driver: C [M, total_cols] = s * A B with B cut in panels of 32 columns, panel q
 * filled by fill(ctx, q*32, B) as P x 32 floats; A(i, p) = A[i*sa + p*sp].  Threads take
 * contiguous ranges of panels. */
typedef void (*fill_fn)(const void *ctx, int64_t j0, float *B);

#ifndef BT_GROUP_BYTES
#define BT_GROUP_BYTES (4 << 20) /* B panels filled ahead for one call of the table's panels */
#endif
#define BT_GROUP_MAX 16

/* atile > 0: A is stored as tiles of atile rows, tile t at A + t*atile*P laid out
 * [P][atile] (then sa, sp are ignored).
 * A table with a group kernel (bt_panels_avx2, bt_panels_avx512) takes the panels of a thread in
 * groups (up to BT_GROUP_BYTES of filled panels), so that it reads each block of A once per group
 * instead of once per panel; the others take one panel at a time.  Same results either way.
 * The filled panels live in the thread's scratch buffer (bt_arena.h), kept between calls. */
static int panel_driver_ex(const void *ctx, fill_fn fill, const float *A, int64_t sa, int64_t sp, int64_t M,
                           int64_t P, int64_t total_cols, float *C, int64_t ldc, float s, int atile) {
    if (M <= 0 || total_cols <= 0) return BT_OK;
    const bt_isa_ops *const ops = bt_ops();
    bt_panel_fn *const fn = ops->panel;
    const int64_t npanels = (total_cols + BT_PANEL - 1) / BT_PANEL;
    const int nt = threads_for((double)M * (double)P * (double)total_cols, npanels);
    /* room for whole blocks of rows: ternary panel fills may write up to bt_padded_cols */
    const int64_t rows = bt_padded_cols(P), ldp = rows * BT_PANEL;
    bt_panels_fn *const panels = atile % 3 == 0 ? ops->panels : NULL;
    int group = 1;
    if (panels) {
        const int64_t bytes = ops->group_kib > 0 ? (int64_t)ops->group_kib << 10 : BT_GROUP_BYTES;
        const int64_t g = bytes / (ldp * 4);
        group = g < 1 ? 1 : (g > BT_GROUP_MAX ? BT_GROUP_MAX : (int)g);
    }
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        int64_t q0, q1;
        bt_thread_range(npanels, 1, &q0, &q1);
        const int gmax = q1 - q0 < group ? (int)(q1 - q0) : group;
        float *B = NULL;
        if (q1 > q0) {
            B = (float *)bt_scratch(BT_SCRATCH_B, (size_t)(gmax * ldp * 4));
            if (!B) failed = 1;
        }
        for (int64_t q = q0; q < q1 && B; q += gmax) {
            const int g = q1 - q < gmax ? (int)(q1 - q) : gmax;
            const int64_t j0 = q * BT_PANEL, jl = (q + g - 1) * BT_PANEL;
            const int nc = total_cols - jl < BT_PANEL ? (int)(total_cols - jl) : BT_PANEL;
            for (int k = 0; k < g; k++) fill(ctx, j0 + k * BT_PANEL, B + k * ldp);
            if (panels) {
                if (!atile)
                    panels(A, sa, sp, M, 0, M, B, ldp, g, P, C + j0, ldc, nc, s);
                else
                    panels(A, 1, atile, atile, atile * P, M, B, ldp, g, P, C + j0, ldc, nc, s);
            } else if (!atile) {
                fn(A, sa, sp, M, B, P, C + j0, ldc, nc, s);
            } else {
                for (int64_t i0 = 0; i0 < M; i0 += atile) {
                    const int64_t mr = M - i0 < atile ? M - i0 : atile;
                    fn(A + i0 * P, 1, atile, mr, B, P, C + i0 * ldc + j0, ldc, nc, s);
                }
            }
        }
    }
    (void)nt;
    return failed ? BT_ERR_NOMEM : BT_OK;
}

static int panel_driver(const void *ctx, fill_fn fill, const float *A, int64_t sa, int64_t sp, int64_t M,
                        int64_t P, int64_t total_cols, float *C, int64_t ldc, float s) {
    return panel_driver_ex(ctx, fill, A, sa, sp, M, P, total_cols, C, ldc, s, 0);
}

static void fill_rows(const void *ctx, int64_t j0, float *B) {
    bt_ops()->panel_rows((const bt_ternary *)ctx, j0, B);
}
static void fill_cols(const void *ctx, int64_t j0, float *B) {
    bt_ops()->panel_cols((const bt_ternary *)ctx, j0, B);
}

/* The float paths fill their panels from t2 codes: t1 weights are copied to t2 for the call. */
static int as_t2(const bt_ternary *w, bt_ternary *t) {
    *t = (bt_ternary){w->rows, w->cols, bt_row_stride(w->cols), w->scale, NULL, BT_FMT_T2};
    t->codes = (uint8_t *)aligned_alloc(BT_ALIGN, (size_t)(w->rows * t->stride));
    if (!t->codes) return BT_ERR_NOMEM;
    const int err = bt_transcode(w, 0, w->rows, t);
    if (err) free(t->codes);
    return err;
}

int bt_gemm_f32(const bt_ternary *w, const float *x, int64_t M, int64_t ldx, float *y, int64_t ldy) {
    if (w->fmt == BT_FMT_T1) {
        bt_ternary t;
        int err = as_t2(w, &t);
        if (err) return err;
        err = bt_gemm_f32(&t, x, M, ldx, y, ldy);
        free(t.codes);
        return err;
    }
    return panel_driver(w, fill_rows, x, ldx, 1, M, w->cols, w->rows, y, ldy, w->scale);
}

int bt_gemm_f32_t(const bt_ternary *w, const float *dy, int64_t M, int64_t lddy, float *dx,
                  int64_t lddx) {
    if (w->fmt == BT_FMT_T1) {
        bt_ternary t;
        int err = as_t2(w, &t);
        if (err) return err;
        err = bt_gemm_f32_t(&t, dy, M, lddy, dx, lddx);
        free(t.codes);
        return err;
    }
    return panel_driver(w, fill_cols, dy, lddy, 1, M, w->rows, w->cols, dx, lddx, w->scale);
}

/* -- dense float GEMM ------------------------------------------------------------------ */
typedef struct {
    const float *b;
    int64_t ldb, P, N;
    int trans;
} dense_b;

/* B panel of a dense op(B) [P, N]: B[p*32 + j] = op(B)[p, j0 + j], 0 past N. */
static void fill_dense(const void *ctx, int64_t j0, float *B) {
    const dense_b *d = (const dense_b *)ctx;
    const int nc = d->N - j0 < BT_PANEL ? (int)(d->N - j0) : BT_PANEL;
    if (!d->trans) {
        for (int64_t p = 0; p < d->P; p++) {
            const float *src = d->b + p * d->ldb + j0;
            float *dst = B + p * BT_PANEL;
            for (int j = 0; j < nc; j++) dst[j] = src[j];
            for (int j = nc; j < BT_PANEL; j++) dst[j] = 0.0f;
        }
    } else {
        bt_ops()->fill_t(d->b + j0 * d->ldb, d->ldb, d->P, nc, B);
    }
}

/* B panel of Qa(x) from its codes: B[p*32 + j] = (float)q[p, j0 + j] / a[p], 0 past N. */
typedef struct {
    const int8_t *q;
    const float *a;
    int64_t ldq, P, N;
} q8_b;

static void fill_q8(const void *ctx, int64_t j0, float *B) {
    const q8_b *d = (const q8_b *)ctx;
    const int nc = d->N - j0 < BT_PANEL ? (int)(d->N - j0) : BT_PANEL;
    bt_ops()->fill_q8(d->q + j0, d->ldq, d->a, d->P, nc, B);
}

/* op(A) = A^T with B filled by fill(ctx).  A table whose panels kernel packs A itself (pack_a)
 * gets A^T as it is: A(i, p) = A[i + p*lda].  Otherwise A is packed once into tiles of h rows
 * of op(A), [P][h] each (h contiguous floats of a row of A per p), so that the microkernels
 * read A sequentially; h is the table's atile (a multiple of 3 for the AVX2 panels' 3-row
 * tiles).  The tiles live in the calling thread's scratch buffer (bt_arena.h). */
static int sgemm_tn(int64_t M, int64_t N, int64_t P, const float *A, int64_t lda, const void *ctx, fill_fn fill,
                    float *C, int64_t ldc) {
    const bt_isa_ops *const ops = bt_ops();
    if (ops->pack_a) return panel_driver_ex(ctx, fill, A, 1, lda, M, P, N, C, ldc, 1.0f, 0);
    const int64_t h = ops->atile;
    const int64_t tiles = (M + h - 1) / h;
    float *at = (float *)bt_scratch(BT_SCRATCH_ATILES, (size_t)(tiles * h * P * 4));
    if (!at) return BT_ERR_NOMEM;
    /* rows p of A are read in order (each one sequentially) and dealt out to the tiles */
    const int nt = threads_for((double)M * (double)P * (double)N, P);
    BT_PARALLEL_FOR(nt)
    for (int64_t p = 0; p < P; p++) {
        const float *src = A + p * lda;
        for (int64_t t = 0; t < tiles; t++) {
            const int64_t i0 = t * h, mr = M - i0 < h ? M - i0 : h;
            float *dst = at + t * h * P + p * h;
            for (int64_t i = 0; i < mr; i++) dst[i] = src[i0 + i];
            for (int64_t i = mr; i < h; i++) dst[i] = 0.0f;
        }
    }
    return panel_driver_ex(ctx, fill, at, 0, 0, M, P, N, C, ldc, 1.0f, (int)h);
}

static int zero_c(int64_t M, int64_t N, float *C, int64_t ldc) {
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] = 0.0f;
    return BT_OK;
}

int bt_sgemm_tn_q8(int64_t M, int64_t N, int64_t P, const float *A, int64_t lda, const int8_t *q, int64_t ldq,
                   const float *a, float *C, int64_t ldc) {
    if (P <= 0) return zero_c(M, N, C, ldc);
    const q8_b d = {q, a, ldq, P, N};
    return sgemm_tn(M, N, P, A, lda, &d, fill_q8, C, ldc);
}

int bt_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t P, const float *A, int64_t lda,
             const float *B, int64_t ldb, float *C, int64_t ldc) {
    if (P <= 0) return zero_c(M, N, C, ldc);
    const dense_b d = {B, ldb, P, N, trans_b};
    if (!trans_a) return panel_driver(&d, fill_dense, A, lda, 1, M, P, N, C, ldc, 1.0f);
    return sgemm_tn(M, N, P, A, lda, &d, fill_dense, C, ldc);
}
