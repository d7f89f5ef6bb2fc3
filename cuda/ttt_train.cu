/*
 * ttt_train.cu -- the TTT-Linear inner loop of training, dual form, forward and backward
 * (bitttt/backend/numpy.py minibatch_forward / minibatch_backward are the spec, op for op).
 *
 * One block of 256 threads per (sequence, head) walks the mini-batches in order (forward) or
 * in reverse (backward).  The forward saves the inner state (W, b) at the start of every
 * mini-batch; the backward recomputes that mini-batch's forward values from it, then goes back
 * through it, carrying dW, db of the state handed on.  Each block has its own scratch in global
 * memory (ttt_scratch_floats(f, K) floats, laid out by ttt_layout).
 *
 * Shapes: q, k, v [B, T, D] (before RoPE, rotated here at position t mod K), lr [B, H, T],
 * tok [K], W1 [H, f, f], b1 [H, f], gamma, beta [H, f], cos, sin [K, f / 2];
 * out [B, T, D] = Q + LN(Zb); Wsave [B H, chunks, f, f], bsave [B H, chunks, f].
 */
#include "common.cuh"

#define TT_EPS 1e-6f

struct TTTScratch {
    float *W, *dW, *dW2;                       /* [f, f] */
    float *bv, *db, *db2, *dgam, *dbet;        /* [f] */
    float *Q, *Kx, *V, *G, *Zb, *xh1, *go, *gxh, *xh2, *dZb, *dQ, *dKx, *dG, *dH; /* [K, f] */
    float *A, *dP, *dE;                        /* [K, K] */
    float *r1, *s1, *s2, *r2, *lrc, *rowa, *rowb, *dtok; /* [K] */
};

/* Floats of scratch per block: 3 f^2 + 5 f + 14 K f + 3 K^2 + 8 K (the host allocates this). */
__device__ __forceinline__ TTTScratch ttt_layout(float *p, int f, int K) {
    TTTScratch t;
    float **ff[] = {&t.W, &t.dW, &t.dW2};
    for (int i = 0; i < 3; i++) { *ff[i] = p; p += f * f; }
    float **fv[] = {&t.bv, &t.db, &t.db2, &t.dgam, &t.dbet};
    for (int i = 0; i < 5; i++) { *fv[i] = p; p += f; }
    float **kf[] = {&t.Q, &t.Kx, &t.V, &t.G, &t.Zb, &t.xh1, &t.go, &t.gxh, &t.xh2, &t.dZb, &t.dQ, &t.dKx, &t.dG, &t.dH};
    for (int i = 0; i < 14; i++) { *kf[i] = p; p += K * f; }
    float **kk[] = {&t.A, &t.dP, &t.dE};
    for (int i = 0; i < 3; i++) { *kk[i] = p; p += K * K; }
    float **kv[] = {&t.r1, &t.s1, &t.s2, &t.r2, &t.lrc, &t.rowa, &t.rowb, &t.dtok};
    for (int i = 0; i < 8; i++) { *kv[i] = p; p += K; }
    return t;
}

/* Q, Kx (RoPE at position i of the mini-batch), V and the learning rates of mini-batch s..s+n. */
__device__ void ttt_load(const TTTScratch &t, const float *q, const float *k, const float *v, const float *lr,
                         const float *cos, const float *sin, int b, int h, int H, int s, int n, int T, int D,
                         int f) {
    const int hf = f / 2;
    for (int e = threadIdx.x; e < n * hf; e += blockDim.x) {
        const int i = e / hf, j = e % hf;
        const int64_t base = ((int64_t)b * T + s + i) * D + (int64_t)h * f + 2 * j;
        const float c = cos[i * hf + j], sn = sin[i * hf + j];
        const float qe = q[base], qo = q[base + 1], ke = k[base], ko = k[base + 1];
        t.Q[i * f + 2 * j] = qe * c - qo * sn;
        t.Q[i * f + 2 * j + 1] = qe * sn + qo * c;
        t.Kx[i * f + 2 * j] = ke * c - ko * sn;
        t.Kx[i * f + 2 * j + 1] = ke * sn + ko * c;
    }
    for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
        const int i = e / f, c = e % f;
        t.V[e] = v[((int64_t)b * T + s + i) * D + (int64_t)h * f + c];
    }
    for (int i = threadIdx.x; i < n; i += blockDim.x) t.lrc[i] = lr[((int64_t)b * H + h) * T + s + i];
    __syncthreads();
}

/* The mini-batch's forward values from (W, bv): G and the inner LN's xh1, r1, go, gxh, s1, s2;
 * A = tril(Q Kx^T); Zb; the output LN's xh2, r2. */
__device__ void ttt_chunk_forward(const TTTScratch &t, const float *tok, const float *gm, const float *bt, int n,
                                  int f, int K) {
    const float fl = (float)f;
    for (int e = threadIdx.x; e < n * f; e += blockDim.x) { /* Z1 = Kx W + b (into Zb) */
        const int i = e / f, c = e % f;
        float z = t.bv[c];
        for (int l = 0; l < f; l++) z = fmaf(t.Kx[i * f + l], t.W[l * f + c], z);
        t.Zb[e] = z;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) { /* the inner loss gradient, one row per thread */
        const float *z = t.Zb + i * f;
        float mu = 0.0f, var = 0.0f;
        for (int c = 0; c < f; c++) mu += z[c];
        mu /= fl;
        for (int c = 0; c < f; c++) var = fmaf(z[c] - mu, z[c] - mu, var);
        const float r1 = 1.0f / sqrtf(var / fl + TT_EPS);
        float s1 = 0.0f, s2 = 0.0f;
        for (int c = 0; c < f; c++) {
            const float xh = (z[c] - mu) * r1;
            const float go = gm[c] * xh + bt[c] - (t.V[i * f + c] - t.Kx[i * f + c]);
            const float gx = go * gm[c];
            t.xh1[i * f + c] = xh;
            t.go[i * f + c] = go;
            t.gxh[i * f + c] = gx;
            s1 += gx;
            s2 = fmaf(gx, xh, s2);
        }
        for (int c = 0; c < f; c++)
            t.G[i * f + c] = (r1 / fl) * (fl * t.gxh[i * f + c] - s1 - t.xh1[i * f + c] * s2);
        t.r1[i] = r1;
        t.s1[i] = s1;
        t.s2[i] = s2;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n * n; e += blockDim.x) { /* A = tril(Q Kx^T) */
        const int i = e / n, j = e % n;
        float a = 0.0f;
        if (j <= i)
            for (int l = 0; l < f; l++) a = fmaf(t.Q[i * f + l], t.Kx[j * f + l], a);
        t.A[i * K + j] = a;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n * f; e += blockDim.x) { /* Zb = Q W - (Et * A) G + b - Et G */
        const int i = e / f, c = e % f;
        float z = 0.0f;
        for (int l = 0; l < f; l++) z = fmaf(t.Q[i * f + l], t.W[l * f + c], z);
        float u = 0.0f;
        for (int j = 0; j <= i; j++) u = fmaf(tok[i] * t.lrc[j] * (t.A[i * K + j] + 1.0f), t.G[j * f + c], u);
        t.Zb[e] = z - u + t.bv[c];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) { /* the output LN's statistics */
        const float *z = t.Zb + i * f;
        float mu = 0.0f, var = 0.0f;
        for (int c = 0; c < f; c++) mu += z[c];
        mu /= fl;
        for (int c = 0; c < f; c++) var = fmaf(z[c] - mu, z[c] - mu, var);
        const float r2 = 1.0f / sqrtf(var / fl + TT_EPS);
        for (int c = 0; c < f; c++) t.xh2[i * f + c] = (z[c] - mu) * r2;
        t.r2[i] = r2;
    }
    __syncthreads();
}

/* ttt_fwd: grid B H, block 256. */
extern "C" __global__ void __launch_bounds__(256, 1) ttt_fwd(int B, int T, int D, int H, int K, const float *q,
                                                          const float *k, const float *v, const float *lr,
                                                          const float *tok, const float *cos, const float *sin,
                                                          const float *W1, const float *b1, const float *gamma,
                                                          const float *beta, float *out, float *Wsave,
                                                          float *bsave, float *scratch) {
    const int f = D / H, bh = blockIdx.x, b = bh / H, h = bh % H;
    const int nch = (T + K - 1) / K;
    const int64_t per = 3LL * f * f + 5LL * f + 14LL * K * f + 3LL * K * K + 8LL * K;
    const TTTScratch t = ttt_layout(scratch + bh * per, f, K);
    const float *gm = gamma + (int64_t)h * f, *bt = beta + (int64_t)h * f;
    for (int e = threadIdx.x; e < f * f; e += blockDim.x) t.W[e] = W1[(int64_t)h * f * f + e];
    for (int c = threadIdx.x; c < f; c += blockDim.x) t.bv[c] = b1[(int64_t)h * f + c];
    __syncthreads();
    for (int ch = 0; ch < nch; ch++) {
        const int s = ch * K, n = T - s < K ? T - s : K;
        float *ws = Wsave + ((int64_t)bh * nch + ch) * f * f, *bs = bsave + ((int64_t)bh * nch + ch) * f;
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) ws[e] = t.W[e];
        for (int c = threadIdx.x; c < f; c += blockDim.x) bs[c] = t.bv[c];
        ttt_load(t, q, k, v, lr, cos, sin, b, h, H, s, n, T, D, f);
        ttt_chunk_forward(t, tok, gm, bt, n, f, K);
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f, c = e % f;
            out[((int64_t)b * T + s + i) * D + (int64_t)h * f + c] = t.Q[e] + (t.xh2[e] * gm[c] + bt[c]);
        }
        const float tl = tok[n - 1];
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) { /* W <- W - Kx^T (e_last * G) */
            const int l = e / f, c = e % f;
            float u = 0.0f;
            for (int i = 0; i < n; i++) u = fmaf(t.Kx[i * f + l] * (tl * t.lrc[i]), t.G[i * f + c], u);
            t.W[e] -= u;
        }
        for (int c = threadIdx.x; c < f; c += blockDim.x) {
            float u = 0.0f;
            for (int i = 0; i < n; i++) u = fmaf(tl * t.lrc[i], t.G[i * f + c], u);
            t.bv[c] -= u;
        }
        __syncthreads();
    }
}

/* ttt_bwd: grid B H, block 256.  dmerged [B, T, D] -> dq, dk (before RoPE), dv [B, T, D],
 * dlr [B, H, T]; per block: dtok_r [B H, K], dW1_r [B H, f, f], db1_r, dgamma_r, dbeta_r [B H, f]. */
extern "C" __global__ void __launch_bounds__(256, 1) ttt_bwd(int B, int T, int D, int H, int K, const float *q,
                                                          const float *k, const float *v, const float *lr,
                                                          const float *tok, const float *cos, const float *sin,
                                                          const float *gamma, const float *beta, const float *Wsave,
                                                          const float *bsave, const float *dmerged, float *dq,
                                                          float *dk, float *dv, float *dlr, float *dtok_r,
                                                          float *dW1_r, float *db1_r, float *dgamma_r,
                                                          float *dbeta_r, float *scratch) {
    const int f = D / H, bh = blockIdx.x, b = bh / H, h = bh % H, hf = f / 2;
    const int nch = (T + K - 1) / K;
    const int64_t per = 3LL * f * f + 5LL * f + 14LL * K * f + 3LL * K * K + 8LL * K;
    const TTTScratch t = ttt_layout(scratch + bh * per, f, K);
    const float *gm = gamma + (int64_t)h * f, *bt = beta + (int64_t)h * f;
    const float fl = (float)f;
    for (int e = threadIdx.x; e < f * f; e += blockDim.x) t.dW[e] = 0.0f;
    for (int c = threadIdx.x; c < f; c += blockDim.x) t.db[c] = t.dgam[c] = t.dbet[c] = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) t.dtok[i] = 0.0f;
    __syncthreads();
    for (int ch = nch - 1; ch >= 0; ch--) {
        const int s = ch * K, n = T - s < K ? T - s : K;
        const float *ws = Wsave + ((int64_t)bh * nch + ch) * f * f, *bs = bsave + ((int64_t)bh * nch + ch) * f;
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) t.W[e] = ws[e];
        for (int c = threadIdx.x; c < f; c += blockDim.x) t.bv[c] = bs[c];
        ttt_load(t, q, k, v, lr, cos, sin, b, h, H, s, n, T, D, f);
        ttt_chunk_forward(t, tok, gm, bt, n, f, K);
        const float tl = tok[n - 1];
#define DOUT(i, c) dmerged[((int64_t)b * T + s + (i)) * D + (int64_t)h * f + (c)]
        /* out = Q + LN(Zb): dQ = dout, dZb through the LN, its dgamma/dbeta */
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float m1 = 0.0f, m2 = 0.0f;
            for (int c = 0; c < f; c++) {
                const float g2 = DOUT(i, c) * gm[c];
                m1 += g2;
                m2 = fmaf(g2, t.xh2[i * f + c], m2);
            }
            t.rowa[i] = m1 / fl;
            t.rowb[i] = m2 / fl;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f, c = e % f;
            const float d = DOUT(i, c);
            t.dZb[e] = t.r2[i] * (d * gm[c] - t.rowa[i] - t.xh2[e] * t.rowb[i]);
            t.dQ[e] = d;
        }
        for (int c = threadIdx.x; c < f; c += blockDim.x) {
            float sg = 0.0f, sb = 0.0f;
            for (int i = 0; i < n; i++) {
                sg = fmaf(DOUT(i, c), t.xh2[i * f + c], sg);
                sb += DOUT(i, c);
            }
            t.dgam[c] += sg;
            t.dbet[c] += sb;
        }
        __syncthreads();
        /* Zb = Q W - P G + b - Et G */
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) { /* dQ += dZb W^T */
            const int i = e / f, l = e % f;
            float u = 0.0f;
            for (int c = 0; c < f; c++) u = fmaf(t.dZb[i * f + c], t.W[l * f + c], u);
            t.dQ[e] += u;
        }
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) { /* dW2 = dW_new + Q^T dZb */
            const int l = e / f, c = e % f;
            float u = t.dW[e];
            for (int i = 0; i < n; i++) u = fmaf(t.Q[i * f + l], t.dZb[i * f + c], u);
            t.dW2[e] = u;
        }
        for (int e = threadIdx.x; e < n * n; e += blockDim.x) { /* dP = -(dZb G^T) (lower triangle) */
            const int i = e / n, j = e % n;
            float u = 0.0f;
            if (j <= i)
                for (int c = 0; c < f; c++) u = fmaf(t.dZb[i * f + c], t.G[j * f + c], u);
            t.dP[i * K + j] = -u;
        }
        for (int c = threadIdx.x; c < f; c += blockDim.x) {
            float u = t.db[c];
            for (int i = 0; i < n; i++) u += t.dZb[i * f + c];
            t.db2[c] = u;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) { /* dG = -(P + Et)^T dZb */
            const int j = e / f, c = e % f;
            float u = 0.0f;
            for (int i = j; i < n; i++) u = fmaf(tok[i] * t.lrc[j] * (t.A[i * K + j] + 1.0f), t.dZb[i * f + c], u);
            t.dG[e] = -u;
        }
        for (int e = threadIdx.x; e < n * n; e += blockDim.x) { /* dE = tril(dP + dP A); dA = dP Et (in dP) */
            const int i = e / n, j = e % n;
            const float dp = t.dP[i * K + j];
            t.dE[i * K + j] = j <= i ? dp + dp * t.A[i * K + j] : 0.0f;
            t.dP[i * K + j] = j <= i ? dp * (tok[i] * t.lrc[j]) : 0.0f;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f, l = e % f;
            float u = 0.0f; /* dQ += dA Kx */
            for (int j = 0; j <= i; j++) u = fmaf(t.dP[i * K + j], t.Kx[j * f + l], u);
            t.dQ[e] += u;
            float w = 0.0f; /* dKx = dA^T Q - H dW_new^T, H = e_last G */
            for (int r = i; r < n; r++) w = fmaf(t.dP[r * K + i], t.Q[r * f + l], w);
            float hsum = 0.0f;
            for (int c = 0; c < f; c++) hsum = fmaf(t.G[i * f + c], t.dW[l * f + c], hsum);
            t.dKx[e] = w - (tl * t.lrc[i]) * hsum;
            float dh = 0.0f; /* dH = -(Kx dW_new) - db_new (row i, column l as c) */
            for (int m = 0; m < f; m++) dh = fmaf(t.Kx[i * f + m], t.dW[m * f + l], dh);
            t.dH[e] = -dh - t.db[l];
        }
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) { /* de_last */
            float u = 0.0f;
            for (int c = 0; c < f; c++) u = fmaf(t.dH[i * f + c], t.G[i * f + c], u);
            t.rowa[i] = u;
        }
        __syncthreads();
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f;
            t.dG[e] = fmaf(tl * t.lrc[i], t.dH[e], t.dG[e]);
        }
        for (int j = threadIdx.x; j < n; j += blockDim.x) t.dE[(n - 1) * K + j] += t.rowa[j];
        __syncthreads();
        /* G = r1/f (f gxh - s1 - xh1 s2), gxh = gamma go, go = gamma xh1 + beta - V + Kx: one row per thread */
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            const float r1 = t.r1[i], s1 = t.s1[i], s2 = t.s2[i];
            float dr1 = 0.0f, ds1 = 0.0f, ds2 = 0.0f;
            for (int c = 0; c < f; c++) {
                const int e = i * f + c;
                const float u = t.dG[e] * (r1 / fl);
                dr1 = fmaf(t.dG[e], fl * t.gxh[e] - s1 - t.xh1[e] * s2, dr1);
                ds1 -= u;
                ds2 = fmaf(-u, t.xh1[e], ds2);
            }
            dr1 /= fl;
            float dr1t = dr1;
            for (int c = 0; c < f; c++) {
                const int e = i * f + c;
                const float u = t.dG[e] * (r1 / fl);
                const float dgxh = fl * u + ds1 + ds2 * t.xh1[e];
                float dxh1 = -s2 * u + ds2 * t.gxh[e];
                const float dgo = dgxh * gm[c];
                t.go[e] = dgxh * t.go[e] + dgo * t.xh1[e]; /* this row's dgamma terms */
                t.dH[e] = dgo;
                dxh1 += dgo * gm[c];
                t.gxh[e] = dxh1;
                dr1t = fmaf(dxh1, t.xh1[e] / r1, dr1t);
            }
            float mean = 0.0f;
            for (int c = 0; c < f; c++) {
                const int e = i * f + c;
                const float d1 = t.xh1[e] / r1;
                const float dd = t.gxh[e] * r1 + (-(r1 * r1 * r1) * dr1t) * d1 / fl;
                t.dZb[e] = dd;
                mean += dd;
            }
            mean /= fl;
            for (int c = 0; c < f; c++) t.dZb[i * f + c] -= mean; /* dZ1 */
        }
        __syncthreads();
        for (int c = threadIdx.x; c < f; c += blockDim.x) {
            float sg = 0.0f, sb = 0.0f;
            for (int i = 0; i < n; i++) {
                sg += t.go[i * f + c];
                sb += t.dH[i * f + c];
            }
            t.dgam[c] += sg;
            t.dbet[c] += sb;
        }
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f, c = e % f;
            dv[((int64_t)b * T + s + i) * D + (int64_t)h * f + c] = -t.dH[e];
            t.dKx[e] += t.dH[e];
        }
        __syncthreads();
        /* Z1 = Kx W + b */
        for (int e = threadIdx.x; e < n * f; e += blockDim.x) {
            const int i = e / f, l = e % f;
            float u = 0.0f;
            for (int c = 0; c < f; c++) u = fmaf(t.dZb[i * f + c], t.W[l * f + c], u);
            t.dKx[e] += u;
        }
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) {
            const int l = e / f, c = e % f;
            float u = 0.0f;
            for (int i = 0; i < n; i++) u = fmaf(t.Kx[i * f + l], t.dZb[i * f + c], u);
            t.dW2[e] += u;
        }
        for (int c = threadIdx.x; c < f; c += blockDim.x) {
            float u = 0.0f;
            for (int i = 0; i < n; i++) u += t.dZb[i * f + c];
            t.db2[c] += u;
        }
        /* E[i, j] = tok[i] lr[j]: dtok, dlr */
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float u = 0.0f;
            for (int j = 0; j < n; j++) u = fmaf(t.dE[i * K + j], t.lrc[j], u);
            t.dtok[i] += u;
        }
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            float u = 0.0f;
            for (int i = 0; i < n; i++) u = fmaf(t.dE[i * K + j], tok[i], u);
            dlr[((int64_t)b * H + h) * T + s + j] = u;
        }
        __syncthreads();
        /* dq, dk before RoPE: rotate back by -angle */
        for (int e = threadIdx.x; e < n * hf; e += blockDim.x) {
            const int i = e / hf, j = e % hf;
            const int64_t base = ((int64_t)b * T + s + i) * D + (int64_t)h * f + 2 * j;
            const float c = cos[i * hf + j], sn = sin[i * hf + j];
            const float qe = t.dQ[i * f + 2 * j], qo = t.dQ[i * f + 2 * j + 1];
            const float ke = t.dKx[i * f + 2 * j], ko = t.dKx[i * f + 2 * j + 1];
            dq[base] = qe * c + qo * sn;
            dq[base + 1] = -qe * sn + qo * c;
            dk[base] = ke * c + ko * sn;
            dk[base + 1] = -ke * sn + ko * c;
        }
        for (int e = threadIdx.x; e < f * f; e += blockDim.x) t.dW[e] = t.dW2[e];
        for (int c = threadIdx.x; c < f; c += blockDim.x) t.db[c] = t.db2[c];
        __syncthreads();
#undef DOUT
    }
    for (int e = threadIdx.x; e < f * f; e += blockDim.x) dW1_r[(int64_t)bh * f * f + e] = t.dW[e];
    for (int c = threadIdx.x; c < f; c += blockDim.x) {
        db1_r[(int64_t)bh * f + c] = t.db[c];
        dgamma_r[(int64_t)bh * f + c] = t.dgam[c];
        dbeta_r[(int64_t)bh * f + c] = t.dbet[c];
    }
    for (int i = threadIdx.x; i < K; i += blockDim.x) dtok_r[(int64_t)bh * K + i] = t.dtok[i];
}
