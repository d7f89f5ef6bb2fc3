/*
 * ternary.cu -- W1.58A8: per-token int8 activation quantization and the int8 x ternary (and
 * int8 x int8, the LM head) products with dp4a.  Exact int32 sums: the results equal the cpu
 * backend's bit for bit (y = (float)dot * (s / a[m]), one IEEE division and one product).
 *
 * Activations: codes q [M, ldq] int8 with ldq = K rounded up to 256 (zeros past K), scales a [M]
 * (a = 127 / max(max|x|, 1e-5)), row sums of the codes sums [M] (for the w + 1 offset).
 */
#include "common.cuh"

/* quantize_act: grid M, block 256.  x [M, K] float32 -> q [M, ldq], a [M], sums [M]. */
extern "C" __global__ void __launch_bounds__(256) quantize_act(const float *__restrict__ x, int K, int ldq,
                                                               int8_t *__restrict__ q, float *__restrict__ a,
                                                               int *__restrict__ sums) {
    __shared__ float shf[33];
    __shared__ int shi[33];
    const int64_t m = blockIdx.x;
    const float *row = x + m * K;
    float amax = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(row[k]));
    amax = block_max(amax, shf);
    const float scale = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    int s = 0;
    int8_t *dst = q + m * ldq;
    for (int k = threadIdx.x; k < ldq; k += blockDim.x) {
        int c = 0;
        if (k < K) {
            float r = rintf(row[k] * scale);
            r = r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r);
            c = (int)r;
        }
        dst[k] = (int8_t)c;
        s += c;
    }
    s = block_sum_int(s, shi);
    if (threadIdx.x == 0) {
        a[m] = scale;
        sums[m] = s;
    }
}

/* gemv_i8: one warp per output row, 8 rows per block of 256; grid (ceil(N / 8), M).
 * codes [N, stride] bytes (stride = ldq / 4), q [M, ldq], y[m * ldy + n].  Row n has the scale
 * s[n / rows_per_scale]: several matrices stacked (q, k and v; gate and up) run as one launch. */
extern "C" __global__ void __launch_bounds__(256) gemv_i8(const uint8_t *__restrict__ codes, int N, int ldq,
                                                          const float *__restrict__ s, int rows_per_scale,
                                                          const int8_t *__restrict__ q,
                                                          const int *__restrict__ sums,
                                                          const float *__restrict__ a, float *__restrict__ y,
                                                          int ldy) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    const int64_t m = blockIdx.y;
    if (n >= N) return; /* whole warps leave together: no shuffle is divergent */
    const int stride = ldq >> 2;
    const uint4 *w = (const uint4 *)(codes + (int64_t)n * stride);
    const int4 *xr = (const int4 *)(q + m * ldq);
    const int chunks = stride >> 4; /* 16-byte chunks of codes */
    const float scale = s[n / rows_per_scale] / a[m]; /* before the loop: the division's slow path */
    int acc = 0;
    /* Plane p of a code word, masked in place (w & 0x03030303 << 2p), is 4^p times its codes: one AND
     * per word and plane instead of a shift and an AND; dp4a.u32.s32 takes the unsigned bytes (up to
     * 128 for plane 3).  Each plane sums into its own register, a multiple of 4^p, shifted back
     * exactly once per chunk. */
    for (int c = lane; c < chunks; c += 32) {
        const uint4 wv = __ldg(w + c);
        const int4 *xp = xr + (c >> 2) * 16 + (c & 3); /* plane 0's 16 activations; plane p at + 4p */
        int ap[4];
#pragma unroll
        for (int p = 0; p < 4; p++) {
            const uint32_t mask = 0x03030303u << (2 * p);
            const int4 xv = __ldg(xp + 4 * p);
            int a = bt_dp4a_us(wv.x & mask, xv.x, 0);
            a = bt_dp4a_us(wv.y & mask, xv.y, a);
            a = bt_dp4a_us(wv.z & mask, xv.z, a);
            ap[p] = bt_dp4a_us(wv.w & mask, xv.w, a);
        }
        acc += ap[0] + (ap[1] >> 2) + (ap[2] >> 4) + (ap[3] >> 6);
    }
    acc = warp_sum_int(acc);
    if (lane == 0) y[m * ldy + n] = (float)(acc - sums[m]) * scale;
}

/* gemv_s8: the int8 LM head, one warp per row: W [N, ldq] int8 (zero past K), scales ws [N];
 * y[m * ldy + n] = (float)dot(W_n, q_m) * (ws[n] / a[m]).  grid (ceil(N / 8), M). */
extern "C" __global__ void __launch_bounds__(256) gemv_s8(const int8_t *__restrict__ W, int N, int ldq,
                                                          const float *__restrict__ ws,
                                                          const int8_t *__restrict__ q,
                                                          const float *__restrict__ a, float *__restrict__ y,
                                                          int ldy) {
    const int lane = threadIdx.x & 31;
    const int n = blockIdx.x * 8 + (threadIdx.x >> 5);
    const int64_t m = blockIdx.y;
    if (n >= N) return;
    const int4 *w = (const int4 *)(W + (int64_t)n * ldq);
    const int4 *xr = (const int4 *)(q + m * ldq);
    const int chunks = ldq >> 4; /* 16-byte chunks */
    const float scale = ws[n] / a[m]; /* before the loop: the IEEE division's slow path spills inside it */
    int acc = 0;
    for (int c = lane; c < chunks; c += 32) {
        const int4 wv = __ldg(w + c), xv = __ldg(xr + c);
        acc = bt_dp4a(wv.x, xv.x, acc);
        acc = bt_dp4a(wv.y, xv.y, acc);
        acc = bt_dp4a(wv.z, xv.z, acc);
        acc = bt_dp4a(wv.w, xv.w, acc);
    }
    acc = warp_sum_int(acc);
    if (lane == 0) y[m * ldy + n] = (float)acc * scale;
}

/* Tiled int8 GEMM, 64 rows (n) x 64 tokens (m) per block of 256 threads, 4 x 4 outputs each; one
 * 256-weight block of K per step in shared memory as 64 words of 4 codes (or int8 weights). */
#define TG 64
template <bool TERNARY>
__device__ __forceinline__ void gemm_tile_i8(const uint8_t *__restrict__ Wb, int N, int M, int ldq,
                                             const float *__restrict__ scales, const int8_t *__restrict__ q,
                                             const int *__restrict__ sums, const float *__restrict__ a,
                                             float *__restrict__ y, int ldy) {
    __shared__ uint32_t Ws[TG][TG + 1];
    __shared__ int Xs[TG][TG + 1];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int n0 = blockIdx.x * TG, m0 = blockIdx.y * TG;
    const int nblk = ldq / BT_BLOCK;
    const int64_t wpitch = TERNARY ? ldq / 4 : ldq; /* bytes per weight row */
    int acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0;
    for (int b = 0; b < nblk; b++) {
        for (int e = threadIdx.x; e < TG * TG; e += 256) {
            const int r = e >> 6, wd = e & 63;
            uint32_t wv = 0;
            if (n0 + r < N) {
                const uint8_t *row = Wb + (int64_t)(n0 + r) * wpitch;
                if (TERNARY)
                    wv = (((const uint32_t *)(row + b * BT_BLOCK_BYTES))[wd & 15] >> (2 * (wd >> 4))) & 0x03030303u;
                else
                    wv = ((const uint32_t *)(row + b * BT_BLOCK))[wd];
            }
            Ws[r][wd] = wv;
            int xv = 0;
            if (m0 + r < M) xv = ((const int *)(q + (int64_t)(m0 + r) * ldq + b * BT_BLOCK))[wd];
            Xs[r][wd] = xv;
        }
        __syncthreads();
#pragma unroll 4
        for (int wd = 0; wd < TG; wd++) {
            int wv[4], xv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) wv[i] = (int)Ws[tx + 16 * i][wd];
#pragma unroll
            for (int j = 0; j < 4; j++) xv[j] = Xs[ty + 16 * j][wd];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = bt_dp4a(wv[i], xv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int m = m0 + ty + 16 * j;
        if (m >= M) continue;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int n = n0 + tx + 16 * i;
            if (n >= N) continue;
            if (TERNARY)
                y[(int64_t)m * ldy + n] = (float)(acc[i][j] - sums[m]) * (scales[0] / a[m]);
            else
                y[(int64_t)m * ldy + n] = (float)acc[i][j] * (scales[n] / a[m]);
        }
    }
}

/* gemm_i8: y [M, N] = Qa(x) Qw(W)^T, grid (ceil(N / 64), ceil(M / 64)), block 256.
 * s: a pointer to the matrix scale (one float). */
extern "C" __global__ void __launch_bounds__(256) gemm_i8(const uint8_t *__restrict__ codes, int N, int M, int ldq,
                                                          const float *__restrict__ s, const int8_t *__restrict__ q,
                                                          const int *__restrict__ sums,
                                                          const float *__restrict__ a, float *__restrict__ y,
                                                          int ldy) {
    gemm_tile_i8<true>(codes, N, M, ldq, s, q, sums, a, y, ldy);
}

/* gemm_s8: the int8 LM head for many tokens, grid (ceil(N / 64), ceil(M / 64)), block 256. */
extern "C" __global__ void __launch_bounds__(256) gemm_s8(const int8_t *__restrict__ W, int N, int M, int ldq,
                                                          const float *__restrict__ ws, const int8_t *__restrict__ q,
                                                          const float *__restrict__ a, float *__restrict__ y,
                                                          int ldy) {
    gemm_tile_i8<false>((const uint8_t *)W, N, M, ldq, ws, q, (const int *)0, a, y, ldy);
}

/* -- fused row kernels of decoding: a row op and the quantization of its result, one launch ------- */

/* Quantize the row y [K] held in `buf` (shared or global, written by this block) into q [ldq],
 * a [1], sums [1], exactly as quantize_act does. */
__device__ __forceinline__ void quantize_row(const float *y, int K, int ldq, int8_t *q, float *a, int *sums,
                                             float *shf, int *shi) {
    float amax = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(y[k]));
    amax = block_max(amax, shf);
    const float scale = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
    int s = 0;
    for (int k = threadIdx.x; k < ldq; k += blockDim.x) {
        int c = 0;
        if (k < K) {
            float r = rintf(y[k] * scale);
            r = r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r);
            c = (int)r;
        }
        q[k] = (int8_t)c;
        s += c;
    }
    s = block_sum_int(s, shi);
    if (threadIdx.x == 0) {
        a[0] = scale;
        sums[0] = s;
    }
}

/* add_rmsnorm_quant: one row, grid 1, block 256.  h = x + d (d may be 0: h = x), written to h_out
 * when given (it may be x); y = h / rms(h) * w written to y (the row the codes are made from);
 * then y quantized into q, a, sums. */
extern "C" __global__ void __launch_bounds__(256) add_rmsnorm_quant(const float *x, const float *d, float *h_out,
                                                                    const float *__restrict__ w, int D, float eps,
                                                                    float *y, int ldq, int8_t *__restrict__ q,
                                                                    float *__restrict__ a, int *__restrict__ sums) {
    __shared__ float shf[33];
    __shared__ int shi[33];
    float ss = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) {
        const float h = d ? x[k] + d[k] : x[k];
        if (h_out) h_out[k] = h;
        ss = fmaf(h, h, ss);
    }
    ss = block_sum(ss, shf);
    const float rr = 1.0f / sqrtf(ss / (float)D + eps);
    for (int k = threadIdx.x; k < D; k += blockDim.x) { /* h_out may be x: read back what this thread wrote */
        const float h = h_out ? h_out[k] : (d ? x[k] + d[k] : x[k]);
        y[k] = (h * rr) * w[k];
    }
    __syncthreads();
    quantize_row(y, D, ldq, q, a, sums, shf, shi);
}

/* layernorm_quant: one row, grid 1, block 256: y = LN(x) w + b (into y), then quantized. */
extern "C" __global__ void __launch_bounds__(256) layernorm_quant(const float *__restrict__ x,
                                                                  const float *__restrict__ w,
                                                                  const float *__restrict__ b, int D, float eps,
                                                                  float *y, int ldq, int8_t *__restrict__ q,
                                                                  float *__restrict__ a, int *__restrict__ sums) {
    __shared__ float shf[33];
    __shared__ int shi[33];
    float s = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) s += x[k];
    const float mu = block_sum(s, shf) / (float)D;
    float v = 0.0f;
    for (int k = threadIdx.x; k < D; k += blockDim.x) v = fmaf(x[k] - mu, x[k] - mu, v);
    const float rr = 1.0f / sqrtf(block_sum(v, shf) / (float)D + eps);
    for (int k = threadIdx.x; k < D; k += blockDim.x) y[k] = ((x[k] - mu) * rr) * w[k] + b[k];
    __syncthreads();
    quantize_row(y, D, ldq, q, a, sums, shf, shi);
}

/* swiglu_quant: one row, grid 1, block 256: h = silu(g) u for g = gu[0..I), u = gu[I..2I) (into
 * h), then quantized. */
extern "C" __global__ void __launch_bounds__(256) swiglu_quant(const float *__restrict__ gu, int I, float *h,
                                                               int ldq, int8_t *__restrict__ q,
                                                               float *__restrict__ a, int *__restrict__ sums) {
    __shared__ float shf[33];
    __shared__ int shi[33];
    for (int k = threadIdx.x; k < I; k += blockDim.x) {
        const float g = gu[k];
        h[k] = g * sigmoidf_(g) * gu[I + k];
    }
    __syncthreads();
    quantize_row(h, I, ldq, q, a, sums, shf, shi);
}
