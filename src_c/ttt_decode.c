/* ttt_decode.c -- tokens through a TTT-Linear inner loop at inference (bt_ttt_decode_heads,
 * bt_ttt_prefill in bt_ttt.h).
 *
 * The mini-batch's gradient sum SW = sum_j k_j^T g_j is kept as its factors (the rows k_j
 * in Kb, g_j in Gb, j < pos): a token then reads W0 once (for k W0 and q W0 together) and
 * the at most K factor rows, instead of reading W0 twice and reading and writing a dense
 * SW.  W0 is rewritten once per mini-batch, when the last token commits the update.
 * The head step is compiled for the baseline and for AVX2: the ttt_head table entries. */
#include <math.h>
#include <string.h>

#include "bt_cpu.h"
#include "bt_isa_kernels.h"
#include "bt_ttt.h"

#define DEC_JB 32 /* columns per register block */

/* LayerNorm of z [f] with weight/bias: returns 1/sqrt(var + eps); xh = (z - mean) * r. */
static float ln_rows(const float *restrict z, int64_t f, float *restrict xh) {
    float mu = 0.0f;
    for (int64_t j = 0; j < f; j++) mu += z[j];
    mu /= (float)f;
    float var = 0.0f;
    for (int64_t j = 0; j < f; j++) {
        const float d = z[j] - mu;
        var += d * d;
    }
    const float r = 1.0f / sqrtf(var / (float)f + BT_LN_EPS);
    for (int64_t j = 0; j < f; j++) xh[j] = (z[j] - mu) * r;
    return r;
}

float bt_ttt_lr(const float *x, const float *w, float b, int64_t D, float scale) {
    float acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    const int64_t D8 = D & ~(int64_t)7;
    for (int64_t c = 0; c < D8; c += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[c + j] * w[c + j];
    for (int64_t c = D8; c < D; c++) acc[c - D8] += x[c] * w[c];
    const float z = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + b;
    return scale * (0.5f + 0.5f * tanhf(0.5f * z));
}

/* The last token of a mini-batch commits: W0 -= tok sum_t k_t^T g_t, b0 -= tok Sb; the sums restart. */
INLINE void commit_state(int64_t f, int64_t K, float tok, float *restrict W0, float *restrict b0,
                         const float *restrict Kb, const float *restrict Gb, float *restrict Sb) {
    for (int64_t i = 0; i < f; i++) {
        float *w = W0 + i * f;
        int64_t c0 = 0;
        for (; c0 + DEC_JB <= f; c0 += DEC_JB) { /* a block of the row stays in registers over t */
            float acc[DEC_JB];
            for (int jj = 0; jj < DEC_JB; jj++) acc[jj] = w[c0 + jj];
            for (int64_t t = 0; t < K; t++) {
                const float a = tok * Kb[t * f + i];
                const float *gt = Gb + t * f + c0;
                for (int jj = 0; jj < DEC_JB; jj++) acc[jj] -= a * gt[jj];
            }
            for (int jj = 0; jj < DEC_JB; jj++) w[c0 + jj] = acc[jj];
        }
        for (int64_t j = c0; j < f; j++)
            for (int64_t t = 0; t < K; t++) w[j] -= (tok * Kb[t * f + i]) * Gb[t * f + j];
    }
    for (int64_t j = 0; j < f; j++) {
        b0[j] -= tok * Sb[j];
        Sb[j] = 0.0f;
    }
}

INLINE void head_body(int64_t f, int64_t K, int64_t pos, const float *restrict q, const float *restrict k,
                      const float *restrict v, float lr, float tok, const float *restrict gamma,
                      const float *restrict beta, float *restrict W0, float *restrict b0, float *restrict Kb,
                      float *restrict Gb, float *restrict Sb, int commit, float *restrict out, float *restrict zk,
                      float *restrict zq, float *restrict xh, int stream) {
    /* zk = k W0 + b0 and zq = q W0 in one pass over W0, each sum in order of i.  A W0 read once
     * (one decoded token: it comes from memory) is walked row after row, a stream; a W0 read
     * for many tokens (a prompt: it stays in cache) in blocks of DEC_JB columns kept in
     * registers while i runs.  Both orders give the same bits. */
    int64_t j0 = 0;
    if (stream) {
        for (int64_t j = 0; j < f; j++) {
            zk[j] = b0[j];
            zq[j] = 0.0f;
        }
        for (int64_t i = 0; i < f; i++) {
            const float ki = k[i], qi = q[i];
            const float *restrict w = W0 + i * f;
            for (int64_t j = 0; j < f; j++) {
                zk[j] += ki * w[j];
                zq[j] += qi * w[j];
            }
        }
        j0 = f;
    }
    for (; j0 + DEC_JB <= f; j0 += DEC_JB) {
        float ak[DEC_JB], aq[DEC_JB];
        for (int jj = 0; jj < DEC_JB; jj++) {
            ak[jj] = b0[j0 + jj];
            aq[jj] = 0.0f;
        }
        for (int64_t i = 0; i < f; i++) {
            const float ki = k[i], qi = q[i];
            const float *w = W0 + i * f + j0;
            for (int jj = 0; jj < DEC_JB; jj++) {
                ak[jj] += ki * w[jj];
                aq[jj] += qi * w[jj];
            }
        }
        for (int jj = 0; jj < DEC_JB; jj++) {
            zk[j0 + jj] = ak[jj];
            zq[j0 + jj] = aq[jj];
        }
    }
    for (int64_t j = j0; j < f; j++) {
        float ak = b0[j], aq = 0.0f;
        for (int64_t i = 0; i < f; i++) {
            ak += k[i] * W0[i * f + j];
            aq += q[i] * W0[i * f + j];
        }
        zk[j] = ak;
        zq[j] = aq;
    }
    /* g = lr r / f (f gxh - sum gxh - xh sum(gxh xh)), gxh = (gamma xh + beta - (v - k)) gamma */
    const float r = ln_rows(zk, f, xh);
    float s1 = 0.0f, s2 = 0.0f;
    float *g = Gb + pos * f, *kr = Kb + pos * f;
    for (int64_t j = 0; j < f; j++) {
        const float gx = (gamma[j] * xh[j] + beta[j] - (v[j] - k[j])) * gamma[j];
        g[j] = gx;
        s1 += gx;
        s2 += gx * xh[j];
    }
    const float c = lr * (r / (float)f);
    for (int64_t j = 0; j < f; j++) {
        g[j] = c * ((float)f * g[j] - s1 - xh[j] * s2);
        kr[j] = k[j];
        Sb[j] += g[j];
    }
    /* q SW = sum_j (q . k_j) g_j;  z = q W0 + b0 - tok (q SW + Sb) */
    for (int64_t j = 0; j < f; j++) zk[j] = 0.0f; /* zk now holds q SW */
    for (int64_t t = 0; t <= pos; t++) {
        const float *kt = Kb + t * f, *gt = Gb + t * f;
        float a = 0.0f;
        for (int64_t j = 0; j < f; j++) a += q[j] * kt[j];
        for (int64_t j = 0; j < f; j++) zk[j] += a * gt[j];
    }
    for (int64_t j = 0; j < f; j++) zq[j] = zq[j] + b0[j] - tok * (zk[j] + Sb[j]);
    ln_rows(zq, f, xh);
    for (int64_t j = 0; j < f; j++) out[j] = q[j] + xh[j] * gamma[j] + beta[j];
    if (commit) commit_state(f, K, tok, W0, b0, Kb, Gb, Sb);
}

#define HEAD_FN(SUFFIX, ATTR)                                                                                  \
    ATTR void bt_ttt_head_##SUFFIX(int64_t f, int64_t K, int64_t pos, const float *restrict q,                 \
                                   const float *restrict k, const float *restrict v, float lr, float tok,      \
                                   const float *restrict gamma, const float *restrict beta, float *restrict W0, \
                                   float *restrict b0, float *restrict Kb, float *restrict Gb,                 \
                                   float *restrict Sb, int commit, float *restrict out, float *restrict zk,    \
                                   float *restrict zq, float *restrict xh, int stream) {                      \
        head_body(f, K, pos, q, k, v, lr, tok, gamma, beta, W0, b0, Kb, Gb, Sb, commit, out, zk, zq, xh,      \
                  stream);                                                                                     \
    }
HEAD_FN(scalar, )
#ifdef BT_HAVE_X86
HEAD_FN(avx2, BT_TARGET_AVX2)
#endif

void bt_ttt_decode_heads(int64_t h0, int64_t h1, int64_t f, int64_t K, int64_t pos, const float *q, const float *k,
                         const float *v, const float *lr, float tok, const float *gamma, const float *beta, float *W0,
                         float *b0, float *Kb, float *Gb, float *Sb, float *out, float *scratch) {
    bt_ttt_head_fn *const head = bt_ops()->ttt_head;
    const int commit = pos == K - 1;
    for (int64_t h = h0; h < h1; h++) {
        float *sc = scratch + h * 3 * f;
        head(f, K, pos, q + h * f, k + h * f, v + h * f, lr[h], tok, gamma + h * f, beta + h * f,
             W0 + h * f * f, b0 + h * f, Kb + h * K * f, Gb + h * K * f, Sb + h * f, commit, out + h * f, sc,
             sc + f, sc + 2 * f, 1);
    }
}

/* -- prompts: a run of tokens of one mini-batch at once ---------------------------------------
 * Inside a mini-batch W0 and b0 stay fixed, so the tokens of a run are independent up to the
 * running sum Sb and the factor rows Kb, Gb.  The per-token chains of head_body (the LayerNorm
 * sums over j, the dots q . k_t, the learning rate's partial sums) run here for 8 or 16 tokens side
 * by side, one token per vector lane (the "lane layout": X[j] holds element j of every token), each lane's
 * sum in the same order as head_body's, so the bits are those of the token-by-token path.
 * zk = k W0 + b0 and zq = q W0 take W0 once per run instead of once per token. */
#define PF_MAXF 128 /* widest head the run path takes (stack scratch); wider heads go token by token */
#define PF_TB 4     /* factor rows k_t per block of the q . k_t dots */

/* lr of n <= PF_LT tokens (x rows D apart) for one head: bt_ttt_lr's eight partial sums per
 * token (one 8-float vector), the tokens interleaved so that w is read once for all. */
#define PF_LT 8
typedef float v8 __attribute__((vector_size(32)));
INLINE void lr_tokens(int64_t n, const float *x, int64_t D, const float *restrict w, float b, float scale,
                      float *restrict lr) {
    v8 acc[PF_LT];
    const float *xs[PF_LT];
    for (int u = 0; u < PF_LT; u++) {
        acc[u] = (v8){0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        xs[u] = x + (u < n ? u : 0) * D;
    }
    const int64_t D8 = D & ~(int64_t)7;
    for (int64_t c = 0; c < D8; c += 8) {
        v8 wv;
        memcpy(&wv, w + c, sizeof wv);
        for (int u = 0; u < PF_LT; u++) {
            v8 xv;
            memcpy(&xv, xs[u] + c, sizeof xv);
            acc[u] = acc[u] + xv * wv;
        }
    }
    for (int u = 0; u < n; u++) {
        for (int64_t c = D8; c < D; c++) acc[u][c - D8] += xs[u][c] * w[c];
        const v8 a = acc[u];
        const float z = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])) + b;
        lr[u] = scale * (0.5f + 0.5f * tanhf(0.5f * z));
    }
}

/* The run path at two widths: 16 lanes (AVX-512 zmm) and 8 (AVX2 ymm). */
typedef float v16 __attribute__((vector_size(64)));
#define LN_T v16
#define LN_N 16
#define LN_FN(name) name##_16
#include "bt_ttt_lanes.h"
#undef LN_T
#undef LN_N
#undef LN_FN
#define LN_T v8
#define LN_N 8
#define LN_FN(name) name##_8
#include "bt_ttt_lanes.h"
#undef LN_T
#undef LN_N
#undef LN_FN

#define RUN_FN(SUFFIX, ATTR, W, JB)                                                                                 \
    ATTR static void run_##SUFFIX(int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q,        \
                                  const float *k, const float *v, const float *xn, const float *lr_w, float lr_b, \
                                  float lr_scale, const float *tok, const float *gamma, const float *beta,       \
                                  float *W0, float *b0, float *Kb, float *Gb, float *Sb, float *out) {           \
        if (f == 128)                                                                                            \
            run_body_##W(JB, 128, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,  \
                     Sb, out);                                                                                   \
        else if (f == 64)                                                                                        \
            run_body_##W(JB, 64, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,   \
                     Sb, out);                                                                                   \
        else                                                                                                     \
            run_body_##W(JB, f, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,    \
                     Sb, out);                                                                                   \
    }
typedef void run_fn(int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q, const float *k,
                    const float *v, const float *xn, const float *lr_w, float lr_b, float lr_scale, const float *tok,
                    const float *gamma, const float *beta, float *W0, float *b0, float *Kb, float *Gb, float *Sb,
                    float *out);
#ifdef BT_HAVE_X86
RUN_FN(avx2, BT_TARGET_AVX2, 8, 4)
RUN_FN(avx512, BT_TARGET_AVX512, 16, 4)
#endif

void bt_ttt_prefill(int64_t H, int64_t f, int64_t K, int64_t pos0, int64_t T, const float *q, const float *k,
                    const float *v, const float *xn, const float *lr_w, const float *lr_b, float lr_scale,
                    const float *tok, const float *gamma, const float *beta, float *W0, float *b0, float *Kb,
                    float *Gb, float *Sb, float *out, float *scratch) {
    bt_ttt_head_fn *const head = bt_ops()->ttt_head;
    const int isa = bt_ops()->isa;
    run_fn *run = NULL; /* the run path on the vector ISAs (scalar: token by token) */
    int64_t nl = 1;       /* its lanes */
#ifdef BT_HAVE_X86
    if (isa == BT_ISA_AVX512) run = run_avx512, nl = 16;
    else if (isa == BT_ISA_AVX2) run = run_avx2, nl = 8;
#endif
    (void)isa;
    const int64_t D = H * f;
    const int runs = run && T > 1 && f <= PF_MAXF && f % 4 == 0 && K <= 64; /* the run path's bounds */
    int nt = bt_get_threads();
    if (nt > H) nt = (int)H;
    if (H * f * f * T < 65536) nt = 1;
    BT_PARALLEL_FOR(nt)
    for (int64_t h = 0; h < H; h++) { /* head by head: its W0 stays in cache over the tokens */
        float *sc = scratch + h * 3 * f;
        for (int64_t t = 0; t < T;) {
            const int64_t pos = (pos0 + t) % K;
            if (runs) { /* up to nl tokens, not past the mini-batch's end */
                int64_t n = T - t < nl ? T - t : nl;
                if (n > K - pos) n = K - pos;
                const int64_t o = t * D + h * f;
                run(f, K, pos, n, D, q + o, k + o, v + o, xn + t * D, lr_w + h * D, lr_b[h], lr_scale, tok,
                    gamma + h * f, beta + h * f, W0 + h * f * f, b0 + h * f, Kb + h * K * f, Gb + h * K * f,
                    Sb + h * f, out + o);
                t += n;
                continue;
            }
            const float lr = bt_ttt_lr(xn + t * D, lr_w + h * D, lr_b[h], D, lr_scale);
            head(f, K, pos, q + t * D + h * f, k + t * D + h * f, v + t * D + h * f, lr, tok[pos],
                 gamma + h * f, beta + h * f, W0 + h * f * f, b0 + h * f, Kb + h * K * f, Gb + h * K * f,
                 Sb + h * f, pos == K - 1, out + t * D + h * f, sc, sc + f, sc + 2 * f, T == 1);
            t++;
        }
    }
}
