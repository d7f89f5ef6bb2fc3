/*
 * gemm.cu -- float32 products: the dense GEMM (LM head, the TTT gate, float models, weight
 * gradients of the head), the BitLinear backward's dX = dY (s w) straight from the packed codes
 * and dW = dY^T Qa(x) straight from the int8 activation codes.
 *
 * One tiled kernel body: C [M, N] = alpha * sum_p A(m, p) B(p, n), 64 x 64 outputs per block of
 * 256 threads (4 x 4 each), 16 values of p per step through shared memory; each output is summed
 * in increasing p (one FMA per term), so a result does not depend on the launch.
 */
#include "common.cuh"

#define TM 64
#define TP 16

struct LoadDense { /* X stored [rows, ld] or, transposed, [cols, ld] */
    const float *x;
    int64_t ld;
    int trans;
    __device__ __forceinline__ float operator()(int r, int c) const {
        return trans ? x[(int64_t)c * ld + r] : x[(int64_t)r * ld + c];
    }
    __device__ __forceinline__ bool second_contiguous() const { return !trans; }
};

struct LoadTernaryT { /* B(p = n, k) = code(n, k) - 1 of a packed matrix with `stride` bytes per row */
    const uint8_t *codes;
    int64_t stride;
    __device__ __forceinline__ float operator()(int n, int k) const {
        const uint8_t byte = codes[(int64_t)n * stride + (k >> 8) * BT_BLOCK_BYTES + (k & 63)];
        return (float)(int)((byte >> (2 * ((k >> 6) & 3))) & 3u) - 1.0f;
    }
    __device__ __forceinline__ bool second_contiguous() const { return true; }
};

struct LoadQ8 { /* B(p = m, k) = Qa(x)[m, k] = q[m, k] / a[m], as q times the rounded reciprocal of a[m]
                * (one rcp.rn; a full IEEE division here costs a call and spills on sm_90) */
    const int8_t *q;
    int64_t ldq;
    const float *a;
    __device__ __forceinline__ float operator()(int m, int k) const {
        return (float)q[(int64_t)m * ldq + k] * __frcp_rn(a[m]);
    }
    __device__ __forceinline__ bool second_contiguous() const { return true; }
};

template <class LA, class LB>
__device__ __forceinline__ void sgemm_tile(int M, int N, int P, LA A, LB B, float alpha, float *__restrict__ C,
                                           int64_t ldc) {
    __shared__ float As[TP][TM + 4];
    __shared__ float Bs[TP][TM + 4];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int n0 = blockIdx.x * TM, m0 = blockIdx.y * TM;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int p0 = 0; p0 < P; p0 += TP) {
        /* Consecutive threads read consecutive addresses: along p where A (or B) is contiguous in p,
         * else along the output index. */
        const bool a_p = A.second_contiguous(), b_p = !B.second_contiguous();
        for (int e = threadIdx.x; e < TP * TM; e += 256) {
            int pp = a_p ? (e & 15) : (e >> 6), r = a_p ? (e >> 4) : (e & 63);
            int p = p0 + pp;
            As[pp][r] = (p < P && m0 + r < M) ? A(m0 + r, p) : 0.0f;
            pp = b_p ? (e & 15) : (e >> 6);
            r = b_p ? (e >> 4) : (e & 63);
            p = p0 + pp;
            Bs[pp][r] = (p < P && n0 + r < N) ? B(p, n0 + r) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int pp = 0; pp < TP; pp++) {
            float av[4], bv[4];
#pragma unroll
            for (int j = 0; j < 4; j++) av[j] = As[pp][ty + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++) bv[i] = Bs[pp][tx + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++)
#pragma unroll
                for (int i = 0; i < 4; i++) acc[j][i] = fmaf(av[j], bv[i], acc[j][i]);
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
            if (n < N) C[(int64_t)m * ldc + n] = alpha * acc[j][i];
        }
    }
}

/* sgemm: C [M, N] = op(A) op(B); A stored [M, lda] (trans_a: [P, lda]), B stored [P, ldb]
 * (trans_b: [N, ldb]).  grid (ceil(N / 64), ceil(M / 64)), block 256. */
extern "C" __global__ void __launch_bounds__(256) sgemm(int M, int N, int P, const float *__restrict__ A, int lda,
                                                        int trans_a, const float *__restrict__ B, int ldb,
                                                        int trans_b, float *__restrict__ C, int ldc) {
    LoadDense la = {A, lda, trans_a};
    LoadDense lb = {B, ldb, trans_b}; /* B(p, n) = b[p * ldb + n], or b[n * ldb + p] with trans_b */
    sgemm_tile(M, N, P, la, lb, 1.0f, C, ldc);
}

/* ternary_dx: dx [M, K] = s * dy [M, N] . w [N, K] (w from the packed codes).
 * grid (ceil(K / 64), ceil(M / 64)), block 256. */
extern "C" __global__ void __launch_bounds__(256) ternary_dx(int M, int N, int K, const float *__restrict__ dy,
                                                             const uint8_t *__restrict__ codes, int stride, float s,
                                                             float *__restrict__ dx) {
    LoadDense la = {dy, N, 0};
    LoadTernaryT lb = {codes, stride};
    sgemm_tile(M, K, N, la, lb, s, dx, K);
}

/* q8_dw: dW [N, K] = dy^T [N, M] . (q / a) [M, K]; dy [M, N], q [M, ldq].
 * grid (ceil(K / 64), ceil(N / 64)), block 256. */
extern "C" __global__ void __launch_bounds__(256) q8_dw(int M, int N, int K, const float *__restrict__ dy,
                                                        const int8_t *__restrict__ q, int ldq,
                                                        const float *__restrict__ a, float *__restrict__ dw) {
    LoadDense la = {dy, N, 1};
    LoadQ8 lb = {q, ldq, a};
    sgemm_tile(N, K, M, la, lb, 1.0f, dw, K);
}
