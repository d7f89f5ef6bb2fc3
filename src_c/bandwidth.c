/* bandwidth.c -- read-bandwidth probe (see bt_bandwidth.h). */
#include "bt_bandwidth.h"
#include "bt_cpu.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef BT_HAVE_X86
#include <immintrin.h>
BT_TARGET_AVX2 static uint64_t read_avx2(const uint8_t *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, a0);
    return out[0] ^ out[1] ^ out[2] ^ out[3];
}
#endif

static uint64_t read_scalar(const uint8_t *p, int64_t n) {
    uint64_t acc = 0;
    for (int64_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, p + i, 8);
        acc ^= v;
    }
    return acc;
}

/* The probe measures the machine, not a kernel path: it reads with AVX2 wherever the CPU
 * has it, whatever ISA the kernel table is set to. */
static uint64_t read_block(const uint8_t *p, int64_t n) {
#ifdef BT_HAVE_X86
    if (bt_isa_supported(BT_ISA_AVX2)) return read_avx2(p, n);
#endif
    return read_scalar(p, n);
}

double bt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

volatile uint64_t bt_bandwidth_sink;

double bt_read_bandwidth(int64_t bytes, int reps, int threads) {
    if (threads < 1) threads = 1;
    bytes = bytes / (128 * (int64_t)threads) * (128 * (int64_t)threads);
    if (bytes <= 0) return -1.0;
    uint8_t *buf = (uint8_t *)aligned_alloc(64, (size_t)bytes);
    if (!buf) return -1.0;
    const int64_t slice = bytes / threads;
    double best = 0.0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        memset(buf + tid * slice, tid + 1, (size_t)slice); /* first touch by the reader */
    }
    /* small (cache-resident) buffers are read several times per timed pass */
    const int inner = bytes >= (1 << 26) ? 1 : (int)((1 << 26) / bytes);
    for (int r = 0; r < reps; r++) {
        uint64_t sink = 0;
        double t0 = bt_now();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(^ : sink)
#endif
        {
            int tid = 0;
#ifdef _OPENMP
            tid = omp_get_thread_num();
#endif
            for (int i = 0; i < inner; i++) sink ^= read_block(buf + tid * slice, slice);
        }
        double dt = bt_now() - t0;
        bt_bandwidth_sink ^= sink;
        if (dt > 0 && (double)bytes * inner / dt > best) best = (double)bytes * inner / dt;
    }
    free(buf);
    return best;
}
