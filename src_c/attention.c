/*
 * attention.c -- causal GQA softmax attention (bt_attention.h): tiled training forward and
 * backward with an online softmax, and attention against a KV cache for inference.
 *
 * Plain portable C written so that GCC vectorizes the inner loops without reassociating any
 * sum: score rows are built against a transposed key tile (the loop runs over keys), outputs
 * accumulate over the head dim; dot products of the cached path use 8 fixed lanes.  Scratch is
 * allocated once per thread per call, never inside the loops.
 */
#include "bt_attention.h"
#include "bt_common.h"
#include "bt_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int dims_ok(const bt_attn_dims *d) {
    return d->B >= 1 && d->H >= 1 && d->Hkv >= 1 && d->H % d->Hkv == 0 && d->T >= 1 && d->f >= 1 &&
           d->tile >= 1;
}

static int threads_for(int64_t items) {
    const int nt = bt_get_threads();
    return items < nt ? (int)items : nt;
}

/* kT [f][n] <- rows k[0..n) of width f (a key tile turned so that score rows run over keys). */
static void transpose_tile(const float *k, int64_t n, int64_t f, int64_t ld, float *kT) {
    for (int64_t j = 0; j < n; j++)
        for (int64_t c = 0; c < f; c++) kT[c * ld + j] = k[j * f + c];
}

/* s[j] = scale * q . kT[:, j] for j < n (sums over c in order). */
static void score_row(const float *q, const float *kT, int64_t n, int64_t f, int64_t ld, float scale, float *s) {
    for (int64_t j = 0; j < n; j++) s[j] = 0.0f;
    for (int64_t c = 0; c < f; c++) {
        const float qc = q[c];
        const float *kc = kT + c * ld;
        for (int64_t j = 0; j < n; j++) s[j] += qc * kc[j];
    }
    for (int64_t j = 0; j < n; j++) s[j] *= scale;
}

/* ---------------------------------------------------------------------------------------
 * Training forward
 * --------------------------------------------------------------------------------------- */
static void forward_tile(const bt_attn_dims *d, int64_t b, int64_t h, int64_t qt, const float *q, const float *k,
                         const float *v, float *out, float *lse, float *kT, float *s, float *m, float *l) {
    const int64_t T = d->T, f = d->f, tile = d->tile, G = d->H / d->Hkv;
    const int64_t q0 = qt * tile, q1 = q0 + tile < T ? q0 + tile : T, nq = q1 - q0;
    const float *Q = q + ((b * d->H + h) * T + q0) * f;
    const float *K = k + (b * d->Hkv + h / G) * T * f;
    const float *V = v + (b * d->Hkv + h / G) * T * f;
    float *O = out + ((b * d->H + h) * T + q0) * f;
    for (int64_t i = 0; i < nq; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
        for (int64_t c = 0; c < f; c++) O[i * f + c] = 0.0f;
    }
    for (int64_t k0 = 0; k0 < q1; k0 += tile) {
        const int64_t k1 = k0 + tile < q1 ? k0 + tile : q1, nk = k1 - k0;
        transpose_tile(K + k0 * f, nk, f, tile, kT);
        for (int64_t i = 0; i < nq; i++) {
            const int64_t qi = q0 + i;
            const int64_t n = qi + 1 - k0 < nk ? qi + 1 - k0 : nk;  /* causal: keys k0 .. qi */
            if (n <= 0) continue;
            score_row(Q + i * f, kT, n, f, tile, d->scale, s);
            float mx = m[i];
            for (int64_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
            const float corr = expf(m[i] - mx);
            float sum = 0.0f;
            for (int64_t j = 0; j < n; j++) {
                s[j] = expf(s[j] - mx);
                sum += s[j];
            }
            l[i] = l[i] * corr + sum;
            m[i] = mx;
            float *o = O + i * f;
            for (int64_t c = 0; c < f; c++) o[c] *= corr;
            for (int64_t j = 0; j < n; j++) {
                const float p = s[j];
                const float *vj = V + (k0 + j) * f;
                for (int64_t c = 0; c < f; c++) o[c] += p * vj[c];
            }
        }
    }
    float *L = lse + (b * d->H + h) * T + q0;
    for (int64_t i = 0; i < nq; i++) {
        const float inv = 1.0f / l[i];
        for (int64_t c = 0; c < f; c++) O[i * f + c] *= inv;
        L[i] = m[i] + logf(l[i]);
    }
}

int bt_attn_forward(const bt_attn_dims *d, const float *q, const float *k, const float *v, float *out, float *lse) {
    if (!dims_ok(d)) return BT_ERR_SHAPE;
    const int64_t nt_q = (d->T + d->tile - 1) / d->tile, items = d->B * d->H * nt_q;
    const int nt = threads_for(items);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        const int64_t tile = d->tile;
        float *kT = malloc(sizeof(float) * (size_t)(d->f * tile + 3 * tile));
        if (!kT) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t it = 0; it < items; it++) {
            if (!kT) continue;
            const int64_t qt = nt_q - 1 - it % nt_q;  /* the longest rows first */
            const int64_t bh = it / nt_q;
            float *s = kT + d->f * tile, *m = s + tile, *l = m + tile;
            forward_tile(d, bh / d->H, bh % d->H, qt, q, k, v, out, lse, kT, s, m, l);
        }
        free(kT);
    }
    (void)nt;
    return failed ? BT_ERR_NOMEM : BT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Training backward (scores recomputed tile by tile from lse)
 * --------------------------------------------------------------------------------------- */
static void backward_head(const bt_attn_dims *d, int64_t b, int64_t hk, const float *q, const float *k,
                          const float *v, const float *out, const float *lse, const float *dout, float *dq, float *dk,
                          float *dv, float *kT, float *vT, float *p, float *dp, float *delta) {
    const int64_t T = d->T, f = d->f, tile = d->tile, G = d->H / d->Hkv;
    const float *K = k + (b * d->Hkv + hk) * T * f;
    const float *V = v + (b * d->Hkv + hk) * T * f;
    float *dK = dk + (b * d->Hkv + hk) * T * f;
    float *dV = dv + (b * d->Hkv + hk) * T * f;
    memset(dK, 0, sizeof(float) * (size_t)(T * f));
    memset(dV, 0, sizeof(float) * (size_t)(T * f));
    for (int64_t g = 0; g < G; g++) {
        const int64_t h = hk * G + g;
        const float *Q = q + (b * d->H + h) * T * f;
        const float *O = out + (b * d->H + h) * T * f;
        const float *dO = dout + (b * d->H + h) * T * f;
        const float *L = lse + (b * d->H + h) * T;
        float *dQ = dq + (b * d->H + h) * T * f;
        memset(dQ, 0, sizeof(float) * (size_t)(T * f));
        for (int64_t i = 0; i < T; i++) {
            float acc = 0.0f;
            for (int64_t c = 0; c < f; c++) acc += dO[i * f + c] * O[i * f + c];
            delta[i] = acc;
        }
        for (int64_t q0 = 0; q0 < T; q0 += tile) {
            const int64_t q1 = q0 + tile < T ? q0 + tile : T;
            for (int64_t k0 = 0; k0 < q1; k0 += tile) {
                const int64_t k1 = k0 + tile < q1 ? k0 + tile : q1, nk = k1 - k0;
                transpose_tile(K + k0 * f, nk, f, tile, kT);
                transpose_tile(V + k0 * f, nk, f, tile, vT);
                for (int64_t qi = q0; qi < q1; qi++) {
                    const int64_t n = qi + 1 - k0 < nk ? qi + 1 - k0 : nk;
                    if (n <= 0) continue;
                    const float *qrow = Q + qi * f, *dorow = dO + qi * f;
                    score_row(qrow, kT, n, f, tile, d->scale, p);
                    for (int64_t j = 0; j < n; j++) p[j] = expf(p[j] - L[qi]);
                    score_row(dorow, vT, n, f, tile, 1.0f, dp);  /* dP = dO . v_j */
                    for (int64_t j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - delta[qi]) * d->scale;  /* dS */
                    float *dqrow = dQ + qi * f;
                    for (int64_t j = 0; j < n; j++) {
                        const float pj = p[j], sj = dp[j];
                        const float *kj = K + (k0 + j) * f;
                        float *dvj = dV + (k0 + j) * f, *dkj = dK + (k0 + j) * f;
                        for (int64_t c = 0; c < f; c++) {
                            dvj[c] += pj * dorow[c];
                            dkj[c] += sj * qrow[c];
                            dqrow[c] += sj * kj[c];
                        }
                    }
                }
            }
        }
    }
}

int bt_attn_backward(const bt_attn_dims *d, const float *q, const float *k, const float *v, const float *out,
                     const float *lse, const float *dout, float *dq, float *dk, float *dv) {
    if (!dims_ok(d)) return BT_ERR_SHAPE;
    const int64_t items = d->B * d->Hkv;
    const int nt = threads_for(items);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        const int64_t tile = d->tile;
        float *kT = malloc(sizeof(float) * (size_t)(2 * d->f * tile + 2 * tile + d->T));
        if (!kT) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t it = 0; it < items; it++) {
            if (!kT) continue;
            float *vT = kT + d->f * tile, *p = vT + d->f * tile, *dp = p + tile, *delta = dp + tile;
            backward_head(d, it / d->Hkv, it % d->Hkv, q, k, v, out, lse, dout, dq, dk, dv, kT, vT, p, dp, delta);
        }
        free(kT);
    }
    (void)nt;
    return failed ? BT_ERR_NOMEM : BT_OK;
}

/* ---------------------------------------------------------------------------------------
 * Attention against a KV cache
 * --------------------------------------------------------------------------------------- */

/* IEEE half -> float, exact for every finite half (normals and subnormals: the exponent is
 * rebiased by one multiply by 2^112), in integer and float steps with no branch, so that the
 * loops over a row vectorize. */
static inline float half_to_float(uint16_t h) {
    const uint32_t bits = (uint32_t)(h & 0x7fffu) << 13;
    float f;
    memcpy(&f, &bits, sizeof f);
    f *= 0x1p112f;
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u |= (uint32_t)(h & 0x8000u) << 16;
    memcpy(&f, &u, sizeof f);
    return f;
}

#define KV_BLOCK 32  /* cached rows converted to float at a time */

/* The cached path converts every cached element: an AVX2 copy of those loops (chosen by the
 * loader from the CPU, the same C and the same bits: no sum is reordered, no FMA contracted)
 * where the compiler and the platform support function clones. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define BT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define BT_CLONES
#endif

/* rows [n][f] <- cached rows j0 .. j0+n-1 of head hk as floats (scales applied). */
BT_CLONES static void load_rows(int kv_type, const void *base, const float *scales, int64_t hk, int64_t j0, int64_t n,
                      int64_t cap, int64_t f, float *restrict rows) {
    const int64_t off = (hk * cap + j0) * f, m = n * f;
    if (kv_type == BT_KV_F32) {
        memcpy(rows, (const float *)base + off, sizeof(float) * (size_t)m);
    } else if (kv_type == BT_KV_F16) {
        const uint16_t *restrict src = (const uint16_t *)base + off;
        for (int64_t c = 0; c < m; c++) rows[c] = half_to_float(src[c]);
    } else {
        const int8_t *restrict src = (const int8_t *)base + off;
        const float *sc = scales + hk * cap + j0;
        for (int64_t j = 0; j < n; j++) {
            const float sj = sc[j];
            const int8_t *restrict sr = src + j * f;
            float *restrict r = rows + j * f;
            for (int64_t c = 0; c < f; c++) r[c] = (float)sr[c] * sj;
        }
    }
}

/* q . r over f in 8 fixed lanes, then the lanes added in order. */
static inline float dot8(const float *restrict a, const float *restrict r, int64_t f) {
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= f; c += 8)
        for (int t = 0; t < 8; t++) lane[t] += a[c + t] * r[c + t];
    for (int t = 0; c < f; c++, t++) lane[t] += a[c] * r[c];
    return ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
}

BT_CLONES static void cached_group(int64_t i, int64_t hk, int64_t H, int64_t Hkv, int64_t f, int64_t cap, int64_t start,
                         float scale, int kv_type, const float *q, const void *kc, const void *vc, const float *ks,
                         const float *vs, float *out, float *rows, float *s) {
    const int64_t G = H / Hkv, n = start + i + 1;
    const float *Q = q + (i * H + hk * G) * f;
    float *O = out + (i * H + hk * G) * f;
    for (int64_t j0 = 0; j0 < n; j0 += KV_BLOCK) {
        const int64_t nb = n - j0 < KV_BLOCK ? n - j0 : KV_BLOCK;
        load_rows(kv_type, kc, ks, hk, j0, nb, cap, f, rows);
        for (int64_t g = 0; g < G; g++)
            for (int64_t j = 0; j < nb; j++) s[g * n + j0 + j] = dot8(Q + g * f, rows + j * f, f) * scale;
    }
    for (int64_t g = 0; g < G; g++) {
        float *sg = s + g * n, mx = -INFINITY, sum = 0.0f;
        for (int64_t j = 0; j < n; j++) mx = sg[j] > mx ? sg[j] : mx;
        for (int64_t j = 0; j < n; j++) {
            sg[j] = expf(sg[j] - mx);
            sum += sg[j];
        }
        const float inv = 1.0f / sum;
        for (int64_t j = 0; j < n; j++) sg[j] *= inv;
        for (int64_t c = 0; c < f; c++) O[g * f + c] = 0.0f;
    }
    for (int64_t j0 = 0; j0 < n; j0 += KV_BLOCK) {
        const int64_t nb = n - j0 < KV_BLOCK ? n - j0 : KV_BLOCK;
        load_rows(kv_type, vc, vs, hk, j0, nb, cap, f, rows);
        for (int64_t g = 0; g < G; g++) {
            float *restrict o = O + g * f;
            for (int64_t j = 0; j < nb; j++) {
                const float p = s[g * n + j0 + j];
                const float *restrict r = rows + j * f;
                for (int64_t c = 0; c < f; c++) o[c] += p * r[c];
            }
        }
    }
}

int bt_attn_cached(int64_t T, int64_t H, int64_t Hkv, int64_t f, int64_t cap, int64_t start, float scale,
                   int kv_type, const float *q, const void *kc, const void *vc, const float *ks, const float *vs,
                   float *out) {
    if (T < 1 || H < 1 || Hkv < 1 || H % Hkv || f < 1 || start < 0 || start + T > cap ||
        kv_type < BT_KV_F32 || kv_type > BT_KV_I8 || (kv_type == BT_KV_I8 && (!ks || !vs)))
        return BT_ERR_SHAPE;
    const int64_t items = T * Hkv, G = H / Hkv;
    const int nt = threads_for(items);
    int failed = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(| : failed)
#endif
    {
        float *row = malloc(sizeof(float) * (size_t)(KV_BLOCK * f + G * (start + T)));
        if (!row) failed = 1;
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t it = 0; it < items; it++) {
            if (!row) continue;
            const int64_t i = T - 1 - it / Hkv;  /* the longest rows first */
            cached_group(i, it % Hkv, H, Hkv, f, cap, start, scale, kv_type, q, kc, vc, ks, vs, out, row,
                         row + KV_BLOCK * f);
        }
        free(row);
    }
    (void)nt;
    return failed ? BT_ERR_NOMEM : BT_OK;
}
