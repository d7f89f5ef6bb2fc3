/* ttt_decode.c -- one token through a TTT-Linear inner loop (bt_ttt_decode in bt_ttt.h). */
#include <math.h>

#include "bt_cpu.h"
#include "bt_ttt.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define DEC_EPS 1e-6f

/* LayerNorm of z [f] with weight/bias: returns 1/sqrt(var + eps); xh = (z - mean) * r. */
static float ln_rows(const float *z, int64_t f, float *xh) {
    float mu = 0.0f;
    for (int64_t j = 0; j < f; j++) mu += z[j];
    mu /= (float)f;
    float var = 0.0f;
    for (int64_t j = 0; j < f; j++) {
        const float d = z[j] - mu;
        var += d * d;
    }
    const float r = 1.0f / sqrtf(var / (float)f + DEC_EPS);
    for (int64_t j = 0; j < f; j++) xh[j] = (z[j] - mu) * r;
    return r;
}

static void decode_head(int64_t f, const float *q, const float *k, const float *v, float lr, float tok,
                        const float *gamma, const float *beta, float *W0, float *b0, float *SW, float *Sb,
                        int commit, float *out, float *z, float *g, float *xh) {
    /* z = k W0 + b0 */
    for (int64_t j = 0; j < f; j++) z[j] = b0[j];
    for (int64_t i = 0; i < f; i++) {
        const float ki = k[i];
        const float *w = W0 + i * f;
        for (int64_t j = 0; j < f; j++) z[j] += ki * w[j];
    }
    /* g = r / f * (f gxh - sum gxh - xh sum(gxh xh)), gxh = (gamma xh + beta - (v - k)) gamma */
    const float r = ln_rows(z, f, xh);
    float s1 = 0.0f, s2 = 0.0f;
    for (int64_t j = 0; j < f; j++) {
        const float gx = (gamma[j] * xh[j] + beta[j] - (v[j] - k[j])) * gamma[j];
        g[j] = gx;
        s1 += gx;
        s2 += gx * xh[j];
    }
    for (int64_t j = 0; j < f; j++) g[j] = lr * (r / (float)f) * ((float)f * g[j] - s1 - xh[j] * s2);
    /* sums, then zb = q (W0 - tok SW) + b0 - tok Sb */
    for (int64_t i = 0; i < f; i++) {
        const float ki = k[i];
        float *s = SW + i * f;
        for (int64_t j = 0; j < f; j++) s[j] += ki * g[j];
    }
    for (int64_t j = 0; j < f; j++) {
        Sb[j] += g[j];
        z[j] = b0[j] - tok * Sb[j];
    }
    for (int64_t i = 0; i < f; i++) {
        const float qi = q[i];
        const float *w = W0 + i * f, *s = SW + i * f;
        for (int64_t j = 0; j < f; j++) z[j] += qi * (w[j] - tok * s[j]);
    }
    ln_rows(z, f, xh);
    for (int64_t j = 0; j < f; j++) out[j] = q[j] + xh[j] * gamma[j] + beta[j];
    if (commit) {
        for (int64_t i = 0; i < f * f; i++) {
            W0[i] -= tok * SW[i];
            SW[i] = 0.0f;
        }
        for (int64_t j = 0; j < f; j++) {
            b0[j] -= tok * Sb[j];
            Sb[j] = 0.0f;
        }
    }
}

void bt_ttt_decode(int64_t H, int64_t f, const float *q, const float *k, const float *v, const float *lr, float tok,
                   const float *gamma, const float *beta, float *W0, float *b0, float *SW, float *Sb, int commit,
                   float *out, float *scratch) {
    int nt = bt_get_threads();
    if (nt > H) nt = (int)H;
    if (H * f * f < 65536) nt = 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t h = 0; h < H; h++) {
        float *sc = scratch + h * 3 * f;
        decode_head(f, q + h * f, k + h * f, v + h * f, lr[h], tok, gamma + h * f, beta + h * f, W0 + h * f * f,
                    b0 + h * f, SW + h * f * f, Sb + h * f, commit, out + h * f, sc, sc + f, sc + 2 * f);
    }
    (void)nt;
}
