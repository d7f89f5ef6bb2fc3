/*
 * bt_ttt_lanes.h -- the lane layout of bt_ttt_prefill's run path (ttt_decode.c), a template:
 * ttt_decode.c includes it once per vector width, with
 *   LN_T   the vector type (GCC vector extension of LN_N floats: one register of the ISA)
 *   LN_N   its lanes: the tokens of a run
 *   LN_FN  the name of a function of this width (name -> name_<width>)
 * and the ISA's target attribute on the functions that inline these.  A lane holds one token:
 * X[j] is element j of every token of the run, so the per-token sums of head_body (LayerNorm
 * over j, the dots q . k_t) run side by side, each lane in head_body's order: the same bits.
 * The lane-wise operations are single IEEE operations (no contraction: -ffp-contract=off).
 */
#ifndef LN_T
#error "bt_ttt_lanes.h is a template: define LN_T, LN_N and LN_FN first (ttt_decode.c)"
#endif

/* x in every lane: GCC widens a scalar operand of a vector operation to all lanes, and x - (+0)
 * is x exactly (signed zeros included), so this is a plain broadcast. */
#define SPLAT(x) ((x) - (LN_T){0})

/* LayerNorm of the lanes of z [f] in place: z <- (z - mean) * r, *rp = r = 1/sqrt(var + eps) per lane;
 * the sums of ln_rows, lane by lane. */
INLINE void LN_FN(ln_lanes)(int64_t f, LN_T *restrict z, LN_T *restrict rp) {
    LN_T mu = SPLAT(0.0f), var = SPLAT(0.0f), r;
    for (int64_t j = 0; j < f; j++) mu = mu + z[j];
    mu = mu / SPLAT((float)f);
    for (int64_t j = 0; j < f; j++) {
        const LN_T d = z[j] - mu;
        var = var + d * d;
    }
    for (int u = 0; u < LN_N; u++) r[u] = 1.0f / sqrtf(var[u] / (float)f + BT_LN_EPS);
    for (int64_t j = 0; j < f; j++) z[j] = (z[j] - mu) * r;
    *rp = r;
}

/* commit_state for f a multiple of LN_N (f <= PF_MAXF): a whole row of W0 in registers over t. */
INLINE void LN_FN(commit_lanes)(int64_t f, int64_t K, float tok, float *restrict W0, float *restrict b0,
                         const float *restrict Kb, const float *restrict Gb, float *restrict Sb) {
    const int64_t nv = f / LN_N;
    for (int64_t i = 0; i < f; i++) {
        float *w = W0 + i * f;
        LN_T acc[PF_MAXF / LN_N];
        for (int64_t c = 0; c < nv; c++) memcpy(&acc[c], w + c * LN_N, sizeof(LN_T));
        for (int64_t t = 0; t < K; t++) {
            const float a = tok * Kb[t * f + i];
            const LN_T av = SPLAT(a);
            const float *gt = Gb + t * f;
            for (int64_t c = 0; c < nv; c++) {
                LN_T g;
                memcpy(&g, gt + c * LN_N, sizeof g);
                acc[c] = acc[c] - av * g;
            }
        }
        for (int64_t c = 0; c < nv; c++) memcpy(w + c * LN_N, &acc[c], sizeof(LN_T));
    }
    for (int64_t j = 0; j < f; j++) {
        b0[j] -= tok * Sb[j];
        Sb[j] = 0.0f;
    }
}

/* n <= LN_N tokens of head h, positions p0 .. p0+n-1 of one mini-batch (p0 + n <= K): rows q, k, v,
 * xn, out D floats apart (q, k, v, out at the head's columns).  The same state updates as n
 * head_body calls, commit included.  JB: columns of W0 per register block of the product. */
INLINE void LN_FN(run_body)(const int JB, int64_t f, int64_t K, int64_t p0, int64_t n, int64_t D, const float *q,
                     const float *k, const float *v, const float *xn, const float *restrict lr_w, float lr_b,
                     float lr_scale, const float *restrict tok, const float *restrict gamma,
                     const float *restrict beta, float *restrict W0, float *restrict b0, float *restrict Kb,
                     float *restrict Gb, float *restrict Sb, float *out) {
    LN_T kT[PF_MAXF], qT[PF_MAXF], gT[PF_MAXF], zk[PF_MAXF], zq[PF_MAXF], aT[64];
    float row[PF_MAXF], lr[LN_N];
    if (f > PF_MAXF || f % 4 || K > 64 || n > LN_N) return; /* the caller keeps to the scratch's bounds */
    /* lanes: tokens u < n; the others compute on zeros and are never read */
    for (int64_t i = 0; i < f; i++) kT[i] = qT[i] = gT[i] = SPLAT(0.0f);
    for (int64_t u = 0; u < n; u++)
        for (int64_t i = 0; i < f; i++) {
            kT[i][u] = k[u * D + i];
            qT[i][u] = q[u * D + i];
            gT[i][u] = v[u * D + i]; /* v, until it becomes g */
        }
    for (int u = 0; u < LN_N; u++) lr[u] = 0.0f;
    for (int64_t u = 0; u < n; u += PF_LT)
        lr_tokens(n - u < PF_LT ? n - u : PF_LT, xn + u * D, D, lr_w, lr_b, lr_scale, lr + u);
    /* zk = k W0 + b0, zq = q W0: each sum over i in order, JB columns x LN_N lanes in registers */
    for (int64_t j0 = 0; j0 < f; j0 += JB) { /* f a multiple of JB */
        LN_T ak[JB], aq[JB];
        for (int jj = 0; jj < JB; jj++) {
            ak[jj] = SPLAT(b0[j0 + jj]);
            aq[jj] = SPLAT(0.0f);
        }
        for (int64_t i = 0; i < f; i++) {
            const LN_T kv = kT[i], qv = qT[i];
            const float *w = W0 + i * f + j0;
            for (int jj = 0; jj < JB; jj++) {
                const LN_T wv = SPLAT(w[jj]);
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
    LN_T r1, r2, s1 = SPLAT(0.0f), s2 = SPLAT(0.0f), cc;
    LN_FN(ln_lanes)(f, zk, &r1); /* zk now holds xh */
    for (int64_t j = 0; j < f; j++) {
        const LN_T xh = zk[j], gm = SPLAT(gamma[j]);
        const LN_T gx = (gm * xh + SPLAT(beta[j]) - (gT[j] - kT[j])) * gm;
        gT[j] = gx;
        s1 = s1 + gx;
        s2 = s2 + gx * xh;
    }
    for (int u = 0; u < LN_N; u++) cc[u] = lr[u] * (r1[u] / (float)f);
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
        LN_T a[PF_TB];
        for (int tt = 0; tt < PF_TB; tt++) a[tt] = SPLAT(0.0f);
        for (int64_t j = 0; j < f; j++) {
            const LN_T qv = qT[j];
            for (int tt = 0; tt < PF_TB; tt++) a[tt] = a[tt] + qv * SPLAT(Kb[(t0 + tt) * f + j]);
        }
        for (int tt = 0; tt < PF_TB; tt++) aT[t0 + tt] = a[tt];
    }
    for (; t0 < nt; t0++) {
        LN_T a = SPLAT(0.0f);
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
    LN_FN(ln_lanes)(f, zq, &r2);
    for (int64_t j = 0; j < f; j++) zq[j] = qT[j] + zq[j] * SPLAT(gamma[j]) + SPLAT(beta[j]);
    for (int64_t u = 0; u < n; u++)
        for (int64_t j = 0; j < f; j++) out[u * D + j] = zq[j][u];
    if (p0 + n == K) {
        if (f % LN_N == 0) LN_FN(commit_lanes)(f, K, tok[K - 1], W0, b0, Kb, Gb, Sb);
        else commit_state(f, K, tok[K - 1], W0, b0, Kb, Gb, Sb);
    }
}

#undef SPLAT
