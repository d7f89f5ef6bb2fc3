/* kernels_avx2.c -- AVX2 + FMA kernels.  Same results as kernels_scalar.c.
 *
 * int8: a 64-byte block is read as two 32-byte halves; each plane is unpacked
 * (shift, and) and multiplied with vpmaddubsw (codes 0..2 are unsigned, the
 * activations signed: |pair sum| <= 512, so the eight int16 products of a block
 * add up to at most 4096 and never saturate), then widened once per block with
 * vpmaddwd.  Tiles of 4 rows x 1 token.
 */
#include "bt_isa_kernels.h"

#ifdef BT_HAVE_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T256 __attribute__((target("avx2,fma")))
#define INLINE static inline __attribute__((always_inline))

T256 INLINE int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

T256 INLINE void dot_tile(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x, int R,
                          int32_t *dot) {
    const __m256i m = _mm256_set1_epi8(0x03), ones = _mm256_set1_epi16(1);
    __m256i acc[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nblk; b++) {
        const int8_t *xb = x + b * BT_BLOCK;
        __m256i xv[8];
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) xv[q] = _mm256_loadu_si256((const __m256i *)(xb + 32 * q));
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (r >= R) break;
            const uint8_t *c = w + r * stride + b * BT_BLOCK_BYTES;
            __m256i s16 = _mm256_setzero_si256();
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                const __m256i cv = _mm256_loadu_si256((const __m256i *)(c + 32 * h));
#pragma GCC unroll 4
                for (int p = 0; p < 4; p++) {
                    const __m256i u = _mm256_and_si256(_mm256_srli_epi16(cv, 2 * p), m);
                    s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(u, xv[2 * p + h]));
                }
            }
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16, ones));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r >= R) break;
        dot[r] = hsum8(acc[r]);
    }
}

T256 static void dot_4(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x, int32_t *d) {
    dot_tile(w, stride, nblk, x, 4, d);
}
T256 static void dot_1(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x, int32_t *d) {
    dot_tile(w, stride, nblk, x, 1, d);
}

T256 void bt_i8_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                     int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, stride = w->stride;
    int32_t dot[4];
    for (int64_t m = 0; m < M; m++) {
        const int8_t *x = xq + m * ldq;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            dot_4(w->codes + n * stride, stride, nblk, x, dot);
            for (int r = 0; r < 4; r++) out[m * ldo + n + r] = dot[r] - sums[m];
        }
        for (; n < n1; n++) {
            dot_1(w->codes + n * stride, stride, nblk, x, dot);
            out[m * ldo + n] = dot[0] - sums[m];
        }
    }
}

/* Float panel: tiles of up to 4 rows of A x 16 columns (two ymm), twice per panel. */
T256 INLINE void panel_tile(const float *A, int64_t sa, int64_t sp, const float *B, int64_t P, float *C,
                            int64_t ldc, int MR, int nc, float s) {
    for (int h = 0; h < 2; h++) {
        const int j0 = 16 * h;
        if (j0 >= nc) break;
        __m256 acc[4][2];
#pragma GCC unroll 4
        for (int i = 0; i < 4; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t p = 0; p < P; p++) {
            const float *bp = B + p * BT_PANEL + j0;
            const __m256 b0 = _mm256_loadu_ps(bp), b1 = _mm256_loadu_ps(bp + 8);
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                if (i >= MR) break;
                const __m256 a = _mm256_broadcast_ss(A + i * sa + p * sp);
                acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
            }
        }
        const __m256 sv = _mm256_set1_ps(s);
        for (int i = 0; i < MR; i++) {
            float tmp[16];
            _mm256_storeu_ps(tmp, _mm256_mul_ps(acc[i][0], sv));
            _mm256_storeu_ps(tmp + 8, _mm256_mul_ps(acc[i][1], sv));
            const int n = nc - j0 < 16 ? nc - j0 : 16;
            for (int j = 0; j < n; j++) C[i * ldc + j0 + j] = tmp[j];
        }
    }
}

#define PANEL_TILE(MR)                                                                           \
    T256 static void panel_##MR(const float *A, int64_t sa, int64_t sp, const float *B, int64_t P, \
                                float *C, int64_t ldc, int nc, float s) {                       \
        panel_tile(A, sa, sp, B, P, C, ldc, MR, nc, s);                                             \
    }
PANEL_TILE(4)
PANEL_TILE(1)

T256 void bt_panel_avx2(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                        float *C, int64_t ldc, int nc, float s) {
    int64_t i = 0;
    for (; i + 4 <= M; i += 4) panel_4(A + i * sa, sa, sp, B, P, C + i * ldc, ldc, nc, s);
    for (; i < M; i++) panel_1(A + i * sa, sa, sp, B, P, C + i * ldc, ldc, nc, s);
}

/* Activation quantization (bt_quant.h), 8 floats at a time; the tail is done in C
 * with the same operations. */
T256 int bt_quant_rows_avx2(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q,
                            int64_t ldq, float *a, int32_t *sums) {
    const __m256 zero = _mm256_setzero_ps(), lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
    const int64_t K8 = K & ~(int64_t)7;
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * ldx;
        __m256 vmax = zero, vbad = zero;
        for (int64_t k = 0; k < K8; k += 8) {
            const __m256 v = _mm256_loadu_ps(row + k);
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(v, absmask));
            vbad = _mm256_add_ps(vbad, _mm256_mul_ps(v, zero));
        }
        float lanes[8], bads[8];
        _mm256_storeu_ps(lanes, vmax);
        _mm256_storeu_ps(bads, vbad);
        float amax = 0.0f, bad = 0.0f;
        for (int i = 0; i < 8; i++) {
            amax = lanes[i] > amax ? lanes[i] : amax;
            bad += bads[i];
        }
        for (int64_t k = K8; k < K; k++) {
            const float v = fabsf(row[k]);
            amax = v > amax ? v : amax;
            bad += row[k] * 0.0f;
        }
        if (bad != bad) return BT_ERR_NONFINITE;
        const float scale = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
        const __m256 sv = _mm256_set1_ps(scale);
        int8_t *dst = q + m * ldq;
        __m256i vsum = _mm256_setzero_si256();
        for (int64_t k = 0; k < K8; k += 8) {
            __m256 r = _mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(row + k), sv),
                                       _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
            const __m256i iv = _mm256_cvtps_epi32(r);
            vsum = _mm256_add_epi32(vsum, iv);
            int32_t tmp[8];
            _mm256_storeu_si256((__m256i *)tmp, iv);
            for (int i = 0; i < 8; i++) dst[k + i] = (int8_t)tmp[i];
        }
        const int32_t s = hsum8(vsum) + bt_quant_span(row, K8, K, scale, dst);
        if (ldq > K) memset(dst + K, 0, (size_t)(ldq - K));
        a[m] = scale;
        if (sums) sums[m] = s;
    }
    return BT_OK;
}

#endif /* BT_HAVE_X86 */
