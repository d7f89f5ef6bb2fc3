/*
 * bt_prefetch.h -- software prefetch of the one-token GEMV kernels (kernels_avx2.c,
 * kernels_avx512.c; t2 and t1 rows alike).
 *
 * A 4-row tile reads its rows side by side; short rows (512 bytes for K = 2048 in t2) and t1
 * rows (which do not start on a cache line) make a pattern the hardware prefetchers follow
 * badly from DRAM and L3.  So each block step b of a 4-row tile prefetches bytes
 * [256 b, 256 b + 256) of the tile that starts BT_GEMV_PF_BYTES (rounded up to whole tiles of
 * 4 * stride bytes) further on: while a tile runs, the one ahead is fetched front to back,
 * whole (t1: but for the last 4 * tb bytes).  Prefetches that reach this far into L1 would
 * evict what the tile is reading once the distance passes BT_GEMV_PF_L1_BYTES (rows of 2 KiB
 * and more): those go to L2 instead.  Prefetches never fault and change no result.
 * Measured on the Emerald Rapids Xeon, 1 thread (bench/RESULTS.md, issue 20 items 2-3).
 */
#ifndef BT_PREFETCH_H
#define BT_PREFETCH_H

#include <stdint.h>

#include "bt_common.h"

#ifdef BT_HAVE_X86
#include <xmmintrin.h>

#ifndef BT_GEMV_PF_BYTES
#define BT_GEMV_PF_BYTES 4096
#endif
#ifndef BT_GEMV_PF_L1_BYTES
#define BT_GEMV_PF_L1_BYTES 8192
#endif

typedef struct {
    const char *ahead; /* the tile ahead */
    int to_l2;         /* prefetch into L2 (distance past BT_GEMV_PF_L1_BYTES) */
} bt_gemv_pf;

/* For the 4-row tile at w (rows stride bytes apart). */
INLINE bt_gemv_pf bt_gemv_pf_at(const uint8_t *w, int64_t stride) {
    const int64_t tile = 4 * stride, dist = (BT_GEMV_PF_BYTES + tile - 1) / tile * tile;
    return (bt_gemv_pf){(const char *)(w + dist), dist > BT_GEMV_PF_L1_BYTES};
}

/* Block step b: the next 256 bytes of the tile ahead. */
INLINE void bt_gemv_pf_step(bt_gemv_pf pf, int64_t b) {
    const char *p = pf.ahead + 256 * b;
    if (pf.to_l2) {
        _mm_prefetch(p, _MM_HINT_T1);
        _mm_prefetch(p + 64, _MM_HINT_T1);
        _mm_prefetch(p + 128, _MM_HINT_T1);
        _mm_prefetch(p + 192, _MM_HINT_T1);
    } else {
        _mm_prefetch(p, _MM_HINT_T0);
        _mm_prefetch(p + 64, _MM_HINT_T0);
        _mm_prefetch(p + 128, _MM_HINT_T0);
        _mm_prefetch(p + 192, _MM_HINT_T0);
    }
}
#endif /* BT_HAVE_X86 */

#endif /* BT_PREFETCH_H */
