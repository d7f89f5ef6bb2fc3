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
#define DEC_TB 8  /* factor rows per block of the q . k_t dots */

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

/* zk = k W0 + b0 and zq = q W0 in one pass over W0, each sum in order of i.  A W0 read once
 * (one decoded token: it comes from memory) is walked row after row, a stream; a W0 read
 * for many tokens (a prompt: it stays in cache) in blocks of DEC_JB columns kept in
 * registers while i runs.  Both orders give the same bits. */
INLINE void zkq_body(int64_t f, const float *restrict q, const float *restrict k, const float *restrict W0,
                     const float *restrict b0, float *restrict zk, float *restrict zq, int stream) {
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
}

/* The rest of a head's step, from zk = k W0 + b0 and zq = q W0. */
INLINE void head_rest(int64_t f, int64_t K, int64_t pos, const float *restrict q, const float *restrict k,
                      const float *restrict v, float lr, float tok, const float *restrict gamma,
                      const float *restrict beta, float *restrict W0, float *restrict b0, float *restrict Kb,
                      float *restrict Gb, float *restrict Sb, int commit, float *restrict out, float *restrict zk,
                      float *restrict zq, float *restrict xh) {
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
    for (int64_t t0 = 0; t0 <= pos; t0 += DEC_TB) {
        /* the dots q . k_t of DEC_TB rows side by side (independent chains, each in order of j) */
        const int nb = pos + 1 - t0 < DEC_TB ? (int)(pos + 1 - t0) : DEC_TB;
        float a[DEC_TB] = {0.0f};
        const float *kt[DEC_TB];
        for (int u = 0; u < DEC_TB; u++) kt[u] = Kb + (t0 + (u < nb ? u : 0)) * f;
        for (int64_t j = 0; j < f; j++)
            for (int u = 0; u < DEC_TB; u++) a[u] += q[j] * kt[u][j];
        for (int u = 0; u < nb; u++) {
            const float *gt = Gb + (t0 + u) * f;
            for (int64_t j = 0; j < f; j++) zk[j] += a[u] * gt[j];
        }
    }
    for (int64_t j = 0; j < f; j++) zq[j] = zq[j] + b0[j] - tok * (zk[j] + Sb[j]);
    ln_rows(zq, f, xh);
    for (int64_t j = 0; j < f; j++) out[j] = q[j] + xh[j] * gamma[j] + beta[j];
    if (commit) commit_state(f, K, tok, W0, b0, Kb, Gb, Sb);
}

INLINE void head_body(int64_t f, int64_t K, int64_t pos, const float *restrict q, const float *restrict k,
                      const float *restrict v, float lr, float tok, const float *restrict gamma,
                      const float *restrict beta, float *restrict W0, float *restrict b0, float *restrict Kb,
                      float *restrict Gb, float *restrict Sb, int commit, float *restrict out, float *restrict zk,
                      float *restrict zq, float *restrict xh, int stream) {
    zkq_body(f, q, k, W0, b0, zk, zq, stream);
    head_rest(f, K, pos, q, k, v, lr, tok, gamma, beta, W0, b0, Kb, Gb, Sb, commit, out, zk, zq, xh);
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

#ifdef BT_HAVE_X86
#include <immintrin.h>

/* W0's rows this many bytes ahead are prefetched (past the head's last row: the next head's). */
#ifndef DEC_PF
#define DEC_PF 4096
#endif

/* What the next head of a thread reads besides its W0 (its factor rows Kb, Gb up to pos, b0,
 * Sb: short runs the hardware prefetchers miss), prefetched while this head streams its W0:
 * n[r] cache lines from p[r], e[r] of them per row of W0. */
#define DEC_PF_REGIONS 4
typedef struct {
    const char *p[DEC_PF_REGIONS];
    int64_t n[DEC_PF_REGIONS], e[DEC_PF_REGIONS];
} dec_pf;

/* zkq_body's stream for f = 16 nv on AVX-512: the 2 nv sums stay in registers (a row of W0 is
 * nv loads, no load and store of zk, zq per row) while W0 is walked row after row; the same
 * products and sums in the same order, so the same bits. */
BT_TARGET_AVX512 INLINE void zkq_zmm(const int nv, const float *restrict q, const float *restrict k,
                                     const float *restrict W0, const float *restrict b0, float *restrict zk,
                                     float *restrict zq, const dec_pf *pfn) {
    const int64_t f = 16 * nv;
    __m512 ak[8], aq[8];
    for (int c = 0; c < nv; c++) {
        ak[c] = _mm512_loadu_ps(b0 + 16 * c);
        aq[c] = _mm512_setzero_ps();
    }
    for (int64_t i = 0; i < f; i++) {
        const float *w = W0 + i * f;
        const char *pf = (const char *)w + DEC_PF;
        for (int c = 0; c < nv; c++) _mm_prefetch(pf + 64 * c, _MM_HINT_T0);
        for (int r = 0; r < DEC_PF_REGIONS; r++) /* row i: lines [e i, e (i + 1)) of each region */
            for (int64_t l = pfn->e[r] * i, l1 = l + pfn->e[r] < pfn->n[r] ? l + pfn->e[r] : pfn->n[r]; l < l1; l++)
                _mm_prefetch(pfn->p[r] + 64 * l, _MM_HINT_T0);
        const __m512 ki = _mm512_set1_ps(k[i]), qi = _mm512_set1_ps(q[i]);
        for (int c = 0; c < nv; c++) {
            const __m512 wc = _mm512_loadu_ps(w + 16 * c);
            ak[c] = _mm512_add_ps(ak[c], _mm512_mul_ps(ki, wc));
            aq[c] = _mm512_add_ps(aq[c], _mm512_mul_ps(qi, wc));
        }
    }
    for (int c = 0; c < nv; c++) {
        _mm512_storeu_ps(zk + 16 * c, ak[c]);
        _mm512_storeu_ps(zq + 16 * c, aq[c]);
    }
}

/* The head step of a decoded token on AVX-512 (heads of 64 and 128: zkq_zmm; others: zkq_body). */
BT_TARGET_AVX512 static void head_pf_avx512(int64_t f, int64_t K, int64_t pos, const float *restrict q,
                                            const float *restrict k, const float *restrict v, float lr, float tok,
                                            const float *restrict gamma, const float *restrict beta,
                                            float *restrict W0, float *restrict b0, float *restrict Kb,
                                            float *restrict Gb, float *restrict Sb, int commit, float *restrict out,
                                            float *restrict zk, float *restrict zq, float *restrict xh, int stream,
                                            const dec_pf *pfn) {
    if (stream && f == 128)
        zkq_zmm(8, q, k, W0, b0, zk, zq, pfn);
    else if (stream && f == 64)
        zkq_zmm(4, q, k, W0, b0, zk, zq, pfn);
    else
        zkq_body(f, q, k, W0, b0, zk, zq, stream);
    head_rest(f, K, pos, q, k, v, lr, tok, gamma, beta, W0, b0, Kb, Gb, Sb, commit, out, zk, zq, xh);
}

/* head_pf_avx512 with nothing more to prefetch (the bt_ttt_head_fn of bt_ttt_prefill's tokens). */
BT_TARGET_AVX512 static void head_dec_avx512(int64_t f, int64_t K, int64_t pos, const float *restrict q,
                                             const float *restrict k, const float *restrict v, float lr, float tok,
                                             const float *restrict gamma, const float *restrict beta,
                                             float *restrict W0, float *restrict b0, float *restrict Kb,
                                             float *restrict Gb, float *restrict Sb, int commit, float *restrict out,
                                             float *restrict zk, float *restrict zq, float *restrict xh, int stream) {
    const dec_pf none = {{NULL}, {0}, {0}};
    head_pf_avx512(f, K, pos, q, k, v, lr, tok, gamma, beta, W0, b0, Kb, Gb, Sb, commit, out, zk, zq, xh, stream,
                   &none);
}
#endif

/* The table's head step, or the AVX-512 one above where the table is AVX-512's. */
static bt_ttt_head_fn *head_fn(void) {
#ifdef BT_HAVE_X86
    if (bt_ops()->isa == BT_ISA_AVX512) return head_dec_avx512;
#endif
    return bt_ops()->ttt_head;
}

void bt_ttt_decode_heads(int64_t h0, int64_t h1, int64_t f, int64_t K, int64_t pos, const float *q, const float *k,
                         const float *v, const float *lr, float tok, const float *gamma, const float *beta, float *W0,
                         float *b0, float *Kb, float *Gb, float *Sb, float *out, float *scratch) {
    const int commit = pos == K - 1;
#ifdef BT_HAVE_X86
    if (bt_ops()->isa == BT_ISA_AVX512) { /* each head prefetches the next one's factor rows, b0 and Sb */
        const int64_t rl = (pos + 1) * f * 4 / 64, vl = (f * 4 + 63) / 64;
        for (int64_t h = h0; h < h1; h++) {
            float *sc = scratch + h * 3 * f;
            dec_pf pfn = {{NULL}, {0}, {0}};
            if (h + 1 < h1) {
                const int64_t n = h + 1;
                pfn = (dec_pf){{(const char *)(Kb + n * K * f), (const char *)(Gb + n * K * f),
                                (const char *)(b0 + n * f), (const char *)(Sb + n * f)},
                               {rl, rl, vl, vl},
                               {(rl + f - 1) / f, (rl + f - 1) / f, 1, 1}};
            }
            head_pf_avx512(f, K, pos, q + h * f, k + h * f, v + h * f, lr[h], tok, gamma + h * f, beta + h * f,
                           W0 + h * f * f, b0 + h * f, Kb + h * K * f, Gb + h * K * f, Sb + h * f, commit,
                           out + h * f, sc, sc + f, sc + 2 * f, 1, &pfn);
        }
        return;
    }
#endif
    bt_ttt_head_fn *const head = bt_ops()->ttt_head;
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
    bt_ttt_head_fn *const head = head_fn();
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
