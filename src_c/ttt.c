/* ttt.c -- TTT-Linear inner loop, forward and backward (see bt_ttt.h).
 *
 * One (sequence, head) row at a time, mini-batch by mini-batch.  The maths is written
 * once as inline C (chunk_forward / chunk_backward below, mirroring
 * bitttt/layers/ttt.py: minibatch_forward / minibatch_backward) and compiled three times,
 * for the baseline ISA, AVX2 and AVX-512 (the ttt_fwd, ttt_bwd entries of the kernel
 * tables, bt_isa_kernels.h); the compiler only vectorizes loops whose lanes are independent
 * (no reassociation: -ffp-contract=off, no fast-math), so all three give the same bits.
 */
#include "bt_ttt.h"
#include "bt_cpu.h"
#include "bt_isa_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Per-thread scratch, sized for a full mini-batch (K rows). */
struct bt_ttt_scratch {
    float *Z1c;  /* Z1 - mean (d1)        [K, f] */
    float *xh1;  /* LN1 normalized        [K, f] */
    float *r1;   /* LN1 1/std             [K]    */
    float *go;   /* LN(Z1) - target       [K, f] */
    float *gxh;  /* go * gamma            [K, f] */
    float *s1;   /* sum gxh               [K]    */
    float *s2;   /* sum gxh * xh1         [K]    */
    float *G;    /* inner gradient        [K, f] */
    float *A;    /* q k^T (lower part)    [K, K] */
    float *xh2;  /* LN2 normalized        [K, f] */
    float *r2;   /* LN2 1/std             [K]    */
    /* backward only */
    float *dZb, *dG, *dH, *dZ1, *dd, *dE, *dW, *db, *Wc, *bc;
    float *WT, *dWT; /* transposes, so that every inner loop is an axpy over contiguous memory */
    float *ta, *tb;  /* [K] temporaries */
    float *DA, *CG;  /* backward: dA[i][j] and -(P + Et)[i][j] of the lower triangle [K, K] */
    float *red;      /* per-row reductions of a phase [6, K] */
    float *base;     /* the one allocation */
    float *qc, *kc, *vc, *oc, *dqc, *dkc, *dvc; /* one mini-batch gathered from [B, T, D], [K, f] */
    float *rc, *rsp, *rsm; /* RoPE tables spread over the f columns [K, f]: cos, then sin with the pair
                            * signs of the rotation (-s, +s) and of its inverse (+s, -s) */
};
typedef bt_ttt_scratch scratch;

static void scratch_free(scratch *s) {
    free(s->base);
    memset(s, 0, sizeof *s);
}

static int scratch_alloc(scratch *s, int64_t K, int64_t f) {
    const int64_t kf = K * f, kk = K * K, ff = f * f;
    const int64_t total = 9 * kf + 5 * K + kk + 5 * kf + kk + ff + f + ff + f + 2 * ff + 2 * K + 7 * kf + 3 * kf + 2 * kk + 6 * K;
    memset(s, 0, sizeof *s);
    float *p = (float *)calloc((size_t)total, sizeof(float));
    if (!p) return BT_ERR_NOMEM;
    s->base = p;
    s->Z1c = p; p += kf;
    s->xh1 = p; p += kf;
    s->r1 = p; p += K;
    s->go = p; p += kf;
    s->gxh = p; p += kf;
    s->s1 = p; p += K;
    s->s2 = p; p += K;
    s->G = p; p += kf;
    s->A = p; p += kk;
    s->xh2 = p; p += kf;
    s->r2 = p; p += K;
    s->dZb = p; p += kf;
    s->dG = p; p += kf;
    s->dH = p; p += kf;
    s->dZ1 = p; p += kf;
    s->dd = p; p += kf;
    s->dE = p; p += kk;
    s->dW = p; p += ff;
    s->db = p; p += f;
    s->Wc = p; p += ff;
    s->bc = p; p += f;
    s->WT = p; p += ff;
    s->dWT = p; p += ff;
    s->ta = p; p += K;
    s->tb = p; p += K;
    s->qc = p; p += kf;
    s->kc = p; p += kf;
    s->vc = p; p += kf;
    s->oc = p; p += kf;
    s->dqc = p; p += kf;
    s->dkc = p; p += kf;
    s->dvc = p; p += kf;
    s->rc = p; p += kf;
    s->rsp = p; p += kf;
    s->rsm = p; p += kf;
    s->DA = p; p += kk;
    s->CG = p; p += kk;
    s->red = p;
    return BT_OK;
}

/* Reductions in one fixed order on every ISA: 8 interleaved partial sums (lane l takes
 * elements c = l mod 8, in order), then a fixed halving tree.  The lanes are independent,
 * so the compiler vectorizes the loop without reassociating anything. */
#define RL 8
INLINE float tree(float *acc) {
    for (int w = RL / 2; w >= 1; w /= 2)
        for (int l = 0; l < w; l++) acc[l] = acc[l] + acc[l + w];
    return acc[0];
}

INLINE float dot(int64_t f, const float *restrict x, const float *restrict y) {
    float acc[RL] = {0.0f};
    int64_t c = 0;
    for (; c + RL <= f; c += RL)
        for (int l = 0; l < RL; l++) acc[l] = fmaf(x[c + l], y[c + l], acc[l]);
    for (int l = 0; c + l < f; l++) acc[l] = fmaf(x[c + l], y[c + l], acc[l]);
    return tree(acc);
}

INLINE float sum(int64_t f, const float *restrict x) {
    float acc[RL] = {0.0f};
    int64_t c = 0;
    for (; c + RL <= f; c += RL)
        for (int l = 0; l < RL; l++) acc[l] = acc[l] + x[c + l];
    for (int l = 0; c + l < f; l++) acc[l] = acc[l] + x[c + l];
    return tree(acc);
}

/* out[r] = dot(f, x_r, y_r) for four pairs at once (four independent chains in flight instead of
 * one); each is dot's own order of operations, so the same bits. */
INLINE void dot4(int64_t f, const float *x0, const float *x1, const float *x2, const float *x3,
                 const float *restrict y0, const float *restrict y1, const float *restrict y2,
                 const float *restrict y3, float *restrict out) {
    float a0[RL] = {0.0f}, a1[RL] = {0.0f}, a2[RL] = {0.0f}, a3[RL] = {0.0f};
    int64_t c = 0;
    for (; c + RL <= f; c += RL)
        for (int l = 0; l < RL; l++) {
            a0[l] = fmaf(x0[c + l], y0[c + l], a0[l]);
            a1[l] = fmaf(x1[c + l], y1[c + l], a1[l]);
            a2[l] = fmaf(x2[c + l], y2[c + l], a2[l]);
            a3[l] = fmaf(x3[c + l], y3[c + l], a3[l]);
        }
    for (int l = 0; c + l < f; l++) {
        a0[l] = fmaf(x0[c + l], y0[c + l], a0[l]);
        a1[l] = fmaf(x1[c + l], y1[c + l], a1[l]);
        a2[l] = fmaf(x2[c + l], y2[c + l], a2[l]);
        a3[l] = fmaf(x3[c + l], y3[c + l], a3[l]);
    }
    out[0] = tree(a0);
    out[1] = tree(a1);
    out[2] = tree(a2);
    out[3] = tree(a3);
}

/* out[j] = dot(f, x, Y + j f) for j < ny, four rows at a time (dot4). */
INLINE void dots(int64_t f, int64_t ny, const float *restrict x, const float *restrict Y, float *restrict out) {
    int64_t j = 0;
    for (; j + 4 <= ny; j += 4) {
        const float *y0 = Y + j * f;
        dot4(f, x, x, x, x, y0, y0 + f, y0 + 2 * f, y0 + 3 * f, out + j);
    }
    for (; j < ny; j++) out[j] = dot(f, x, Y + j * f);
}

/* Row by row, four rows in flight: out[i] = dot(f, X_i, Y_i) (rdots) or sum(f, X_i) (rsums),
 * X_i = X + i f; each row is dot's / sum's own order of operations, so the same bits. */
INLINE void rdots(int64_t f, int64_t n, const float *restrict X, const float *restrict Y, float *restrict out) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *x0 = X + i * f, *y0 = Y + i * f;
        dot4(f, x0, x0 + f, x0 + 2 * f, x0 + 3 * f, y0, y0 + f, y0 + 2 * f, y0 + 3 * f, out + i);
    }
    for (; i < n; i++) out[i] = dot(f, X + i * f, Y + i * f);
}

INLINE void rsums(int64_t f, int64_t n, const float *restrict X, float *restrict out) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const float *restrict x0 = X + i * f, *restrict x1 = x0 + f, *restrict x2 = x1 + f, *restrict x3 = x2 + f;
        float a0[RL] = {0.0f}, a1[RL] = {0.0f}, a2[RL] = {0.0f}, a3[RL] = {0.0f};
        int64_t c = 0;
        for (; c + RL <= f; c += RL)
            for (int l = 0; l < RL; l++) {
                a0[l] = a0[l] + x0[c + l];
                a1[l] = a1[l] + x1[c + l];
                a2[l] = a2[l] + x2[c + l];
                a3[l] = a3[l] + x3[c + l];
            }
        for (int l = 0; c + l < f; l++) {
            a0[l] = a0[l] + x0[c + l];
            a1[l] = a1[l] + x1[c + l];
            a2[l] = a2[l] + x2[c + l];
            a3[l] = a3[l] + x3[c + l];
        }
        out[i] = tree(a0);
        out[i + 1] = tree(a1);
        out[i + 2] = tree(a2);
        out[i + 3] = tree(a3);
    }
    for (; i < n; i++) out[i] = sum(f, X + i * f);
}

/* y += a x over f floats; x and y never overlap (restrict: no run-time alias checks). */
INLINE void axpy(int64_t f, float a, const float *restrict x, float *restrict y) {
    for (int64_t c = 0; c < f; c++) y[c] = fmaf(a, x[c], y[c]);
}

/* y[0:f] = y0 + sum_p x[p] M[p, 0:f] (sequential in p), accumulated in a local row that
 * the compiler keeps in registers for the specialized widths.  y may be y0 (read first,
 * written last). */
INLINE void vecmat_n(int64_t f, int64_t P, const float *y0, const float *restrict x, const float *restrict M,
                     float *y) {
    float acc[128];
    if (f > 128) { /* wide heads: plain axpy form */
        for (int64_t c = 0; c < f; c++) y[c] = y0 ? y0[c] : 0.0f;
        for (int64_t p = 0; p < P; p++) axpy(f, x[p], M + p * f, y);
        return;
    }
    for (int64_t c = 0; c < f; c++) acc[c] = y0 ? y0[c] : 0.0f;
    for (int64_t p = 0; p < P; p++) {
        const float xp = x[p];
        const float *restrict m = M + p * f;
        for (int64_t c = 0; c < f; c++) acc[c] = fmaf(xp, m[c], acc[c]);
    }
    for (int64_t c = 0; c < f; c++) y[c] = acc[c];
}


/* Rows at once: Y[i, :] = (Y0 ? Y0[i*sy0, :] : 0) + sum_{p<P} A(i, p) M[p, :] for i < R, with
 * A(i, p) = A[i*sa + p*sp] and M [P, f]; each entry is the same sequential fused chain over p
 * as vecmat_n, so the same bits on every path.  Y0 may be Y (each row is read before it is
 * written).  For f = 64 on AVX2 / AVX-512 a register tile takes 3 rows x 32 columns (12
 * accumulators; per p, 3 broadcasts and 4 loads of M for 12 FMAs) instead of one row's
 * 8 accumulators against 8 loads of M. */
#ifdef BT_HAVE_X86
#include <immintrin.h>

#include "bt_transpose.h"
BT_TARGET_AVX2 INLINE void mm64_tile(const int MR, int64_t P, const float *A, int64_t sa, int64_t sp,
                                     const float *M, const float *Y0, int64_t sy0, float *Y, int64_t sy) {
    for (int h = 0; h < 2; h++) {
        __m256 acc[3][4];
#pragma GCC unroll 3
        for (int r = 0; r < 3; r++) {
            if (r >= MR) break;
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                acc[r][v] = Y0 ? _mm256_loadu_ps(Y0 + r * sy0 + 32 * h + 8 * v) : _mm256_setzero_ps();
        }
        const float *a0 = A, *a1 = MR > 1 ? A + sa : A, *a2 = MR > 2 ? A + 2 * sa : A;
        const float *m = M + 32 * h;
        for (int64_t p = 0; p < P; p++) {
            const __m256 x0 = _mm256_broadcast_ss(a0 + p * sp);
            const __m256 x1 = MR > 1 ? _mm256_broadcast_ss(a1 + p * sp) : x0;
            const __m256 x2 = MR > 2 ? _mm256_broadcast_ss(a2 + p * sp) : x0;
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) {
                const __m256 b = _mm256_loadu_ps(m + p * 64 + 8 * v);
                acc[0][v] = _mm256_fmadd_ps(x0, b, acc[0][v]);
                if (MR > 1) acc[1][v] = _mm256_fmadd_ps(x1, b, acc[1][v]);
                if (MR > 2) acc[2][v] = _mm256_fmadd_ps(x2, b, acc[2][v]);
            }
        }
#pragma GCC unroll 3
        for (int r = 0; r < 3; r++) {
            if (r >= MR) break;
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++) _mm256_storeu_ps(Y + r * sy + 32 * h + 8 * v, acc[r][v]);
        }
    }
}

BT_TARGET_AVX2 static void mm64_avx2(int64_t R, int64_t P, const float *A, int64_t sa, int64_t sp, const float *M,
                                     const float *Y0, int64_t sy0, float *Y, int64_t sy) {
    int64_t i = 0;
    for (; i + 3 <= R; i += 3)
        mm64_tile(3, P, A + i * sa, sa, sp, M, Y0 ? Y0 + i * sy0 : NULL, sy0, Y + i * sy, sy);
    if (R - i == 2) mm64_tile(2, P, A + i * sa, sa, sp, M, Y0 ? Y0 + i * sy0 : NULL, sy0, Y + i * sy, sy);
    else if (R - i == 1) mm64_tile(1, P, A + i * sa, sa, sp, M, Y0 ? Y0 + i * sy0 : NULL, sy0, Y + i * sy, sy);
}

/* AVX-512: a tile of MR <= 6 rows x 64 columns (4 registers a row, up to 24 accumulators; per
 * p, 4 loads of M and MR broadcasts for 4 MR FMAs); each entry is the same fused chain over p. */
BT_TARGET_AVX512 INLINE void mm64_tile512(const int MR, int64_t P, const float *A, int64_t sa, int64_t sp,
                                          const float *M, const float *Y0, int64_t sy0, float *Y, int64_t sy) {
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++) {
        if (r >= MR) break;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            acc[r][v] = Y0 ? _mm512_loadu_ps(Y0 + r * sy0 + 16 * v) : _mm512_setzero_ps();
    }
    for (int64_t p = 0; p < P; p++) {
        const float *m = M + p * 64;
        const __m512 b0 = _mm512_loadu_ps(m), b1 = _mm512_loadu_ps(m + 16), b2 = _mm512_loadu_ps(m + 32),
                     b3 = _mm512_loadu_ps(m + 48);
#pragma GCC unroll 6
        for (int r = 0; r < 6; r++) {
            if (r >= MR) break;
            const __m512 x = _mm512_set1_ps(A[r * sa + p * sp]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(x, b2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(x, b3, acc[r][3]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < 6; r++) {
        if (r >= MR) break;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) _mm512_storeu_ps(Y + r * sy + 16 * v, acc[r][v]);
    }
}

BT_TARGET_AVX512 static void mm64_avx512(int64_t R, int64_t P, const float *A, int64_t sa, int64_t sp,
                                         const float *M, const float *Y0, int64_t sy0, float *Y, int64_t sy) {
    int64_t i = 0;
#define MM512_AT(MR) mm64_tile512(MR, P, A + i * sa, sa, sp, M, Y0 ? Y0 + i * sy0 : NULL, sy0, Y + i * sy, sy)
    /* 16 rows (a mini-batch) as 6 + 6 + 4; whole tiles of 6, then the rest in one tile */
    for (; i + 6 <= R; i += 6) MM512_AT(6);
    switch (R - i) {
    case 5: MM512_AT(5); break;
    case 4: MM512_AT(4); break;
    case 3: MM512_AT(3); break;
    case 2: MM512_AT(2); break;
    case 1: MM512_AT(1); break;
    default: break;
    }
#undef MM512_AT
}

/* 8 x 8 (AVX2) and 16 x 16 (AVX-512) blocks of a transpose: b[j * sb + i] = a[i * sa + j]
 * (moves only, no arithmetic). */
BT_TARGET_AVX2 INLINE void tr8_avx2(const float *a, int64_t sa, float *b, int64_t sb) {
    __m256 r[8], t[8];
    for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(a + i * sa);
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4g + m], lane L: column 4L + m of rows 4g .. 4g + 3 */
    for (int g = 0; g < 2; g++) {
        const __m256d t0 = _mm256_castps_pd(t[4 * g]), t1 = _mm256_castps_pd(t[4 * g + 1]),
                      t2 = _mm256_castps_pd(t[4 * g + 2]), t3 = _mm256_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2));
        r[4 * g + 1] = _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2));
        r[4 * g + 2] = _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3));
        r[4 * g + 3] = _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3));
    }
    for (int m = 0; m < 4; m++) {
        _mm256_storeu_ps(b + m * sb, _mm256_permute2f128_ps(r[m], r[4 + m], 0x20));
        _mm256_storeu_ps(b + (4 + m) * sb, _mm256_permute2f128_ps(r[m], r[4 + m], 0x31));
    }
}

BT_TARGET_AVX512 INLINE void tr16_avx512(const float *a, int64_t sa, float *b, int64_t sb) {
    __m512i v[16];
    for (int i = 0; i < 16; i++) v[i] = _mm512_castps_si512(_mm512_loadu_ps(a + i * sa));
    bt_transpose16_i32(v);
    for (int j = 0; j < 16; j++) _mm512_storeu_ps(b + j * sb, _mm512_castsi512_ps(v[j]));
}

BT_TARGET_AVX2 static void transpose_avx2(int64_t f, const float *a, float *at) {
    for (int64_t i = 0; i < f; i += 8)
        for (int64_t j = 0; j < f; j += 8) tr8_avx2(a + i * f + j, f, at + j * f + i, f);
}

BT_TARGET_AVX2 static void rope_rows_avx2(int64_t n, int64_t f, const float *src, int64_t ps, float *dst, int64_t pd,
                                         const float *rc, const float *rs) {
    for (int64_t i = 0; i < n; i++) {
        const float *x = src + i * ps, *tc = rc + i * f, *ts = rs + i * f;
        float *y = dst + i * pd;
        for (int64_t c = 0; c < f; c += 8) {
            const __m256 v = _mm256_loadu_ps(x + c);
            const __m256 a = _mm256_mul_ps(v, _mm256_loadu_ps(tc + c));
            const __m256 b = _mm256_mul_ps(_mm256_permute_ps(v, 0xB1), _mm256_loadu_ps(ts + c));
            _mm256_storeu_ps(y + c, _mm256_add_ps(a, b));
        }
    }
}

BT_TARGET_AVX512 static void rope_rows_avx512(int64_t n, int64_t f, const float *src, int64_t ps, float *dst, int64_t pd,
                                             const float *rc, const float *rs) {
    for (int64_t i = 0; i < n; i++) {
        const float *x = src + i * ps, *tc = rc + i * f, *ts = rs + i * f;
        float *y = dst + i * pd;
        for (int64_t c = 0; c < f; c += 16) {
            const __m512 v = _mm512_loadu_ps(x + c);
            const __m512 a = _mm512_mul_ps(v, _mm512_loadu_ps(tc + c));
            const __m512 b = _mm512_mul_ps(_mm512_permute_ps(v, 0xB1), _mm512_loadu_ps(ts + c));
            _mm512_storeu_ps(y + c, _mm512_add_ps(a, b));
        }
    }
}

BT_TARGET_AVX512 static void transpose_avx512(int64_t f, const float *a, float *at) {
    for (int64_t i = 0; i < f; i += 16)
        for (int64_t j = 0; j < f; j += 16) tr16_avx512(a + i * f + j, f, at + j * f + i, f);
}
#endif

/* t is scratch [P] (used when sp != 1, to gather a row of A); mm64: the ISA of the copy (a
 * constant in each: 0 baseline, 1 AVX2, 2 AVX-512), which takes f = 64 to mm64_avx2 / mm64_avx512. */
INLINE void matrows(int64_t f, int64_t R, int64_t P, const float *A, int64_t sa, int64_t sp, const float *restrict M,
                    const float *Y0, int64_t sy0, float *Y, int64_t sy, float *restrict t, const int mm64) {
    (void)mm64;
#ifdef BT_HAVE_X86
    if (f == 64 && mm64 == 2) {
        mm64_avx512(R, P, A, sa, sp, M, Y0, sy0, Y, sy);
        return;
    }
    if (f == 64 && mm64 == 1) {
        mm64_avx2(R, P, A, sa, sp, M, Y0, sy0, Y, sy);
        return;
    }
#endif
    for (int64_t i = 0; i < R; i++) {
        const float *x = A + i * sa;
        if (sp != 1) {
            for (int64_t p = 0; p < P; p++) t[p] = x[p * sp];
            x = t;
        }
        vecmat_n(f, P, Y0 ? Y0 + i * sy0 : NULL, x, M, Y + i * sy);
    }
}

/* Point the intermediates the backward needs at a mini-batch's slot of the saved buffer
 * (layout: Z1c, xh1, go, gxh, G, xh2 [K, f]; r1, s1, s2, r2 [K]; A [K, K]). */
static inline void bind_saved(scratch *s, float *p, int64_t K, int64_t f) {
    const int64_t kf = K * f;
    s->Z1c = p; p += kf;
    s->xh1 = p; p += kf;
    s->go = p; p += kf;
    s->gxh = p; p += kf;
    s->G = p; p += kf;
    s->xh2 = p; p += kf;
    s->r1 = p; p += K;
    s->s1 = p; p += K;
    s->s2 = p; p += K;
    s->r2 = p; p += K;
    s->A = p;
}

/* The per-row element loops that write several arrays, with restrict parameters so that the
 * compiler vectorizes them without run-time overlap checks (too many pointers for it). */
INLINE void ln1_rows(int64_t f, float r, const float *restrict z, const float *restrict gamma,
                     const float *restrict beta, const float *restrict v, const float *restrict k,
                     float *restrict xh, float *restrict go, float *restrict gx) {
    for (int64_t c = 0; c < f; c++) {
        xh[c] = z[c] * r;
        go[c] = gamma[c] * xh[c] + beta[c] - (v[c] - k[c]);
        gx[c] = go[c] * gamma[c];
    }
}

INLINE void ln2_grads(int64_t f, const float *restrict dy, const float *restrict xh, const float *restrict gamma,
                      float *restrict dz, float *restrict dgamma, float *restrict dbeta) {
    for (int64_t c = 0; c < f; c++) {
        dz[c] = dy[c] * gamma[c]; /* g2, turned into dZb by the caller */
        dgamma[c] += dy[c] * xh[c];
        dbeta[c] += dy[c];
    }
}

INLINE void ln1_grads(int64_t f, float rf, float ff, float ds1, float ds2, float s2, const float *restrict dg,
                      const float *restrict xh, const float *restrict gamma, const float *restrict go,
                      const float *restrict gx, float *restrict dgamma, float *restrict dbeta,
                      float *restrict dxh, float *restrict dv, float *restrict dk) {
    for (int64_t c = 0; c < f; c++) {
        const float u = dg[c] * rf;
        const float dgxh = ff * u + ds1 + ds2 * xh[c];
        const float dgo = dgxh * gamma[c];
        dgamma[c] += dgxh * go[c] + dgo * xh[c];
        dbeta[c] += dgo;
        dxh[c] = -s2 * u + ds2 * gx[c] + dgo * gamma[c];
        dv[c] = -dgo;
        dk[c] += dgo;
    }
}

/* One mini-batch forward.  q, k, v [n, f]; lr [n]; tok [n]; W [f, f], b [f] are updated in
 * place to the state handed on; out [n, f]; the intermediates the backward needs stay in s. */
INLINE void chunk_forward(int64_t n, int64_t f, const float *q, const float *k, const float *v,
                          const float *lr, const float *tok, const float *gamma, const float *beta,
                          float *W, float *b, float *out, scratch *s, const int mm64) {
    const float ff = (float)f;
    /* Z1 = k W + b, LN1, G */
    matrows(f, n, f, k, f, 1, W, b, 0, s->Z1c, f, s->tb, mm64);
    /* each row's operations in phases over the rows (the reductions of four rows at once) */
    float *t0 = s->red, *t1 = s->red + n;
    rsums(f, n, s->Z1c, t0);
    for (int64_t i = 0; i < n; i++) {
        float *z = s->Z1c + i * f;
        const float mu = t0[i] / ff;
        for (int64_t c = 0; c < f; c++) z[c] = z[c] - mu;
    }
    rdots(f, n, s->Z1c, s->Z1c, t0);
    for (int64_t i = 0; i < n; i++) {
        const float r = 1.0f / sqrtf(t0[i] / ff + BT_LN_EPS);
        s->r1[i] = r;
        ln1_rows(f, r, s->Z1c + i * f, gamma, beta, v + i * f, k + i * f, s->xh1 + i * f, s->go + i * f,
                 s->gxh + i * f);
    }
    rsums(f, n, s->gxh, s->s1);
    rdots(f, n, s->gxh, s->xh1, s->s2);
    for (int64_t i = 0; i < n; i++) {
        const float *xh = s->xh1 + i * f, *gx = s->gxh + i * f;
        const float s1 = s->s1[i], s2 = s->s2[i];
        float *g = s->G + i * f;
        const float rf = s->r1[i] / ff;
        for (int64_t c = 0; c < f; c++) g[c] = rf * (ff * gx[c] - s1 - xh[c] * s2);
    }
    /* A = q k^T (j <= i) */
    for (int64_t i = 0; i < n; i++) dots(f, i + 1, q + i * f, k, s->A + i * n);
    /* Zb = q W - sum_j E (1 + A) G + b ; out = q + LN(Zb) */
    matrows(f, n, f, q, f, 1, W, b, 0, s->dZb, f, s->tb, mm64);
    for (int64_t i = 0; i < n; i++) {
        float *z = s->dZb + i * f; /* Zb is kept centred in dZb until the backward reuses it */
        float *nc = s->ta; /* -E(1 + A)[i][j], j <= i */
        for (int64_t j = 0; j <= i; j++) {
            const float e = tok[i] * lr[j];
            const float coef = e * s->A[i * n + j] + e;
            nc[j] = -coef;
        }
        vecmat_n(f, i + 1, z, nc, s->G, z); /* z -= coef G[j], in order of j */
    }
    rsums(f, n, s->dZb, t0);
    for (int64_t i = 0; i < n; i++) {
        float *z = s->dZb + i * f;
        const float mu = t0[i] / ff;
        for (int64_t c = 0; c < f; c++) z[c] = z[c] - mu;
    }
    rdots(f, n, s->dZb, s->dZb, t1);
    for (int64_t i = 0; i < n; i++) {
        const float *z = s->dZb + i * f;
        const float r = 1.0f / sqrtf(t1[i] / ff + BT_LN_EPS);
        s->r2[i] = r;
        float *xh = s->xh2 + i * f;
        for (int64_t c = 0; c < f; c++) {
            xh[c] = z[c] * r;
            out[i * f + c] = q[i * f + c] + (gamma[c] * xh[c] + beta[c]);
        }
    }
    /* state handed on: W -= k^T (e_last G), b -= sum e_last G */
    const float tl = tok[n - 1];
    float *ne = s->ta; /* -e_last[j] */
    for (int64_t j = 0; j < n; j++) ne[j] = -(tl * lr[j]);
    vecmat_n(f, n, b, ne, s->G, b); /* b += ne[j] G[j], in order of j */
    /* W[p, :] += sum_j (ne[j] k[j, p]) G[j, :] */
    float *nk = s->dd; /* free in the forward */
    for (int64_t j = 0; j < n; j++)
        for (int64_t p = 0; p < f; p++) nk[j * f + p] = ne[j] * k[j * f + p];
    matrows(f, f, n, nk, 1, f, s->G, W, f, W, f, s->tb, mm64);
}

/* One mini-batch backward, after chunk_forward(W0, b0) filled s.  dW [f, f], db [f] hold the
 * gradient of the state this mini-batch hands on and leave holding that of (W0, b0).
 * Gradients of q, k, v, lr go to dq, dk, dv, dlr ([n, f], [n]); dtok, dgamma, dbeta are
 * accumulated. */
INLINE void transpose(int64_t f, const float *a, float *at, const int mm64) {
    (void)mm64;
#ifdef BT_HAVE_X86
    if (mm64 == 2 && f % 16 == 0) {
        transpose_avx512(f, a, at);
        return;
    }
    if (mm64 >= 1 && f % 8 == 0) {
        transpose_avx2(f, a, at);
        return;
    }
#endif
    for (int64_t i = 0; i < f; i++)
        for (int64_t j = 0; j < f; j++) at[j * f + i] = a[i * f + j];
}

INLINE void chunk_backward(int64_t n, int64_t f, const float *q, const float *k, const float *lr,
                           const float *tok, const float *gamma, const float *W0, const float *dout,
                           float *dW, float *db, float *dq, float *dk, float *dv, float *dlr, float *dtok,
                           float *dgamma, float *dbeta, scratch *s, const int mm64) {
    const float ff = (float)f;
    float *dE = s->dE;
    memset(dE, 0, (size_t)(n * n) * sizeof(float));
    /* dH = -(k dW) - db, with dW, db the gradients of the handed-on state; contributions of
     * W -= k^T H and b -= sum H (H = e_last G) */
    const float tl = tok[n - 1];
    transpose(f, dW, s->dWT, mm64);
    transpose(f, W0, s->WT, mm64);
    for (int64_t j = 0; j < n; j++) {
        float *dh = s->dH + j * f, *kn = s->dZ1 + j * f; /* dZ1 is free until later: -k[j] */
        for (int64_t c = 0; c < f; c++) dh[c] = -db[c];
        for (int64_t p = 0; p < f; p++) kn[p] = -k[j * f + p];
    }
    matrows(f, n, f, s->dZ1, f, 1, dW, s->dH, f, s->dH, f, s->tb, mm64);
    for (int64_t j = 0; j < n; j++) {
        const float *dh = s->dH + j * f;
        const float e = tl * lr[j];
        const float *g = s->G + j * f;
        dE[(n - 1) * n + j] += dot(f, dh, g);
        /* dk[j][p] = -e sum_c G[j][c] dW[p][c] = sum_c (-e G[j][c]) dW^T[c][p] */
        float *hj = s->dd + j * f;
        for (int64_t c = 0; c < f; c++) hj[c] = -e * g[c];
        float *dg = s->dG + j * f;
        for (int64_t c = 0; c < f; c++) dg[c] = e * dh[c];
    }
    matrows(f, n, f, s->dd, f, 1, s->dWT, NULL, 0, dk, f, s->tb, mm64);
    /* out = q + LN(Zb) */
    /* each row's operations in phases over the rows (the reductions of four rows at once) */
    float *t0 = s->red, *t1 = s->red + n, *t2 = s->red + 2 * n, *t3 = s->red + 3 * n;
    for (int64_t i = 0; i < n; i++) ln2_grads(f, dout + i * f, s->xh2 + i * f, gamma, s->dZb + i * f, dgamma, dbeta);
    rsums(f, n, s->dZb, t0);
    rdots(f, n, s->dZb, s->xh2, t1);
    for (int64_t i = 0; i < n; i++) {
        const float *dy = dout + i * f, *xh = s->xh2 + i * f;
        float *dz = s->dZb + i * f;
        const float m1 = t0[i] / ff, m2 = t1[i] / ff;
        const float r = s->r2[i];
        for (int64_t c = 0; c < f; c++) dz[c] = r * (dz[c] - m1 - xh[c] * m2);
        for (int64_t c = 0; c < f; c++) dq[i * f + c] = dy[c];
    }
    /* Zb = q W0 - sum_j E(1 + A) G + b */
    matrows(f, n, f, s->dZb, f, 1, s->WT, NULL, 0, s->dd, f, s->tb, mm64); /* dZb W0^T, summed over c in order */
    for (int64_t i = 0; i < n; i++) {
        const float *dz = s->dZb + i * f, *dqi = s->dd + i * f;
        for (int64_t p = 0; p < f; p++) dq[i * f + p] += dqi[p];
        for (int64_t c = 0; c < f; c++) db[c] += dz[c];
    }
    matrows(f, f, n, q, 1, f, s->dZb, dW, f, dW, f, s->tb, mm64); /* dW += q^T dZb */
    for (int64_t i = 0; i < n; i++) {
        const float *dz = s->dZb + i * f;
        float *dzg = s->ta; /* dZb[i] . G[j], j <= i */
        dots(f, i + 1, dz, s->G, dzg);
        for (int64_t j = 0; j <= i; j++) {
            const float dp = -dzg[j]; /* dP[i][j] = -dZb[i] . G[j] */
            const float a = s->A[i * n + j], e = tok[i] * lr[j];
            dE[i * n + j] += dp * (1.0f + a);
            s->DA[i * n + j] = dp * e; /* dA[i][j] */
            s->CG[i * n + j] = -(e * a + e);
        }
        /* dq[i] += sum_j dA[i][j] k[j], in order of j */
        vecmat_n(f, i + 1, dq + i * f, s->DA + i * n, k, dq + i * f);
    }
    /* dk[j] += sum_{i >= j} dA[i][j] q[i] and dG[j] -= sum_{i >= j} (P + Et)[i][j] dZb[i], in order
     * of i (each destination gets the chain of the (i, j) loop: the same bits) */
    for (int64_t j = 0; j < n; j++) {
        float *t = s->tb;
        for (int64_t i = j; i < n; i++) t[i - j] = s->DA[i * n + j];
        vecmat_n(f, n - j, dk + j * f, t, q + j * f, dk + j * f);
        for (int64_t i = j; i < n; i++) t[i - j] = s->CG[i * n + j];
        vecmat_n(f, n - j, s->dG + j * f, t, s->dZb + j * f, s->dG + j * f);
    }
    /* dE -> dtok, dlr */
    for (int64_t j = 0; j < n; j++) {
        float acc = 0.0f;
        for (int64_t i = j; i < n; i++) acc += dE[i * n + j] * tok[i];
        dlr[j] = acc;
    }
    for (int64_t i = 0; i < n; i++) {
        float acc = 0.0f;
        for (int64_t j = 0; j <= i; j++) acc += dE[i * n + j] * lr[j];
        dtok[i] += acc;
    }
    /* G = r1/f (f gxh - s1 - xh1 s2), gxh = gamma go, go = gamma xh1 + beta - v + k */
    for (int64_t i = 0; i < n; i++) { /* dxh1 first holds (f gxh - s1 - xh1 s2) */
        const float *gx = s->gxh + i * f, *xh = s->xh1 + i * f;
        const float s1 = s->s1[i], s2 = s->s2[i];
        float *dxh = s->dd + i * f;
        for (int64_t c = 0; c < f; c++) dxh[c] = ff * gx[c] - s1 - xh[c] * s2;
    }
    rdots(f, n, s->dG, s->dd, t0);
    rsums(f, n, s->dG, t1);
    rdots(f, n, s->dG, s->xh1, t2);
    for (int64_t i = 0; i < n; i++) {
        const float *dg = s->dG + i * f, *gx = s->gxh + i * f, *xh = s->xh1 + i * f, *go = s->go + i * f;
        const float r = s->r1[i], s2 = s->s2[i], rf = r / ff;
        const float ds1 = -(rf * t1[i]), ds2 = -(rf * t2[i]);
        ln1_grads(f, rf, ff, ds1, ds2, s2, dg, xh, gamma, go, gx, dgamma, dbeta, s->dd + i * f, dv + i * f,
                  dk + i * f);
    }
    rdots(f, n, s->dd, s->Z1c, t3);
    for (int64_t i = 0; i < n; i++) {
        const float *d1 = s->Z1c + i * f, *dxh = s->dd + i * f;
        const float r = s->r1[i];
        const float dr = t0[i] / ff;
        const float dr_tot = dr + t3[i];
        const float k3 = -(r * r * r) * dr_tot / ff;
        float *dz1 = s->dZ1 + i * f;
        for (int64_t c = 0; c < f; c++) dz1[c] = dxh[c] * r + k3 * d1[c];
    }
    rsums(f, n, s->dZ1, t0);
    for (int64_t i = 0; i < n; i++) {
        float *dz1 = s->dZ1 + i * f;
        const float mdd = t0[i] / ff;
        for (int64_t c = 0; c < f; c++) dz1[c] = dz1[c] - mdd;
    }
    /* Z1 = k W0 + b */
    matrows(f, n, f, s->dZ1, f, 1, s->WT, NULL, 0, s->dd, f, s->tb, mm64); /* dZ1 W0^T, summed over c in order */
    for (int64_t i = 0; i < n; i++) {
        const float *dz = s->dZ1 + i * f, *dki = s->dd + i * f;
        for (int64_t p = 0; p < f; p++) dk[i * f + p] += dki[p];
        for (int64_t c = 0; c < f; c++) db[c] += dz[c];
    }
    matrows(f, f, n, k, 1, f, s->dZ1, dW, f, dW, f, s->tb, mm64); /* dW += k^T dZ1 */
}

/* -- rows ----------------------------------------------------------------------------- */
/* Copy n rows of width f from src (row pitch ps) to dst (row pitch pd), rotating the pairs
 * (2j, 2j+1) of row i by the RoPE angle of position i (sign -1: the inverse rotation) when
 * cs != NULL.  Gathers a mini-batch from [B, T, D] (ps = D, pd = f) and scatters it back.
 * With the spread tables (rc, rs: see scratch; rs holds the sign) the AVX2 / AVX-512 copies
 * rotate whole registers: y = x rc + swap(x) rs, where swap exchanges the two of each pair;
 * x_e c + x_o (-s) is x_e c - x_o s and x_o c + x_e s is x_e s + x_o c exactly, so the same
 * bits as the pair loop. */
INLINE void copy_rows(int64_t n, int64_t f, const float *src, int64_t ps, float *dst, int64_t pd,
                      const float *cs, const float *sn, float sign, const float *rc, const float *rs, const int isa) {
    const int64_t h2 = f / 2;
    (void)rc;
    (void)rs;
    (void)isa;
#ifdef BT_HAVE_X86
    if (cs && isa == 2 && f % 16 == 0) {
        rope_rows_avx512(n, f, src, ps, dst, pd, rc, rs);
        return;
    }
    if (cs && isa == 1 && f % 8 == 0) {
        rope_rows_avx2(n, f, src, ps, dst, pd, rc, rs);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++) {
        const float *x = src + i * ps;
        float *y = dst + i * pd;
        if (!cs) {
            for (int64_t c = 0; c < f; c++) y[c] = x[c];
            continue;
        }
        for (int64_t j = 0; j < h2; j++) {
            const float c = cs[i * h2 + j], sv = sign * sn[i * h2 + j];
            const float xe = x[2 * j], xo = x[2 * j + 1];
            y[2 * j] = xe * c - xo * sv;
            y[2 * j + 1] = xe * sv + xo * c;
        }
    }
}

/* The spread RoPE tables of a call (positions 0..K-1; f even): rc[i, 2j] = rc[i, 2j+1] = cos,
 * rsp[i, 2j] = -sin, rsp[i, 2j+1] = sin, rsm = -rsp. */
static void rope_spread(int64_t K, int64_t f, const float *cs, const float *sn, float *rc, float *rsp, float *rsm) {
    const int64_t h2 = f / 2;
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < h2; j++) {
            const float c = cs[i * h2 + j], sv = sn[i * h2 + j];
            rc[i * f + 2 * j] = c;
            rc[i * f + 2 * j + 1] = c;
            rsp[i * f + 2 * j] = -sv;
            rsp[i * f + 2 * j + 1] = sv;
            rsm[i * f + 2 * j] = sv;
            rsm[i * f + 2 * j + 1] = -sv;
        }
}

/* Prefetch n rows of f floats (pitch ps) of a mini-batch that comes next: the rows of one
 * head are 256-byte pieces D floats apart, a pattern the hardware prefetchers follow late. */
INLINE void prefetch_rows(int64_t n, int64_t f, const float *src, int64_t ps, int write) {
    for (int64_t i = 0; i < n; i++)
        for (int64_t c = 0; c < f; c += 16) {
            if (write) __builtin_prefetch(src + i * ps + c, 1);
            else __builtin_prefetch(src + i * ps + c, 0);
        }
}

INLINE void row_forward(const bt_ttt_args *a, int64_t r, float *out, float *Ws, float *saved, scratch *s,
                        const int64_t f, const int mm64) {
    const int64_t T = a->T, K = a->K, H = a->H, h = r % H, bi = r / H, D = H * f, C = (T + K - 1) / K;
    float *W = s->Wc, *b = s->bc;
    const uint8_t *rs = a->reset ? a->reset + bi * C : NULL;
    for (int64_t c = 0; c < C; c++) {
        const int64_t t0 = c * K, n = T - t0 < K ? T - t0 : K;
        if (c == 0 && a->Winit && !(rs && rs[0])) {
            memcpy(W, a->Winit + r * f * f, (size_t)(f * f) * sizeof(float));
            memcpy(b, a->binit + r * f, (size_t)f * sizeof(float));
        } else if (c == 0 || (rs && rs[c])) {
            memcpy(W, a->W1 + h * f * f, (size_t)(f * f) * sizeof(float));
            memcpy(b, a->b1 + h * f, (size_t)f * sizeof(float));
        }
        memcpy(Ws + (r * C + c) * f * f, W, (size_t)(f * f) * sizeof(float));
        bind_saved(s, saved + (r * C + c) * bt_ttt_saved_floats(K, f), K, f);
        const int64_t o = (bi * T + t0) * D + h * f;
        if (c + 1 < C) {
            const int64_t on = o + K * D, nn = T - t0 - K < K ? T - t0 - K : K;
            prefetch_rows(nn, f, a->q + on, D, 0);
            prefetch_rows(nn, f, a->k + on, D, 0);
            prefetch_rows(nn, f, a->v + on, D, 0);
            prefetch_rows(nn, f, out + on, D, 1);
        }
        copy_rows(n, f, a->q + o, D, s->qc, f, a->cos, a->sin, 1.0f, s->rc, s->rsp, mm64);
        copy_rows(n, f, a->k + o, D, s->kc, f, a->cos, a->sin, 1.0f, s->rc, s->rsp, mm64);
        copy_rows(n, f, a->v + o, D, s->vc, f, NULL, NULL, 1.0f, NULL, NULL, mm64);
        chunk_forward(n, f, s->qc, s->kc, s->vc, a->lr + r * T + t0, a->tok, a->gamma + h * f, a->beta + h * f,
                      W, b, s->oc, s, mm64);
        copy_rows(n, f, s->oc, f, out + o, D, NULL, NULL, 1.0f, NULL, NULL, mm64);
    }
    if (a->Wfin) memcpy(a->Wfin + r * f * f, W, (size_t)(f * f) * sizeof(float));
    if (a->bfin) memcpy(a->bfin + r * f, b, (size_t)f * sizeof(float));
}

/* The gradient (dW, db) of a mini-batch's starting state goes to (W1, b1) when that mini-batch
 * started from them: dW1, db1 take it (a copy the first time, so a single start gives the same
 * bits as before) and the state's gradient restarts from zero. */
INLINE void to_initial(int64_t f, float *dW, float *db, float *dW1, float *db1, int *have) {
    if (*have) {
        for (int64_t i = 0; i < f * f; i++) dW1[i] += dW[i];
        for (int64_t i = 0; i < f; i++) db1[i] += db[i];
    } else {
        memcpy(dW1, dW, (size_t)(f * f) * sizeof(float));
        memcpy(db1, db, (size_t)f * sizeof(float));
        *have = 1;
    }
    memset(dW, 0, (size_t)(f * f) * sizeof(float));
    memset(db, 0, (size_t)f * sizeof(float));
}

INLINE void row_backward(const bt_ttt_args *a, int64_t r, const float *Ws, float *saved, const float *dout,
                         float *dq, float *dk, float *dv, float *dlr, float *dtok, float *dW1, float *db1,
                         float *dgamma, float *dbeta, scratch *s, const int64_t f, const int mm64) {
    const int64_t T = a->T, K = a->K, H = a->H, h = r % H, bi = r / H, D = H * f, C = (T + K - 1) / K;
    float *dW = s->dW, *db = s->db;
    const uint8_t *rs = a->reset ? a->reset + bi * C : NULL;
    int have = 0; /* dW1, db1 of this row written yet */
    memset(dW, 0, (size_t)(f * f) * sizeof(float));
    memset(db, 0, (size_t)f * sizeof(float));
    memset(dtok + r * K, 0, (size_t)K * sizeof(float));
    memset(dgamma + r * f, 0, (size_t)f * sizeof(float));
    memset(dbeta + r * f, 0, (size_t)f * sizeof(float));
    for (int64_t c = C - 1; c >= 0; c--) {
        const int64_t t0 = c * K, n = T - t0 < K ? T - t0 : K;
        const float *W0 = Ws + (r * C + c) * f * f;
        bind_saved(s, saved + (r * C + c) * bt_ttt_saved_floats(K, f), K, f);
        const int64_t o = (bi * T + t0) * D + h * f;
        if (c > 0) { /* the mini-batch before comes next: always a full one */
            const int64_t op = o - K * D;
            prefetch_rows(K, f, a->q + op, D, 0);
            prefetch_rows(K, f, a->k + op, D, 0);
            prefetch_rows(K, f, dout + op, D, 0);
            prefetch_rows(K, f, dq + op, D, 1);
            prefetch_rows(K, f, dk + op, D, 1);
            prefetch_rows(K, f, dv + op, D, 1);
        }
        copy_rows(n, f, a->q + o, D, s->qc, f, a->cos, a->sin, 1.0f, s->rc, s->rsp, mm64);
        copy_rows(n, f, a->k + o, D, s->kc, f, a->cos, a->sin, 1.0f, s->rc, s->rsp, mm64);
        copy_rows(n, f, dout + o, D, s->oc, f, NULL, NULL, 1.0f, NULL, NULL, mm64);
        chunk_backward(n, f, s->qc, s->kc, a->lr + r * T + t0, a->tok, a->gamma + h * f, W0, s->oc, dW, db,
                       s->dqc, s->dkc, s->dvc, dlr + r * T + t0, dtok + r * K, dgamma + r * f, dbeta + r * f, s,
                       mm64);
        copy_rows(n, f, s->dqc, f, dq + o, D, a->cos, a->sin, -1.0f, s->rc, s->rsm, mm64);
        copy_rows(n, f, s->dkc, f, dk + o, D, a->cos, a->sin, -1.0f, s->rc, s->rsm, mm64);
        copy_rows(n, f, s->dvc, f, dv + o, D, NULL, NULL, 1.0f, NULL, NULL, mm64);
        if ((c == 0 && !(a->Winit)) || (rs && rs[c])) to_initial(f, dW, db, dW1 + r * f * f, db1 + r * f, &have);
    }
    if (!have) { /* every mini-batch continued a carried state: no gradient reaches (W1, b1) */
        memset(dW1 + r * f * f, 0, (size_t)(f * f) * sizeof(float));
        memset(db1 + r * f, 0, (size_t)f * sizeof(float));
    }
}

/* Each ISA gets a copy specialized for the common head widths (the compiler then fully
 * unrolls the short inner loops) and one for any width: the ttt_fwd, ttt_bwd table entries.
 * MM64: the copy's ISA (0 baseline, 1 AVX2, 2 AVX-512), for the f = 64 products and transposes. */
#define ROW_FWD(F) row_forward(a, r, out, Ws, sv, s, F, MM64)
#define ROW_BWD(F) row_backward(a, r, Ws, sv, dout, dq, dk, dv, dlr, dtok, dW1, db1, dgamma, dbeta, s, F, MM64)
#define ROW_FNS(SUFFIX, ATTR, MM64_)                                                                \
    ATTR void bt_ttt_fwd_##SUFFIX(const bt_ttt_args *a, int64_t r, float *out, float *Ws, float *sv, \
                                  scratch *s) {                                                     \
        enum { MM64 = MM64_ };                                                                      \
        switch (a->f) {                                                                             \
        case 32: ROW_FWD(32); break;                                                                \
        case 64: ROW_FWD(64); break;                                                                \
        case 128: ROW_FWD(128); break;                                                              \
        default: ROW_FWD(a->f);                                                                     \
        }                                                                                           \
    }                                                                                               \
    ATTR void bt_ttt_bwd_##SUFFIX(const bt_ttt_args *a, int64_t r, const float *Ws, float *sv,       \
                                  const float *dout, float *dq, float *dk, float *dv, float *dlr,  \
                                  float *dtok, float *dW1, float *db1, float *dgamma, float *dbeta, \
                                  scratch *s) {                                                     \
        enum { MM64 = MM64_ };                                                                      \
        switch (a->f) {                                                                             \
        case 32: ROW_BWD(32); break;                                                                \
        case 64: ROW_BWD(64); break;                                                                \
        case 128: ROW_BWD(128); break;                                                              \
        default: ROW_BWD(a->f);                                                                     \
        }                                                                                           \
    }

ROW_FNS(scalar, , 0)
#ifdef BT_HAVE_X86
ROW_FNS(avx2, BT_TARGET_AVX2, 1)
ROW_FNS(avx512, BT_TARGET_AVX512, 2)
#endif
#undef ROW_FWD
#undef ROW_BWD

/* Run body(a, r, ctx, scratch) for every row r = (sequence, head) on the thread pool, each
 * thread with its own scratch.  BT_ERR_NOMEM if a scratch cannot be allocated. */
typedef void (*row_body)(const bt_ttt_args *a, int64_t r, void *ctx, scratch *s);

static int parallel_rows(const bt_ttt_args *a, row_body body, void *ctx) {
    const int64_t R = a->B * a->H;
    const int nt = bt_get_threads() < R ? bt_get_threads() : (int)R;
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        scratch s;
        const int ok = scratch_alloc(&s, a->K, a->f) == BT_OK;
        if (!ok) failed = 1;
        else if (a->cos && a->f % 2 == 0) rope_spread(a->K, a->f, a->cos, a->sin, s.rc, s.rsp, s.rsm);
        /* every thread reaches the loop (a worksharing construct), a failed one idles */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < R; r++)
            if (ok) body(a, r, ctx, &s);
        if (ok) scratch_free(&s);
    }
    (void)nt;
    return failed ? BT_ERR_NOMEM : BT_OK;
}

typedef struct {
    bt_ttt_fwd_fn *fn;
    float *out, *Ws, *saved;
} fwd_ctx;

typedef struct {
    bt_ttt_bwd_fn *fn;
    const float *Ws, *dout;
    float *saved, *dq, *dk, *dv, *dlr, *dtok, *dW1, *db1, *dgamma, *dbeta;
} bwd_ctx;

static void fwd_body(const bt_ttt_args *a, int64_t r, void *ctx, scratch *s) {
    const fwd_ctx *c = (const fwd_ctx *)ctx;
    c->fn(a, r, c->out, c->Ws, c->saved, s);
}

static void bwd_body(const bt_ttt_args *a, int64_t r, void *ctx, scratch *s) {
    const bwd_ctx *c = (const bwd_ctx *)ctx;
    c->fn(a, r, c->Ws, c->saved, c->dout, c->dq, c->dk, c->dv, c->dlr, c->dtok, c->dW1, c->db1, c->dgamma,
          c->dbeta, s);
}

int bt_ttt_forward(const bt_ttt_args *a, float *out, float *Ws, float *saved) {
    fwd_ctx c = {bt_ops()->ttt_fwd, out, Ws, saved};
    return parallel_rows(a, fwd_body, &c);
}

int bt_ttt_backward(const bt_ttt_args *a, const float *Ws, float *saved, const float *dout, float *dq,
                    float *dk, float *dv, float *dlr, float *dtok, float *dW1, float *db1, float *dgamma,
                    float *dbeta) {
    bwd_ctx c = {bt_ops()->ttt_bwd, Ws, dout, saved, dq, dk, dv, dlr, dtok, dW1, db1, dgamma, dbeta};
    return parallel_rows(a, bwd_body, &c);
}
