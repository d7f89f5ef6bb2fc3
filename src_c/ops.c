/* ops.c -- fused row-wise operations (see bt_ops.h).  Plain C: the loops whose lanes are
 * independent vectorize, and no sum is reassociated, so every ISA gives the same bits.  The
 * element-wise bodies are compiled once per ISA, as entries of the kernel tables. */
#include "bt_ops.h"
#include "bt_cpu.h"
#include "bt_isa_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define RL 8

/* sum_c x[c] * y[c] (y == NULL: sum x) in 8 interleaved lanes and a fixed tree. */
static inline float rsum(int64_t n, const float *restrict x, const float *restrict y) {
    float acc[RL] = {0.0f};
    int64_t c = 0;
    for (; c + RL <= n; c += RL)
        for (int l = 0; l < RL; l++) acc[l] = acc[l] + (y ? x[c + l] * y[c + l] : x[c + l]);
    for (int l = 0; c + l < n; l++) acc[l] = acc[l] + (y ? x[c + l] * y[c + l] : x[c + l]);
    for (int w = RL / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

/* exp(x) for float32 in plain arithmetic, so that it vectorizes on every ISA and gives the
 * same bits everywhere (libm's expf is a scalar call): x = n ln2 + r, |r| <= ln2 / 2,
 * e^r by its Taylor series to r^7 (relative error < 6e-9), 2^n through the exponent bits.
 * Inputs are clamped to [-87, 88], where the result is a normal float. */
static inline float bt_expf(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer, half to even */
    const float n = (x * 1.44269504088896341f + shift) - shift;
    const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } two_n;
    two_n.i = ((int32_t)n + 127) << 23;
    return p * two_n.f;
}

static int nthreads(int64_t work, int64_t units) { return bt_threads_for((double)work, 1 << 16, units); }

void bt_rmsnorm_fwd(const float *x, const float *w, int64_t M, int64_t D, float eps, float *y, float *r) {
    const int nt = nthreads(M * D, M);
    BT_PARALLEL_FOR(nt)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        float *yr = y + m * D;
        const float rr = 1.0f / sqrtf(rsum(D, xr, xr) / (float)D + eps);
        r[m] = rr;
        for (int64_t c = 0; c < D; c++) yr[c] = xr[c] * rr * w[c];
    }
}

int bt_rmsnorm_bwd(const float *dy, const float *x, const float *w, const float *r, int64_t M, int64_t D,
                   float *dx, float *dw) {
    const int64_t nb = (M + BT_OPS_ROWS - 1) / BT_OPS_ROWS;
    float *part = (float *)calloc((size_t)(nb * D), sizeof(float));
    if (!part) return BT_ERR_NOMEM;
    const int nt = nthreads(M * D, nb);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        float *buf = (float *)malloc((size_t)D * 2 * sizeof(float));
        if (!buf) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t bk = 0; bk < nb; bk++) {
            float *pd = part + bk * D;
            const int64_t m1 = (bk + 1) * BT_OPS_ROWS < M ? (bk + 1) * BT_OPS_ROWS : M;
            for (int64_t m = bk * BT_OPS_ROWS; m < m1 && buf; m++) {
                const float *xr = x + m * D, *dyr = dy + m * D;
                float *dxr = dx + m * D, *xn = buf, *g = buf + D;
                const float rr = r[m];
                for (int64_t c = 0; c < D; c++) {
                    xn[c] = xr[c] * rr;
                    g[c] = dyr[c] * w[c];
                    pd[c] = pd[c] + dyr[c] * xn[c];
                }
                const float mg = rsum(D, g, xn) / (float)D;
                for (int64_t c = 0; c < D; c++) dxr[c] = rr * (g[c] - xn[c] * mg);
            }
        }
        free(buf);
    }
    (void)nt;
    if (failed) {
        free(part);
        return BT_ERR_NOMEM;
    }
    for (int64_t c = 0; c < D; c++) dw[c] = 0.0f;
    for (int64_t bk = 0; bk < nb; bk++)
        for (int64_t c = 0; c < D; c++) dw[c] = dw[c] + part[bk * D + c];
    free(part);
    return BT_OK;
}

void bt_layernorm_fwd(const float *x, const float *w, const float *b, int64_t M, int64_t D, float eps, float *y,
                      float *xh, float *r) {
    const int nt = nthreads(M * D, M);
    BT_PARALLEL_FOR(nt)
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * D;
        float *h = xh + m * D, *yr = y + m * D;
        const float mu = rsum(D, xr, NULL) / (float)D;
        for (int64_t c = 0; c < D; c++) h[c] = xr[c] - mu;
        const float rr = 1.0f / sqrtf(rsum(D, h, h) / (float)D + eps);
        r[m] = rr;
        for (int64_t c = 0; c < D; c++) {
            h[c] = h[c] * rr;
            yr[c] = h[c] * w[c] + b[c];
        }
    }
}

int bt_layernorm_bwd(const float *dy, const float *xh, const float *w, const float *r, int64_t M, int64_t D,
                     float *dx, float *dw, float *db) {
    const int64_t nb = (M + BT_OPS_ROWS - 1) / BT_OPS_ROWS;
    float *part = (float *)calloc((size_t)(2 * nb * D), sizeof(float));
    if (!part) return BT_ERR_NOMEM;
    const int nt = nthreads(M * D, nb);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        float *g = (float *)malloc((size_t)D * sizeof(float));
        if (!g) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t bk = 0; bk < nb; bk++) {
            float *pw = part + 2 * bk * D, *pb = pw + D;
            const int64_t m1 = (bk + 1) * BT_OPS_ROWS < M ? (bk + 1) * BT_OPS_ROWS : M;
            for (int64_t m = bk * BT_OPS_ROWS; m < m1 && g; m++) {
                const float *dyr = dy + m * D, *h = xh + m * D;
                float *dxr = dx + m * D;
                for (int64_t c = 0; c < D; c++) {
                    g[c] = dyr[c] * w[c];
                    pw[c] = pw[c] + dyr[c] * h[c];
                    pb[c] = pb[c] + dyr[c];
                }
                const float m1g = rsum(D, g, NULL) / (float)D, m2g = rsum(D, g, h) / (float)D;
                const float rr = r[m];
                for (int64_t c = 0; c < D; c++) dxr[c] = rr * (g[c] - m1g - h[c] * m2g);
            }
        }
        free(g);
    }
    (void)nt;
    if (failed) {
        free(part);
        return BT_ERR_NOMEM;
    }
    for (int64_t c = 0; c < D; c++) dw[c] = db[c] = 0.0f;
    for (int64_t bk = 0; bk < nb; bk++)
        for (int64_t c = 0; c < D; c++) {
            dw[c] = dw[c] + part[2 * bk * D + c];
            db[c] = db[c] + part[(2 * bk + 1) * D + c];
        }
    free(part);
    return BT_OK;
}

/* The elementwise bodies, compiled once per ISA (plain C: the copies differ only in vector
 * width, never in the order of operations, so they give the same bits). */
/* sigmoid(g) of the SwiGLU gate: the one expression of its forward and of its backward's recompute. */
static inline float swiglu_sigmoid(float g) { return 1.0f / (1.0f + bt_expf(-g)); }

INLINE void swiglu_fwd_body(const float *restrict g, const float *restrict u, int64_t i0, int64_t i1,
                            float *restrict h, float *restrict sg) {
    if (sg == NULL) { /* the backward recomputes sg (swiglu_sigmoid): the same expression, the same bits */
        for (int64_t i = i0; i < i1; i++) h[i] = g[i] * swiglu_sigmoid(g[i]) * u[i];
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        const float s = swiglu_sigmoid(g[i]);
        sg[i] = s;
        h[i] = g[i] * s * u[i];
    }
}

INLINE void swiglu_bwd_body(const float *restrict dh, const float *restrict g, const float *restrict u,
                            const float *restrict sg, int64_t i0, int64_t i1, float *restrict dg,
                            float *restrict du) {
    if (sg == NULL) {
        for (int64_t i = i0; i < i1; i++) {
            const float s = swiglu_sigmoid(g[i]);
            du[i] = dh[i] * g[i] * s;
            dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        }
        return;
    }
    for (int64_t i = i0; i < i1; i++) {
        const float s = sg[i];
        du[i] = dh[i] * g[i] * s;
        dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
    }
}

/* max of x[0..n), n >= 1, in 16 fixed lanes (a serial `x > m ? x : m` loop is latency-bound).
 * Max is exact, so this is the serial loop's value: a NaN in x[0] propagates, later NaNs are
 * skipped; only the sign of a zero max may differ, which changes no result below (x - (+-0)
 * differ only for x = -0, and exp(+-0) = 1).  The lanes are fixed, so ISA and threads agree. */
INLINE float rmax(int64_t n, const float *x) {
    float acc[16];
    for (int l = 0; l < 16; l++) acc[l] = x[0];
    int64_t c = 0;
    for (; c + 16 <= n; c += 16)
        for (int l = 0; l < 16; l++) acc[l] = x[c + l] > acc[l] ? x[c + l] : acc[l];
    for (; c < n; c++) acc[0] = x[c] > acc[0] ? x[c] : acc[0];
    for (int l = 1; l < 16; l++) acc[0] = acc[l] > acc[0] ? acc[l] : acc[0];
    return acc[0];
}

INLINE void xent_rows(const float *logits, const int64_t *targets, const float *wt, int64_t m0, int64_t m1,
                      int64_t V, float *dlogits, double *loss) {
    for (int64_t m = m0; m < m1; m++) {
        const float *l = logits + m * V;
        float *d = dlogits + m * V;
        const float mx = rmax(V, l);
        const float lt = l[targets[m]];
        for (int64_t c = 0; c < V; c++) d[c] = bt_expf(l[c] - mx); /* may overwrite l (d == l) */
        const float se = rsum(V, d, NULL);
        loss[m] = (double)wt[m] * ((double)logf(se) + (double)mx - (double)lt);
        const float k = wt[m] / se;
        for (int64_t c = 0; c < V; c++) d[c] = d[c] * k;
        d[targets[m]] = d[targets[m]] - wt[m];
    }
}

/* The table entries (bt_isa_kernels.h): the bodies above, compiled for each ISA. */
#define OPS_FNS(SUFFIX, ATTR)                                                                              \
    ATTR void bt_swiglu_fwd_##SUFFIX(const float *g, const float *u, int64_t i0, int64_t i1, float *h,     \
                                     float *sg) {                                                          \
        swiglu_fwd_body(g, u, i0, i1, h, sg);                                                              \
    }                                                                                                      \
    ATTR void bt_swiglu_bwd_##SUFFIX(const float *dh, const float *g, const float *u, const float *sg,     \
                                     int64_t i0, int64_t i1, float *dg, float *du) {                       \
        swiglu_bwd_body(dh, g, u, sg, i0, i1, dg, du);                                                     \
    }                                                                                                      \
    ATTR void bt_xent_##SUFFIX(const float *l, const int64_t *t, const float *wt, int64_t m0, int64_t m1,  \
                               int64_t V, float *d, double *loss) {                                        \
        xent_rows(l, t, wt, m0, m1, V, d, loss);                                                           \
    }

OPS_FNS(scalar, )
#ifdef BT_HAVE_X86
OPS_FNS(avx2, BT_TARGET_AVX2)
OPS_FNS(avx512, BT_TARGET_AVX512)
#endif

void bt_swiglu_fwd(const float *g, const float *u, int64_t n, float *h, float *sg) {
    bt_swiglu_fwd_fn *const fn = bt_ops()->swiglu_fwd;
    const int nt = nthreads(n, n / 4096 + 1);
    BT_PARALLEL(nt) {
        int64_t lo, hi;
        bt_thread_range(n, 1, &lo, &hi);
        fn(g, u, lo, hi, h, sg);
    }
}

void bt_swiglu_bwd(const float *dh, const float *g, const float *u, const float *sg, int64_t n, float *dg,
                   float *du) {
    bt_swiglu_bwd_fn *const fn = bt_ops()->swiglu_bwd;
    const int nt = nthreads(n, n / 4096 + 1);
    BT_PARALLEL(nt) {
        int64_t lo, hi;
        bt_thread_range(n, 1, &lo, &hi);
        fn(dh, g, u, sg, lo, hi, dg, du);
    }
}

void bt_softmax_xent(const float *logits, const int64_t *targets, const float *wt, int64_t M, int64_t V,
                     float *dlogits, double *loss) {
    bt_xent_fn *const fn = bt_ops()->xent;
    const int nt = nthreads(M * V, M);
    BT_PARALLEL(nt) {
        int64_t lo, hi;
        bt_thread_range(M, 1, &lo, &hi);
        fn(logits, targets, wt, lo, hi, V, dlogits, loss);
    }
}
