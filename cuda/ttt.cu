/*
 * ttt.cu -- the TTT-Linear inner loop of inference: tokens read one by one into the state, the
 * dual form's values (bitttt/backend/numpy.py ttt_prefill is the spec).
 *
 * State of one layer: W0 [H, f, f], b0 [H, f] (the inner model at the start of the current
 * mini-batch), Kb, Gb [H, Kmb, f] (keys and lr-weighted inner gradients of the tokens read in
 * it), Sb [H, f] (the sum of those gradients).  For token i at mini-batch position p:
 *     lr  = lr_scale sigmoid(x_i . lr_w[h] + lr_b[h])
 *     G   = d/dZ1 of 1/2 ||LN(k W0 + b0) - (v - k)||^2            (inner LN gamma, beta, 1e-6)
 *     Kb[p] = k, Gb[p] = lr G, Sb += Gb[p]
 *     out = q + LN(q W0 - tok[p] sum_{j<=p} (q . Kb[j]) Gb[j] + b0 - tok[p] Sb)
 *     when p == Kmb - 1: W0 -= tok[p] Kb^T Gb, b0 -= tok[p] Sb, the sums are cleared.
 * One block per head reads all T tokens in order (the heads are independent).
 */
#include "common.cuh"

#define TTT_MAXF 256
#define TTT_MAXK 64
#define TTT_EPS 1e-6f

/* ttt_step: grid H, block 128.  q, k (after RoPE), v, x [T, D]; lr_w [H, D]; lr_b [H];
 * tok [Kmb]; gamma, beta [H, f]; the state (updated in place); out [T, D]. */
extern "C" __global__ void __launch_bounds__(128, 1) ttt_step(int T, int D, int f, int Kmb, int pos,
                                                           const float *__restrict__ q,
                                                           const float *__restrict__ k,
                                                           const float *__restrict__ v,
                                                           const float *__restrict__ x,
                                                           const float *__restrict__ lr_w,
                                                           const float *__restrict__ lr_b, float lr_scale,
                                                           const float *__restrict__ tok,
                                                           const float *__restrict__ gamma,
                                                           const float *__restrict__ beta, float *W0, float *b0,
                                                           float *Kb, float *Gb, float *Sb,
                                                           float *__restrict__ out) {
    __shared__ float sh[33];
    __shared__ float sq[TTT_MAXF], sk[TTT_MAXF], sz[TTT_MAXF], sqk[TTT_MAXK];
    const int h = blockIdx.x, nt = blockDim.x;
    const float *gm = gamma + (int64_t)h * f, *bt = beta + (int64_t)h * f;
    float *W = W0 + (int64_t)h * f * f, *b = b0 + (int64_t)h * f;
    float *Kh = Kb + (int64_t)h * Kmb * f, *Gh = Gb + (int64_t)h * Kmb * f, *S = Sb + (int64_t)h * f;
    const float fl = (float)f, inv_f = __frcp_rn(fl); /* no IEEE division in the loop: it spills */
    for (int i = 0; i < T; i++) {
        const int p = (pos + i) % Kmb;
        const int64_t row = (int64_t)i * D + (int64_t)h * f;
        float dot = 0.0f;
        for (int c = threadIdx.x; c < D; c += nt) dot = fmaf(x[(int64_t)i * D + c], lr_w[(int64_t)h * D + c], dot);
        dot = block_sum(dot, sh);
        const float lr = lr_scale * sigmoidf_(dot + lr_b[h]);
        for (int c = threadIdx.x; c < f; c += nt) {
            sq[c] = q[row + c];
            sk[c] = k[row + c];
        }
        __syncthreads();
        /* Z1 = k W0 + b0 and its LayerNorm statistics */
        float s = 0.0f;
        for (int c = threadIdx.x; c < f; c += nt) {
            float z = b[c];
            for (int l = 0; l < f; l++) z = fmaf(sk[l], W[(int64_t)l * f + c], z);
            sz[c] = z;
            s += z;
        }
        const float mu = block_sum(s, sh) * inv_f;
        float vs = 0.0f;
        for (int c = threadIdx.x; c < f; c += nt) vs = fmaf(sz[c] - mu, sz[c] - mu, vs);
        const float r1 = rsqrtf(block_sum(vs, sh) * inv_f + TTT_EPS);
        float s1 = 0.0f, s2 = 0.0f;
        for (int c = threadIdx.x; c < f; c += nt) {
            const float xh = (sz[c] - mu) * r1;
            const float go = gm[c] * xh + bt[c] - (v[row + c] - sk[c]);
            const float gxh = go * gm[c];
            s1 += gxh;
            s2 = fmaf(gxh, xh, s2);
        }
        s1 = block_sum(s1, sh);
        s2 = block_sum(s2, sh);
        for (int c = threadIdx.x; c < f; c += nt) {
            const float xh = (sz[c] - mu) * r1;
            const float go = gm[c] * xh + bt[c] - (v[row + c] - sk[c]);
            const float gxh = go * gm[c];
            const float G = (r1 * inv_f) * (fl * gxh - s1 - xh * s2);
            const float g = lr * G;
            Kh[(int64_t)p * f + c] = sk[c];
            Gh[(int64_t)p * f + c] = g;
            S[c] += g;
        }
        __syncthreads();
        /* q . Kb[j] for the tokens of this mini-batch read so far */
        for (int j = 0; j <= p; j++) {
            float d = 0.0f;
            for (int c = threadIdx.x; c < f; c += nt) d = fmaf(sq[c], Kh[(int64_t)j * f + c], d);
            d = block_sum(d, sh);
            if (threadIdx.x == 0) sqk[j] = d;
        }
        __syncthreads();
        const float tp = tok[p];
        s = 0.0f;
        for (int c = threadIdx.x; c < f; c += nt) {
            float z = 0.0f;
            for (int l = 0; l < f; l++) z = fmaf(sq[l], W[(int64_t)l * f + c], z);
            float u = 0.0f;
            for (int j = 0; j <= p; j++) u = fmaf(sqk[j], Gh[(int64_t)j * f + c], u);
            z = z - tp * u + (b[c] - tp * S[c]);
            sz[c] = z;
            s += z;
        }
        const float mu2 = block_sum(s, sh) * inv_f;
        vs = 0.0f;
        for (int c = threadIdx.x; c < f; c += nt) vs = fmaf(sz[c] - mu2, sz[c] - mu2, vs);
        const float r2 = rsqrtf(block_sum(vs, sh) * inv_f + TTT_EPS);
        for (int c = threadIdx.x; c < f; c += nt) out[row + c] = sq[c] + ((sz[c] - mu2) * r2 * gm[c] + bt[c]);
        if (p == Kmb - 1) { /* the mini-batch is full: its update becomes the state */
            for (int e = threadIdx.x; e < f * f; e += nt) {
                const int l = e / f, c = e % f;
                float u = 0.0f;
                for (int j = 0; j < Kmb; j++) u = fmaf(Kh[(int64_t)j * f + l], Gh[(int64_t)j * f + c], u);
                W[e] -= tp * u;
            }
            __syncthreads();
            for (int c = threadIdx.x; c < f; c += nt) {
                b[c] -= tp * S[c];
                S[c] = 0.0f;
            }
            for (int e = threadIdx.x; e < Kmb * f; e += nt) {
                Kh[e] = 0.0f;
                Gh[e] = 0.0f;
            }
        }
        __syncthreads();
    }
}
