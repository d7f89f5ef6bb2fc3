/* bt_transpose.h -- in-register 16 x 16 transpose of dwords (AVX-512), shared by the float panel
 * fills (kernels_avx512.c) and the TTT inner loop's transposes (ttt.c).  Moves only, no arithmetic. */
#ifndef BT_TRANSPOSE_H
#define BT_TRANSPOSE_H

#include <immintrin.h>

#include "bt_common.h"

/* 16 x 16 transpose of dwords: v[r] dword j -> v'[j] dword r. */
BT_TARGET_AVX512 INLINE void bt_transpose16_i32(__m512i *v) {
    __m512i t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 16; i += 4) {
        u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    /* u[4q + e], lane l: dword 4l + e of rows 4q..4q+3 */
#pragma GCC unroll 4
    for (int e = 0; e < 4; e++) {
        const __m512i s0 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0x44), s1 = _mm512_shuffle_i32x4(u[e], u[4 + e], 0xEE);
        const __m512i s2 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0x44);
        const __m512i s3 = _mm512_shuffle_i32x4(u[8 + e], u[12 + e], 0xEE);
        v[e] = _mm512_shuffle_i32x4(s0, s2, 0x88);
        v[4 + e] = _mm512_shuffle_i32x4(s0, s2, 0xDD);
        v[8 + e] = _mm512_shuffle_i32x4(s1, s3, 0x88);
        v[12 + e] = _mm512_shuffle_i32x4(s1, s3, 0xDD);
    }
}

#endif
