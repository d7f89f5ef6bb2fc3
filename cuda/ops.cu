/*
 * ops.cu -- the row-wise and element-wise float32 ops of a training step: RMSNorm and LayerNorm
 * (forward, backward), the SwiGLU gate, the sigmoid, RoPE, the embedding gather and its
 * scatter-add, softmax cross-entropy fused with its gradient, AdamW, the sum of squares for
 * clipping, residual adds.  Meanings and shapes are those of bitttt/backend/numpy.py.
 *
 * Row kernels: one block of 256 threads per row.  Parameter gradients summed over rows (dw, db)
 * are reduced per slab of COL_ROWS rows (col_partial) and the slabs added in order
 * (col_finish): no atomics, the same bits on every run.
 */
#include "common.cuh"

#define COL_ROWS 64

/* rmsnorm_fwd: r[m] = 1 / sqrt(mean(x_m^2) + eps), y = x r w.  grid M, block 256. */
extern "C" __global__ void __launch_bounds__(256) rmsnorm_fwd(const float *__restrict__ x,
                                                              const float *__restrict__ w, int D, float eps,
                                                              float *__restrict__ y, float *__restrict__ r) {
    __shared__ float sh[33];
    const float *xr = x + (int64_t)blockIdx.x * D;
    float ss = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) ss = fmaf(xr[k], xr[k], ss);
    ss = block_sum(ss, sh);
    const float rr = 1.0f / sqrtf(ss / (float)D + eps);
    float *yr = y + (int64_t)blockIdx.x * D;
    for (int k = threadIdx.x; k < D; k += blockDim.x) yr[k] = (xr[k] * rr) * w[k];
    if (threadIdx.x == 0) r[blockIdx.x] = rr;
}

/* rmsnorm_bwd: xn = x r, g = dy w: dx = r (g - xn mean(g xn)).  grid M, block 256. */
extern "C" __global__ void __launch_bounds__(256) rmsnorm_bwd(const float *__restrict__ dy,
                                                              const float *__restrict__ x,
                                                              const float *__restrict__ w,
                                                              const float *__restrict__ r, int D,
                                                              float *__restrict__ dx) {
    __shared__ float sh[33];
    const int64_t o = (int64_t)blockIdx.x * D;
    const float rr = r[blockIdx.x];
    float s = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) s = fmaf(dy[o + k] * w[k], x[o + k] * rr, s);
    s = block_sum(s, sh) / (float)D;
    for (int k = threadIdx.x; k < D; k += blockDim.x)
        dx[o + k] = rr * (dy[o + k] * w[k] - (x[o + k] * rr) * s);
}

/* layernorm_fwd: xh = (x - mean) r, r = 1 / sqrt(var + eps), y = xh w + b.  grid M, block 256. */
extern "C" __global__ void __launch_bounds__(256) layernorm_fwd(const float *__restrict__ x,
                                                                const float *__restrict__ w,
                                                                const float *__restrict__ b, int D, float eps,
                                                                float *__restrict__ y, float *__restrict__ xh,
                                                                float *__restrict__ r) {
    __shared__ float sh[33];
    const int64_t o = (int64_t)blockIdx.x * D;
    float s = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) s += x[o + k];
    const float mu = block_sum(s, sh) / (float)D;
    float v = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        const float d = x[o + k] - mu;
        v = fmaf(d, d, v);
    }
    const float rr = 1.0f / sqrtf(block_sum(v, sh) / (float)D + eps);
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        const float h = (x[o + k] - mu) * rr;
        xh[o + k] = h;
        y[o + k] = h * w[k] + b[k];
    }
    if (threadIdx.x == 0) r[blockIdx.x] = rr;
}

/* layernorm_bwd: g = dy w: dx = r (g - mean(g) - xh mean(g xh)).  grid M, block 256. */
extern "C" __global__ void __launch_bounds__(256) layernorm_bwd(const float *__restrict__ dy,
                                                                const float *__restrict__ xh,
                                                                const float *__restrict__ w,
                                                                const float *__restrict__ r, int D,
                                                                float *__restrict__ dx) {
    __shared__ float sh[33];
    const int64_t o = (int64_t)blockIdx.x * D;
    float s1 = 0.0f, s2 = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        const float g = dy[o + k] * w[k];
        s1 += g;
        s2 = fmaf(g, xh[o + k], s2);
    }
    s1 = block_sum(s1, sh) / (float)D;
    s2 = block_sum(s2, sh) / (float)D;
    const float rr = r[blockIdx.x];
    for (int k = threadIdx.x; k < D; k += blockDim.x)
        dx[o + k] = rr * (dy[o + k] * w[k] - s1 - xh[o + k] * s2);
}

/* col_partial: part_ab[slab, d] = sum over the slab's rows of a[m, d] * b[m, d] * (rs ? rs[m] : 1)
 * (b == 0: of a alone), part_a[slab, d] = sum of a[m, d] when part_a != 0.
 * grid (ceil(D / 256), ceil(M / COL_ROWS)), block 256. */
extern "C" __global__ void __launch_bounds__(256) col_partial(const float *__restrict__ a,
                                                              const float *__restrict__ b,
                                                              const float *__restrict__ rs, int M, int D,
                                                              float *__restrict__ part_ab,
                                                              float *__restrict__ part_a) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    const int m0 = blockIdx.y * COL_ROWS, m1 = m0 + COL_ROWS < M ? m0 + COL_ROWS : M;
    float sab = 0.0f, sa = 0.0f;
    for (int m = m0; m < m1; m++) {
        const float av = a[(int64_t)m * D + d];
        float bv = b ? b[(int64_t)m * D + d] : 1.0f;
        if (rs) bv *= rs[m];
        sab = fmaf(av, bv, sab);
        sa += av;
    }
    part_ab[(int64_t)blockIdx.y * D + d] = sab;
    if (part_a) part_a[(int64_t)blockIdx.y * D + d] = sa;
}

/* col_finish: out[d] = sum over slabs s in order of part[s, d].  grid ceil(D / 256), block 256. */
extern "C" __global__ void __launch_bounds__(256) col_finish(const float *__restrict__ part, int slabs, int D,
                                                             float *__restrict__ out) {
    const int d = blockIdx.x * blockDim.x + threadIdx.x;
    if (d >= D) return;
    float s = 0.0f;
    for (int i = 0; i < slabs; i++) s += part[(int64_t)i * D + d];
    out[d] = s;
}

/* swiglu_fwd: sg = sigmoid(g), h = g sg u, over n elements.  grid ceil(n / 256), block 256. */
extern "C" __global__ void __launch_bounds__(256) swiglu_fwd(const float *__restrict__ g,
                                                             const float *__restrict__ u, int64_t n,
                                                             float *__restrict__ h, float *__restrict__ sg) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float s = sigmoidf_(g[i]);
    sg[i] = s;
    h[i] = g[i] * s * u[i];
}

/* swiglu_bwd: du = dh g sg, dg = dh u sg (1 + g (1 - sg)). */
extern "C" __global__ void __launch_bounds__(256) swiglu_bwd(const float *__restrict__ dh,
                                                             const float *__restrict__ g,
                                                             const float *__restrict__ u,
                                                             const float *__restrict__ sg, int64_t n,
                                                             float *__restrict__ dg, float *__restrict__ du) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float s = sg[i];
    du[i] = dh[i] * g[i] * s;
    dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
}

/* sigmoid over n elements. */
extern "C" __global__ void __launch_bounds__(256) sigmoid_f(const float *__restrict__ z, int64_t n,
                                                            float *__restrict__ out) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = sigmoidf_(z[i]);
}

/* add: out = a + b over n elements (out may be a or b). */
extern "C" __global__ void __launch_bounds__(256) add_f(const float *a, const float *b, int64_t n, float *out) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

/* rope: pairs (x[2j], x[2j+1]) rotated by the angle of cos/sin [pairs] (tables already broadcast
 * to one entry per pair), by -angle when inverse.  n pairs; grid ceil(n / 256). */
extern "C" __global__ void __launch_bounds__(256) rope_f(const float *__restrict__ x,
                                                         const float *__restrict__ c,
                                                         const float *__restrict__ s, int64_t n, int inverse,
                                                         float *__restrict__ y) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float xe = x[2 * i], xo = x[2 * i + 1], cc = c[i], ss = inverse ? -s[i] : s[i];
    y[2 * i] = xe * cc - xo * ss;
    y[2 * i + 1] = xe * ss + xo * cc;
}

/* embed_fwd: out[i, :] = w[ids[i], :], n ids of D floats.  grid n, block 256. */
extern "C" __global__ void __launch_bounds__(256) embed_fwd(const float *__restrict__ w,
                                                            const int64_t *__restrict__ ids, int D,
                                                            float *__restrict__ out) {
    const int64_t src = ids[blockIdx.x] * (int64_t)D, dst = (int64_t)blockIdx.x * D;
    for (int k = threadIdx.x; k < D; k += blockDim.x) out[dst + k] = w[src + k];
}

/* embed_bwd: dw[ids[i], :] += dx[i, :] (repeated ids accumulate; dw zeroed first).  grid n. */
extern "C" __global__ void __launch_bounds__(256) embed_bwd(const float *__restrict__ dx,
                                                            const int64_t *__restrict__ ids, int D,
                                                            float *__restrict__ dw) {
    const int64_t dst = ids[blockIdx.x] * (int64_t)D, src = (int64_t)blockIdx.x * D;
    for (int k = threadIdx.x; k < D; k += blockDim.x) atomicAdd(dw + dst + k, dx[src + k]);
}

/* softmax_xent: per row m, loss[m] = wt[m] (logsumexp(l_m) - l_m[t_m]) in double and
 * d[m] = wt[m] (softmax(l_m) - onehot(t_m)) (d may be l).  grid M, block 256. */
extern "C" __global__ void __launch_bounds__(256) softmax_xent(const float *l, const int64_t *__restrict__ t,
                                                               const float *__restrict__ wt, int V, float *d,
                                                               double *__restrict__ loss) {
    __shared__ float sh[33];
    const int64_t o = (int64_t)blockIdx.x * V;
    float mx = -3.402823466e38f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) mx = fmaxf(mx, l[o + c]);
    mx = block_max(mx, sh);
    const float lt = l[o + t[blockIdx.x]];
    float se = 0.0f;
    for (int c = threadIdx.x; c < V; c += blockDim.x) {
        const float e = expf(l[o + c] - mx);
        d[o + c] = e;
        se += e;
    }
    se = block_sum(se, sh);
    const float k = wt[blockIdx.x] / se;
    for (int c = threadIdx.x; c < V; c += blockDim.x) d[o + c] = d[o + c] * k;
    __syncthreads();
    if (threadIdx.x == 0) {
        d[o + t[blockIdx.x]] -= wt[blockIdx.x];
        loss[blockIdx.x] = (double)wt[blockIdx.x] * ((double)logf(se) + (double)mx - (double)lt);
    }
}

/* adamw: one AdamW update in place over n elements (g scaled by gscale first). */
extern "C" __global__ void __launch_bounds__(256) adamw_f(float *__restrict__ p, const float *__restrict__ g,
                                                          float *__restrict__ m, float *__restrict__ v, int64_t n,
                                                          float lr, float beta1, float beta2, float eps, float wd,
                                                          float bc1, float bc2, float gscale) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float gg = g[i] * gscale;
    const float mi = beta1 * m[i] + (1.0f - beta1) * gg;
    const float vi = beta2 * v[i] + (1.0f - beta2) * (gg * gg);
    m[i] = mi;
    v[i] = vi;
    const float upd = (mi * (1.0f / bc1)) / (sqrtf(vi * (1.0f / bc2)) + eps);
    p[i] = p[i] - lr * (wd * p[i] + upd);
}

/* sumsq_partial: part[block] = sum of x^2 over the block's 256 * 16 elements, in double.
 * grid ceil(n / 4096), block 256; the host adds the partial sums in order. */
extern "C" __global__ void __launch_bounds__(256) sumsq_partial(const float *__restrict__ x, int64_t n,
                                                                double *__restrict__ part) {
    __shared__ double sh[33];
    const int64_t base = (int64_t)blockIdx.x * 4096;
    double s = 0.0;
    for (int i = threadIdx.x; i < 4096; i += 256) {
        const int64_t j = base + i;
        if (j < n) s += (double)x[j] * (double)x[j];
    }
    s = block_sum_double(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* gather_rows: dst[r, c] = src[r * stride + offset + c] for r < rows, c < n (a strided slice made
 * contiguous: the decoder copies back one row per head of the TTT state).  grid ceil(rows n / 256). */
extern "C" __global__ void __launch_bounds__(256) gather_rows(const float *__restrict__ src, int rows, int64_t stride,
                                                              int64_t offset, int n, float *__restrict__ dst) {
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= (int64_t)rows * n) return;
    const int64_t r = e / n, c = e % n;
    dst[e] = src[r * stride + offset + c];
}
