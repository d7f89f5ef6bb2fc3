/*
 * emu.h -- run the CUDA kernels (cuda/NAME.cu) on the CPU, for the tests (no GPU needed).
 *
 * The same sources compile with g++ through this header.  It maps the CUDA C subset the
 * kernels use onto cooperative threads (fibers, POSIX ucontext) that run one block at a time
 * on the calling thread:
 *
 *   threadIdx, blockIdx      set by the scheduler for the thread it resumes
 *   blockDim, gridDim        globals of the running launch
 *   __shared__               `static`: one block runs at a time, so a static local is the
 *                            block's shared memory (no dynamic shared memory: kernels use
 *                            fixed-size __shared__ arrays)
 *   __syncthreads()          the thread parks at the block barrier; released when every live
 *                            thread of the block is parked there
 *   __shfl_*_sync, __syncwarp  a barrier per warp of 32 threads plus a scratch slot per lane
 *   atomicAdd/Max            GCC __atomic builtins (float add by compare-and-swap)
 *   __dp4a                   the 4-way signed byte dot product, in C
 *
 * Why fibers and not one OS thread per CUDA thread: 256 OS threads per block on a 2-core
 * machine spend their time in the scheduler, and a divergent barrier could only be found by a
 * timeout.  Here a thread runs until it parks at a barrier or returns; when no thread can run
 * and some are parked at barriers that can never be released (some threads of the block at
 * __syncthreads, others at a warp barrier or at another point), the launch stops at once and
 * returns EMU_ERR_BARRIER: a divergent barrier is an error, not a hang.  Threads that have
 * returned count as arrived (as on sm_70 and later).
 *
 * Limits: blockDim.x * y * z <= 1024; shuffles need every live lane of the warp to take part
 * (full masks; a warp may be partial when the block size is not a multiple of 32).
 */
#ifndef BITTTT_CUDA_EMU_H
#define BITTTT_CUDA_EMU_H

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <ucontext.h>

#include <functional>

#define BITTTT_EMU 1
#define EMU_MAX_THREADS 1024
enum { EMU_OK = 0, EMU_ERR_CONFIG = 1, EMU_ERR_THREAD = 2, EMU_ERR_BARRIER = 3 };

struct emu_dim3 {
    unsigned x, y, z;
};
struct int4 {
    int x, y, z, w;
};
struct uint4 {
    unsigned x, y, z, w;
};

static emu_dim3 threadIdx, blockIdx;
static int emu_tid; /* linear thread index in the block of the running thread */
static emu_dim3 blockDim, gridDim;
static const int warpSize = 32;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
#define __ldg(p) (*(p))

/* -- the fibers of one block ------------------------------------------------------------------- */
enum { EMU_READY = 0, EMU_WAIT_BLOCK = 1, EMU_WAIT_WARP = 2, EMU_DONE = 3 };

struct emu_fiber {
    ucontext_t ctx;
    int state;
};

static emu_fiber *emu_fibers;
static int emu_nt;
static ucontext_t emu_sched_ctx;
static const std::function<void()> *emu_body;
/* Shuffle scratch: two slots per thread, used in turn by successive shuffles, so one warp barrier
 * per shuffle is enough: a lane writes a slot again only two shuffles later, after every lane has
 * passed the barrier of the shuffle in between, so after every lane has read it. */
static uint64_t emu_slots[2][EMU_MAX_THREADS];
static unsigned char emu_phase[EMU_MAX_THREADS];

static void emu_park(int state) {
    emu_fibers[emu_tid].state = state;
    swapcontext(&emu_fibers[emu_tid].ctx, &emu_sched_ctx);
}

static inline void __syncthreads() { emu_park(EMU_WAIT_BLOCK); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    (void)mask;
    emu_park(EMU_WAIT_WARP);
}
static inline void __threadfence() {}

template <class T>
static T emu_shfl(T v, int kind, int arg, int width) {
    const int lane = emu_tid % 32, wbase = emu_tid - lane;
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    const int ph = emu_phase[emu_tid];
    emu_phase[emu_tid] = (unsigned char)(ph ^ 1);
    emu_slots[ph][emu_tid] = bits;
    emu_park(EMU_WAIT_WARP);
    const int base = lane - lane % width, sub = lane % width;
    int src;
    switch (kind) {
    case 0: src = base + (arg % width); break;                 /* __shfl_sync      */
    case 1: src = sub + arg < width ? lane + arg : lane; break; /* __shfl_down_sync */
    case 2: src = sub - arg >= 0 ? lane - arg : lane; break;    /* __shfl_up_sync   */
    default: src = base + ((sub ^ arg) % width); break;         /* __shfl_xor_sync  */
    }
    if (wbase + src >= emu_nt) src = lane;
    T r;
    bits = emu_slots[ph][wbase + src];
    memcpy(&r, &bits, sizeof(T));
    return r;
}

template <class T> static T __shfl_sync(unsigned m, T v, int src, int width = 32) { (void)m; return emu_shfl(v, 0, src, width); }
template <class T> static T __shfl_down_sync(unsigned m, T v, unsigned d, int width = 32) { (void)m; return emu_shfl(v, 1, (int)d, width); }
template <class T> static T __shfl_up_sync(unsigned m, T v, unsigned d, int width = 32) { (void)m; return emu_shfl(v, 2, (int)d, width); }
template <class T> static T __shfl_xor_sync(unsigned m, T v, int x, int width = 32) { (void)m; return emu_shfl(v, 3, x, width); }

/* -- atomics --------------------------------------------------------------------------------------- */
static inline float atomicAdd(float *p, float v) {
    uint32_t ob = __atomic_load_n((uint32_t *)p, __ATOMIC_RELAXED), nb;
    float old, nv;
    do {
        memcpy(&old, &ob, 4);
        nv = old + v;
        memcpy(&nb, &nv, 4);
    } while (!__atomic_compare_exchange_n((uint32_t *)p, &ob, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
static inline double atomicAdd(double *p, double v) {
    uint64_t ob = __atomic_load_n((uint64_t *)p, __ATOMIC_RELAXED), nb;
    double old, nv;
    do {
        memcpy(&old, &ob, 8);
        nv = old + v;
        memcpy(&nb, &nv, 8);
    } while (!__atomic_compare_exchange_n((uint64_t *)p, &ob, nb, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return old;
}
static inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline int atomicMax(int *p, int v) {
    int old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (old < v && !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    }
    return old;
}

/* -- integer and float intrinsics ------------------------------------------------------------------ */
static inline int __dp4a(int a, int b, int c) {
    int s = c;
    for (int i = 0; i < 4; i++) s += (int)(int8_t)(a >> (8 * i)) * (int)(int8_t)(b >> (8 * i));
    return s;
}
static inline int __float2int_rn(float x) { return (int)rintf(x); }
static inline float __int2float_rn(int x) { return (float)x; }
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

/* -- the launch ------------------------------------------------------------------------------------ */
static void emu_fiber_main(void) {
    (*emu_body)();
    emu_fibers[emu_tid].state = EMU_DONE;
    /* uc_link returns to the scheduler */
}

static void emu_set_thread(int t) {
    emu_tid = t;
    threadIdx.x = (unsigned)t % blockDim.x;
    threadIdx.y = ((unsigned)t / blockDim.x) % blockDim.y;
    threadIdx.z = (unsigned)t / (blockDim.x * blockDim.y);
}

/* Release what can be released when no thread is ready: whole warps parked at a warp barrier,
 * else the block barrier when every live thread is parked there.  0 when nothing can move. */
static int emu_release(void) {
    int moved = 0;
    for (int w0 = 0; w0 < emu_nt; w0 += 32) {
        const int w1 = w0 + 32 < emu_nt ? w0 + 32 : emu_nt;
        int waiting = 0, live = 0;
        for (int t = w0; t < w1; t++) {
            if (emu_fibers[t].state != EMU_DONE) live++;
            if (emu_fibers[t].state == EMU_WAIT_WARP) waiting++;
        }
        if (waiting && waiting == live) {
            for (int t = w0; t < w1; t++)
                if (emu_fibers[t].state == EMU_WAIT_WARP) emu_fibers[t].state = EMU_READY;
            moved = 1;
        }
    }
    if (moved) return 1;
    int waiting = 0, live = 0;
    for (int t = 0; t < emu_nt; t++) {
        if (emu_fibers[t].state != EMU_DONE) live++;
        if (emu_fibers[t].state == EMU_WAIT_BLOCK) waiting++;
    }
    if (waiting && waiting == live) {
        for (int t = 0; t < emu_nt; t++)
            if (emu_fibers[t].state == EMU_WAIT_BLOCK) emu_fibers[t].state = EMU_READY;
        return 1;
    }
    return 0;
}

static pthread_mutex_t emu_launch_mu = PTHREAD_MUTEX_INITIALIZER;
#define EMU_STACK (128 * 1024)

/* Run `body` (which calls the kernel with its arguments) on a grid of blocks, block after
 * block.  One launch at a time (a process-wide lock).  Returns EMU_OK or an EMU_ERR_* code. */
static int emu_launch(emu_dim3 grid, emu_dim3 block, const std::function<void()> &body) {
    const long nt = (long)block.x * block.y * block.z;
    if (nt < 1 || nt > EMU_MAX_THREADS || grid.x < 1 || grid.y < 1 || grid.z < 1) return EMU_ERR_CONFIG;
    pthread_mutex_lock(&emu_launch_mu);
    gridDim = grid;
    blockDim = block;
    emu_body = &body;
    emu_nt = (int)nt;
    int err = EMU_OK;
    emu_fibers = (emu_fiber *)calloc((size_t)nt, sizeof(emu_fiber));
    char *stacks = (char *)malloc((size_t)nt * EMU_STACK);
    if (!emu_fibers || !stacks) err = EMU_ERR_THREAD;
    for (unsigned bz = 0; bz < grid.z && !err; bz++)
        for (unsigned by = 0; by < grid.y && !err; by++)
            for (unsigned bx = 0; bx < grid.x && !err; bx++) {
                blockIdx.x = bx;
                blockIdx.y = by;
                blockIdx.z = bz;
                for (int t = 0; t < nt; t++) {
                    emu_fiber *f = &emu_fibers[t];
                    getcontext(&f->ctx);
                    f->ctx.uc_stack.ss_sp = stacks + (size_t)t * EMU_STACK;
                    f->ctx.uc_stack.ss_size = EMU_STACK;
                    f->ctx.uc_link = &emu_sched_ctx;
                    makecontext(&f->ctx, emu_fiber_main, 0);
                    f->state = EMU_READY;
                    emu_phase[t] = 0;
                }
                for (;;) {
                    int ran = 0;
                    for (int t = 0; t < nt; t++) {
                        if (emu_fibers[t].state != EMU_READY) continue;
                        emu_set_thread(t);
                        swapcontext(&emu_sched_ctx, &emu_fibers[t].ctx);
                        ran = 1;
                    }
                    if (ran) continue;
                    int done = 1;
                    for (int t = 0; t < nt; t++) done &= emu_fibers[t].state == EMU_DONE;
                    if (done) break;
                    if (!emu_release()) {
                        err = EMU_ERR_BARRIER;
                        break;
                    }
                }
            }
    free(stacks);
    free(emu_fibers);
    emu_fibers = NULL;
    pthread_mutex_unlock(&emu_launch_mu);
    return err;
}

#endif /* BITTTT_CUDA_EMU_H */
