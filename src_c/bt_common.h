/*
 * bt_common.h -- what every file of the C core shares: error codes, the x86 guard, INLINE,
 * the target strings of the ISA paths, the thread split and the OpenMP range helper, and the
 * LayerNorm epsilon.  Plain definitions only (no state); every .c includes it, directly or
 * through its own header.
 */
#ifndef BT_COMMON_H
#define BT_COMMON_H

#include <stdint.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Error codes shared by every bt_* function. */
enum {
    BT_OK = 0,
    BT_ERR_NONFINITE = 1,   /* NaN or inf in the input                */
    BT_ERR_BADCODE = 2,     /* a 0b11 code, or a nonzero padding code  */
    BT_ERR_SHAPE = 3,       /* a dimension out of range               */
    BT_ERR_NOMEM = 4,       /* scratch allocation failed              */
    BT_ERR_ISA = 5,         /* requested ISA not supported here       */
    BT_ERR_SCALE = 6        /* an activation scale is not positive and finite */
};

/* x86-64 with GCC or clang: the AVX2 and AVX-512 paths are compiled (each function with its
 * own target attribute, so that the baseline build still runs on any x86-64). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BT_HAVE_X86 1
#endif

#define INLINE static inline __attribute__((always_inline))

/* Target attributes of the ISA paths (bt_cpu.h checks the same features at run time). */
#define BT_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define BT_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma")))

/* Epsilon of every LayerNorm of the model (the TTT inner LayerNorm and the post-norm). */
#define BT_LN_EPS 1e-6f

/* [0, n) split in `parts` contiguous ranges with boundaries on multiples of `grain`:
 * range idx is [*lo, *hi) (the thread split of the kernels). */
static inline void bt_split(int64_t n, int parts, int idx, int64_t grain, int64_t *lo, int64_t *hi) {
    const int64_t units = (n + grain - 1) / grain;
    const int64_t a = units * idx / parts, b = units * (idx + 1) / parts;
    *lo = a * grain < n ? a * grain : n;
    *hi = b * grain < n ? b * grain : n;
}

/* The calling thread's range of [0, n) under bt_split (the whole of it outside a parallel
 * region, or without OpenMP). */
static inline void bt_thread_range(int64_t n, int64_t grain, int64_t *lo, int64_t *hi) {
#ifdef _OPENMP
    bt_split(n, omp_get_num_threads(), omp_get_thread_num(), grain, lo, hi);
#else
    bt_split(n, 1, 0, grain, lo, hi);
#endif
}

/* BT_PARALLEL(nt) opens a parallel region of nt threads (none when nt <= 1) for the block
 * that follows, each thread taking its range:
 *     BT_PARALLEL(nt) { int64_t lo, hi; bt_thread_range(n, 1, &lo, &hi); ... }
 * BT_PARALLEL_FOR(nt) shares the for loop that follows among nt threads (static schedule:
 * contiguous ranges).  Without OpenMP both run the code once, on the calling thread. */
#ifdef _OPENMP
#define BT_PRAGMA(x) _Pragma(#x)
#define BT_PARALLEL(nt) BT_PRAGMA(omp parallel num_threads(nt) if ((nt) > 1))
#define BT_PARALLEL_FOR(nt) BT_PRAGMA(omp parallel for num_threads(nt) if ((nt) > 1) schedule(static))
#else
#define BT_PARALLEL(nt) (void)(nt);
#define BT_PARALLEL_FOR(nt) (void)(nt);
#endif

#endif /* BT_COMMON_H */
