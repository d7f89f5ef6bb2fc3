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
 * sums over j, the dots q . k_t, the learning rate's partial sums) run here for NL tokens side
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

/* The lane layout's vectors: one float of each of NL = 16 tokens (GCC vector extensions, the
 * same lane-wise IEEE operations on every ISA: one zmm, two ymm or four xmm). */
#define NL 16
typedef float v16 __attribute__((vector_size(64)));

/* x in every lane: GCC widens a scalar operand of a vector operation to all lanes, and x - (+0)
 * is x exactly (signed zeros included), so this is a plain broadcast on every ISA. */
#define SPLAT(x) ((x) - (v16){0})

/* LayerNorm of the lanes of z [f] in place: z <- (z - mean) * r, *rp = r = 1/sqrt(var + eps) per lane;
 * the sums of ln_rows, lane by lane. */
INLINE void ln_lanes(int64_t f, v16 *restrict z, v16 *restrict rp) {
    v16 mu = SPLAT(0.0f), var = SPLAT(0.0f), r;
    for (int64_t j = 0; j < f; j++) mu = mu + z[j];
    mu = mu / SPLAT((float)f);
    for (int64_t j = 0; j < f; j++) {
        const v16 d = z[j] - mu;
        var = var + d * d;
    }
    for (int u = 0; u < NL; u++) r[u] = 1.0f / sqrtf(var[u] / (float)f + BT_LN_EPS);
    for (int64_t j = 0; j < f; j++) z[j] = (z[j] - mu) * r;
    *rp = r;
}

/* commit_state for f a multiple of NL (f <= PF_MAXF): a whole row of W0 in registers over t. */
INLINE void commit_lanes(int64_t f, int64_t K, float tok, float *restrict W0, float *restrict b0,
                         const float *restrict Kb, const float *restrict Gb, float *restrict Sb) {
    const int64_t nv = f / NL;
    for (int64_t i = 0; i < f; i++) {
        float *w = W0 + i * f;
        v16 acc[PF_MAXF / NL];
        for (int64_t c = 0; c < nv; c++) memcpy(&acc[c], w + c * NL, sizeof(v16));
        for (int64_t t = 0; t < K; t++) {
            const float a = tok * Kb[t * f + i];
            const v16 av = SPLAT(a);
            const float *gt = Gb + t * f;
            for (int64_t c = 0; c < nv; c++) {
                v16 g;
                memcpy(&g, gt + c * NL, sizeof g);
                acc[c] = acc[c] - av * g;
            }
        }
        for (int64_t c = 0; c < nv; c++) memcpy(w + c * NL, &acc[c], sizeof(v16));
    }
    for (int64_t j = 0; j < f; j++) {
        b0[j] -= tok * Sb[j];
        Sb[j] = 0.0f;
    }
}

/* n <= NL tokens of head h, positions p0 .. p0+n-1 of one mini-batch (p0 + n <= K): rows q, k, v,
 * xn, out D floats apart (q, k, v, out at the head's columns).  The same state updates as n
 * head_body calls, commit included.  JB: columns of W0 per register block of the product. */
INLINE void run_body(const int JB, int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q,
                     const float *k, const float *v, const float *xn, const float *restrict lr_w, float lr_b,
                     float lr_scale, const float *restrict tok, const float *restrict gamma,
                     const float *restrict beta, float *restrict W0, float *restrict b0, float *restrict Kb,
                     float *restrict Gb, float *restrict Sb, float *out) {
    v16 kT[PF_MAXF], qT[PF_MAXF], gT[PF_MAXF], zk[PF_MAXF], zq[PF_MAXF], aT[64];
    float row[PF_MAXF], lr[NL];
    if (f > PF_MAXF || f % 4 || K > 64 || n > NL) return; /* the caller keeps to the scratch's bounds */
    /* lanes: tokens u < n; the others compute on zeros and are never read */
    for (int64_t i = 0; i < f; i++) kT[i] = qT[i] = gT[i] = SPLAT(0.0f);
    for (int64_t u = 0; u < n; u++)
        for (int64_t i = 0; i < f; i++) {
            kT[i][u] = k[u * D + i];
            qT[i][u] = q[u * D + i];
            gT[i][u] = v[u * D + i]; /* v, until it becomes g */
        }
    for (int u = 0; u < NL; u++) lr[u] = 0.0f;
    for (int64_t u = 0; u < n; u += PF_LT)
        lr_tokens(n - u < PF_LT ? n - u : PF_LT, xn + u * D, D, lr_w, lr_b, lr_scale, lr + u);
    /* zk = k W0 + b0, zq = q W0: each sum over i in order, JB columns x NL lanes in registers */
    for (int64_t j0 = 0; j0 < f; j0 += JB) { /* f a multiple of JB */
        v16 ak[JB], aq[JB];
        for (int jj = 0; jj < JB; jj++) {
            ak[jj] = SPLAT(b0[j0 + jj]);
            aq[jj] = SPLAT(0.0f);
        }
        for (int64_t i = 0; i < f; i++) {
            const v16 kv = kT[i], qv = qT[i];
            const float *w = W0 + i * f + j0;
            for (int jj = 0; jj < JB; jj++) {
                const v16 wv = SPLAT(w[jj]);
                ak[jj] = ak[jj] + kv * wv;
                aq[jj] = aq[jj] + qv * wv;
            }
        }
        for (int jj = 0; jj < JB; jj++) {
            zk[j0 + jj] = ak[jj];
            zq[j0 + jj] = aq[jj];
        }
    }
    /* g = lr r / f (f gxh - sum gxh - xh sum(gxh xh)), gxh = (gamma xh + beta - (v - k)) gamma */
    v16 r1, r2, s1 = SPLAT(0.0f), s2 = SPLAT(0.0f), cc;
    ln_lanes(f, zk, &r1); /* zk now holds xh */
    for (int64_t j = 0; j < f; j++) {
        const v16 xh = zk[j], gm = SPLAT(gamma[j]);
        const v16 gx = (gm * xh + SPLAT(beta[j]) - (gT[j] - kT[j])) * gm;
        gT[j] = gx;
        s1 = s1 + gx;
        s2 = s2 + gx * xh;
    }
    for (int u = 0; u < NL; u++) cc[u] = lr[u] * (r1[u] / (float)f);
    for (int64_t j = 0; j < f; j++) gT[j] = cc * (SPLAT((float)f) * gT[j] - s1 - zk[j] * s2);
    for (int64_t u = 0; u < n; u++) {
        float *g = Gb + (p0 + u) * f, *kr = Kb + (p0 + u) * f;
        for (int64_t j = 0; j < f; j++) {
            g[j] = gT[j][u];
            kr[j] = k[u * D + j];
        }
    }
    /* aT[t] = q_u . k_t (lanes u) for t < p0 + n, each in order of j, PF_TB rows t at once */
    const int64_t nt = p0 + n;
    int64_t t0 = 0;
    for (; t0 + PF_TB <= nt; t0 += PF_TB) {
        v16 a[PF_TB];
        for (int tt = 0; tt < PF_TB; tt++) a[tt] = SPLAT(0.0f);
        for (int64_t j = 0; j < f; j++) {
            const v16 qv = qT[j];
            for (int tt = 0; tt < PF_TB; tt++) a[tt] = a[tt] + qv * SPLAT(Kb[(t0 + tt) * f + j]);
        }
        for (int tt = 0; tt < PF_TB; tt++) aT[t0 + tt] = a[tt];
    }
    for (; t0 < nt; t0++) {
        v16 a = SPLAT(0.0f);
        for (int64_t j = 0; j < f; j++) a = a + qT[j] * SPLAT(Kb[t0 * f + j]);
        aT[t0] = a;
    }
    /* token by token (rows): Sb += g_u; z = q W0 + b0 - tok (q SW + Sb), q SW = sum_{t<=p} a_t g_t */
    for (int64_t u = 0; u < n; u++) {
        const int64_t p = p0 + u;
        const float *g = Gb + p * f;
        for (int64_t j = 0; j < f; j++) {
            Sb[j] += g[j];
            row[j] = 0.0f;
        }
        for (int64_t t = 0; t <= p; t++) {
            const float a = aT[t][u], *gt = Gb + t * f;
            for (int64_t j = 0; j < f; j++) row[j] += a * gt[j];
        }
        const float tk = tok[p];
        for (int64_t j = 0; j < f; j++) row[j] = tk * (row[j] + Sb[j]);
        for (int64_t j = 0; j < f; j++) zq[j][u] = zq[j][u] + b0[j] - row[j];
    }
    ln_lanes(f, zq, &r2);
    for (int64_t j = 0; j < f; j++) zq[j] = qT[j] + zq[j] * SPLAT(gamma[j]) + SPLAT(beta[j]);
    for (int64_t u = 0; u < n; u++)
        for (int64_t j = 0; j < f; j++) out[u * D + j] = zq[j][u];
    if (p0 + n == K) {
        if (f % NL == 0) commit_lanes(f, K, tok[K - 1], W0, b0, Kb, Gb, Sb);
        else commit_state(f, K, tok[K - 1], W0, b0, Kb, Gb, Sb);
    }
}

#define RUN_FN(SUFFIX, ATTR, JB)                                                                                 \
    ATTR static void run_##SUFFIX(int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q,        \
                                  const float *k, const float *v, const float *xn, const float *lr_w, float lr_b, \
                                  float lr_scale, const float *tok, const float *gamma, const float *beta,       \
                                  float *W0, float *b0, float *Kb, float *Gb, float *Sb, float *out) {           \
        if (f == 128)                                                                                            \
            run_body(JB, 128, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,  \
                     Sb, out);                                                                                   \
        else if (f == 64)                                                                                        \
            run_body(JB, 64, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,   \
                     Sb, out);                                                                                   \
        else                                                                                                     \
            run_body(JB, f, K, p0, n, D, q, k, v, xn, lr_w, lr_b, lr_scale, tok, gamma, beta, W0, b0, Kb, Gb,    \
                     Sb, out);                                                                                   \
    }
typedef void run_fn(int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q, const float *k,
                    const float *v, const float *xn, const float *lr_w, float lr_b, float lr_scale, const float *tok,
                    const float *gamma, const float *beta, float *W0, float *b0, float *Kb, float *Gb, float *Sb,
                    float *out);
#ifdef BT_HAVE_X86
RUN_FN(avx512, BT_TARGET_AVX512, 4)
#endif

void bt_ttt_prefill(int64_t H, int64_t f, int64_t K, int64_t pos0, int64_t T, const float *q, const float *k,
                    const float *v, const float *xn, const float *lr_w, const float *lr_b, float lr_scale,
                    const float *tok, const float *gamma, const float *beta, float *W0, float *b0, float *Kb,
                    float *Gb, float *Sb, float *out, float *scratch) {
    bt_ttt_head_fn *const head = bt_ops()->ttt_head;
    const int isa = bt_ops()->isa;
    run_fn *run = NULL; /* the 16-lane run path: AVX-512 only for now (GCC splits wider vectors badly) */
#ifdef BT_HAVE_X86
    if (isa == BT_ISA_AVX512) run = run_avx512;
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
            if (runs) { /* up to NL tokens, not past the mini-batch's end */
                int64_t n = T - t < NL ? T - t : NL;
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
