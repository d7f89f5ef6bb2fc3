/*
 * common.cuh -- types, the packed ternary layout constants and block/warp reductions shared by
 * the kernels (cuda/NAME.cu).
 *
 * The sources are a CUDA C++ subset that compiles three ways: NVRTC or nvcc to PTX (the GPU
 * build, cuda/build.py), and g++ through cuda/emu.h (the emulated build of the tests).  So: no
 * headers beyond this one, no dynamic shared memory, warp shuffles with full masks only, every
 * kernel `extern "C"` with plain pointer/int/float parameters (cuda/build.py reads the
 * signatures), and every reduction sums in a fixed order (the same bits on every run).
 *
 * Packed ternary weights are those of src_c/bt_ternary.h, unchanged: a row of K weights is
 * ceil(K / 256) blocks of 64 bytes; byte j of a block holds the 2-bit codes (w + 1) of weights
 * j, j + 64, j + 128, j + 192 (bits 1:0, 3:2, 5:4, 7:6).  A 32-bit word of code bytes j..j+3,
 * shifted right by 2p and masked with 0x03030303, is four codes of the consecutive weights
 * 64p + j .. 64p + j + 3: exactly the four int8 activations one int32 load brings, so `__dp4a`
 * takes them as they are.  dot(w, x) = dot(c, x) - sum(x), the sum coming from quantize_act.
 */
#ifndef BITTTT_COMMON_CUH
#define BITTTT_COMMON_CUH

#ifndef BITTTT_EMU
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long long int64_t;
typedef unsigned long long uint64_t;
#endif

#define BT_BLOCK 256
#define BT_BLOCK_BYTES 64
#define BT_CODE_ZERO 0x55u
#define FULL_MASK 0xffffffffu

/* d = c + the sum of the four signed byte products of a and b (PTX dp4a.s32.s32; NVRTC 12.0
 * declares __dp4a without defining it). */
/* bt_dp4a_us: the same with the bytes of a unsigned (0..255), those of b signed (dp4a.u32.s32). */
#ifdef BITTTT_EMU
#define bt_dp4a __dp4a
static inline int bt_dp4a_us(unsigned a, int b, int c) {
    int s = c;
    for (int i = 0; i < 4; i++) s += (int)((a >> (8 * i)) & 0xffu) * (int)(int8_t)(b >> (8 * i));
    return s;
}
#else
__device__ __forceinline__ int bt_dp4a(int a, int b, int c) {
    int d;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
__device__ __forceinline__ int bt_dp4a_us(unsigned a, int b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}
#endif

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_double(double v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024; y = z = 1), returned to
 * every thread.  sh: 33 floats of shared memory owned by the caller. */
__device__ __forceinline__ float block_sum(float v, float *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    const float r = sh[32];
    __syncthreads();
    return r;
}

__device__ __forceinline__ float block_max(float v, float *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        float t = lane < nw ? sh[lane] : 0.0f;
        t = warp_max(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    const float r = sh[32];
    __syncthreads();
    return r;
}

__device__ __forceinline__ int block_sum_int(int v, int *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_int(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        int t = lane < nw ? sh[lane] : 0;
        t = warp_sum_int(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    const int r = sh[32];
    __syncthreads();
    return r;
}

__device__ __forceinline__ double block_sum_double(double v, double *sh) {
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_double(v);
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        double t = lane < nw ? sh[lane] : 0.0;
        t = warp_sum_double(t);
        if (lane == 0) sh[32] = t;
    }
    __syncthreads();
    const double r = sh[32];
    __syncthreads();
    return r;
}

/* 1 / (1 + exp(-z)) without overflow. */
__device__ __forceinline__ float sigmoidf_(float z) {
    return z >= 0.0f ? 1.0f / (1.0f + expf(-z)) : expf(z) / (1.0f + expf(z));
}

#endif /* BITTTT_COMMON_CUH */
