/* kernels_avx2.c -- AVX2 + FMA kernels.  Same results as kernels_scalar.c.
 *
 * int8: a 64-byte block is read as two 32-byte halves; each plane is unpacked
 * (shift, and) and multiplied with vpmaddubsw (codes 0..2 are unsigned, the
 * activations signed: |pair sum| <= 512, so the eight int16 products of a block
 * add up to at most 4096 and never saturate), then widened once per block with
 * vpmaddwd.  Tiles of 4 rows x 1 token.
 * int8 x int8 (the LM head, bt_int8.h): the sign trick + vpmaddubsw.
 * The AVX2 table is at the end.
 */
#include "bt_isa_kernels.h"
#include "bt_cpu.h"
#include "bt_prefetch.h"

#ifdef BT_HAVE_X86
#include <immintrin.h>
#include <math.h>
#include <string.h>

#define T256 BT_TARGET_AVX2

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
    const bt_gemv_pf pf = bt_gemv_pf_at(w, stride);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nblk; b++) {
        const int8_t *xb = x + b * BT_BLOCK;
        if (R == 4) bt_gemv_pf_step(pf, b); /* bt_prefetch.h */
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

/* Many tokens.  The rows are unpacked, 24 at a time, into signed column panels
 * Bp[(k/4)*96 + 4j + (k%4)] = w(n + j, k) in {-1, 0, 1}, so that one 32-byte load holds four
 * consecutive weights of eight rows, and the activations are offset to unsigned bytes
 * u = x + 128 (x ^ 0x80).  A register tile of 4 tokens x 24 rows then takes, per four k,
 * one 4-byte broadcast of each token's u and 4 x 3 vpmaddubsw(u, panel) with the panel
 * read straight from memory: 12 accumulators of int16 pair sums, 14 ymm in all.
 * sum_k u w = dot(w, x) + 128 sum_k w, so each output subtracts 128 * rowsum(w).
 * The pair sums of 64 steps (256 k) stay within int16 (|u0 w0 + u1 w1| <= 510,
 * 64 * 510 < 32767), so they are widened (vpmaddwd) into int32 once per 256 k. */
#define I8_NB 24
#define I8_TM 4
#ifndef BT_I8_PANEL_MIN_TOKENS
#define BT_I8_PANEL_MIN_TOKENS 12 /* measured: below this the per-token kernel is as fast */
#endif
#ifndef BT_I8_MB
#define BT_I8_MB 64 /* tokens whose offset activations are made at once (a block that stays in L1/L2) */
#endif
#ifndef BT_I8_CHUNK
#define BT_I8_CHUNK (256 * 1024) /* bytes of packed panels per chunk */
#endif

/* rows [n, n + nr) (nr <= 24; rows past nr get zero weights) -> Bp (24 * kp bytes), and
 * rowsum[j] = sum_k w(n + j, k) for j < nr */
T256 static void pack_panel24(const bt_ternary *w, int64_t n, int nr, int64_t nblk, int8_t *Bp, int32_t *rowsum) {
    const __m256i m = _mm256_set1_epi8(0x03), one = _mm256_set1_epi8(1), zero = _mm256_set1_epi8((char)BT_CODE_ZERO);
    const __m256i ones16 = _mm256_set1_epi16(1);
    for (int g = 0; g < 3; g++) { /* eight rows at a time: one 32-byte vector per k4 */
        __m256i rs[8];
        for (int r = 0; r < 8; r++) rs[r] = _mm256_setzero_si256();
        for (int64_t b = 0; b < nblk; b++)
            for (int h = 0; h < 2; h++) {
                __m256i c[8];
                for (int r = 0; r < 8; r++) {
                    const int j = 8 * g + r;
                    c[r] = j < nr ? _mm256_loadu_si256((const __m256i *)(w->codes + (n + j) * w->stride +
                                                                            b * BT_BLOCK_BYTES + 32 * h))
                                  : zero;
                }
                for (int p = 0; p < 4; p++) {
                    /* u[r]: weights k = 256b + 64p + 32h + 0..31 of row 8g + r, as 8 dwords (k4 groups) */
                    __m256i u[8];
                    for (int r = 0; r < 8; r++) {
                        u[r] = _mm256_sub_epi8(_mm256_and_si256(_mm256_srli_epi16(c[r], 2 * p), m), one);
                        rs[r] = _mm256_add_epi32(rs[r], _mm256_madd_epi16(_mm256_maddubs_epi16(one, u[r]), ones16));
                    }
                    /* 8 x 8 dword transpose, per 128-bit lane: q[i] holds group i (low lane) and i + 4
                     * (high lane) of rows 0..3, q[i + 4] the same of rows 4..7 */
                    __m256i s[8], q[8];
                    for (int r = 0; r < 8; r += 2) {
                        s[r] = _mm256_unpacklo_epi32(u[r], u[r + 1]);
                        s[r + 1] = _mm256_unpackhi_epi32(u[r], u[r + 1]);
                    }
                    for (int r = 0; r < 8; r += 4) {
                        q[r] = _mm256_unpacklo_epi64(s[r], s[r + 2]);
                        q[r + 1] = _mm256_unpackhi_epi64(s[r], s[r + 2]);
                        q[r + 2] = _mm256_unpacklo_epi64(s[r + 1], s[r + 3]);
                        q[r + 3] = _mm256_unpackhi_epi64(s[r + 1], s[r + 3]);
                    }
                    int8_t *dst = Bp + (64 * b + 16 * p + 8 * h) * 96 + 32 * g; /* k4 = (256b + 64p + 32h) / 4 */
                    for (int i = 0; i < 4; i++) {
                        _mm256_storeu_si256((__m256i *)(dst + i * 96), _mm256_permute2x128_si256(q[i], q[i + 4], 0x20));
                        _mm256_storeu_si256((__m256i *)(dst + (i + 4) * 96),
                                            _mm256_permute2x128_si256(q[i], q[i + 4], 0x31));
                    }
                }
            }
        for (int r = 0; r < 8; r++)
            if (8 * g + r < nr) rowsum[8 * g + r] = hsum8(rs[r]);
    }
}

/* TM tokens (offset rows of u, pitch ldu) x 24 rows: out[t*ldo + j] = sum_k u w - 128 rowsum[j], j < nc,
 * as int32; or, when fs is given, as the float (float)out * fs[t] (the to_float of kernels.c) */
T256 INLINE void panel_tile_i8(const int8_t *Bp, int64_t nk4, const uint8_t *u, int64_t ldu, const int TM,
                               const int32_t *rowsum, const float *fs, int32_t *out, int64_t ldo, int nc) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i tot[I8_TM][3];
#pragma GCC unroll 4
    for (int t = 0; t < I8_TM; t++)
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) tot[t][v] = _mm256_setzero_si256();
    for (int64_t c0 = 0; c0 < nk4; c0 += 64) {
        __m256i acc[I8_TM][3];
#pragma GCC unroll 4
        for (int t = 0; t < I8_TM; t++)
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++) acc[t][v] = _mm256_setzero_si256();
        const __m256i *bp = (const __m256i *)(Bp + c0 * 96);
        const uint8_t *up = u + c0 * 4;
#if defined(__GNUC__) && !defined(__clang__)
        if (TM == 4) {
            /* GCC keeps panel vectors in registers for reuse and spills the accumulators: the
             * step is written out so that every panel vector is a memory operand. */
            const int64_t l3 = 3 * ldu;
            for (int s = 0; s < 64; s++) {
                __m256i xb, tmp;
#define I8_ROW(T, ADDR)                                                                    \
    "vpbroadcastd " ADDR ", %[xb]\n\t"                                                      \
    "vpmaddubsw (%[bp]), %[xb], %[tmp]\n\t"                                                \
    "vpaddw %[tmp], %[a" #T "0], %[a" #T "0]\n\t"                                           \
    "vpmaddubsw 32(%[bp]), %[xb], %[tmp]\n\t"                                              \
    "vpaddw %[tmp], %[a" #T "1], %[a" #T "1]\n\t"                                           \
    "vpmaddubsw 64(%[bp]), %[xb], %[tmp]\n\t"                                              \
    "vpaddw %[tmp], %[a" #T "2], %[a" #T "2]\n\t"
                __asm__(I8_ROW(0, "(%[up])") I8_ROW(1, "(%[up],%[l1])") I8_ROW(2, "(%[up],%[l1],2)")
                            I8_ROW(3, "(%[up],%[l3])")
                        : [a00] "+x"(acc[0][0]), [a01] "+x"(acc[0][1]), [a02] "+x"(acc[0][2]),
                          [a10] "+x"(acc[1][0]), [a11] "+x"(acc[1][1]), [a12] "+x"(acc[1][2]),
                          [a20] "+x"(acc[2][0]), [a21] "+x"(acc[2][1]), [a22] "+x"(acc[2][2]),
                          [a30] "+x"(acc[3][0]), [a31] "+x"(acc[3][1]), [a32] "+x"(acc[3][2]),
                          [xb] "=&x"(xb), [tmp] "=&x"(tmp)
                        : [bp] "r"(bp), [up] "r"(up), [l1] "r"(ldu), [l3] "r"(l3)
                        : "memory");
#undef I8_ROW
                bp += 3;
                up += 4;
            }
        } else
#endif
        for (int s = 0; s < 64; s++) {
#pragma GCC unroll 4
            for (int t = 0; t < I8_TM; t++) {
                if (t >= TM) break;
                int32_t xv;
                memcpy(&xv, up + t * ldu, 4);
                const __m256i xb = _mm256_set1_epi32(xv);
#pragma GCC unroll 3
                for (int v = 0; v < 3; v++)
                    acc[t][v] = _mm256_add_epi16(acc[t][v], _mm256_maddubs_epi16(xb, _mm256_loadu_si256(bp + v)));
            }
            bp += 3;
            up += 4;
        }
#pragma GCC unroll 4
        for (int t = 0; t < I8_TM; t++) {
            if (t >= TM) break;
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++) tot[t][v] = _mm256_add_epi32(tot[t][v], _mm256_madd_epi16(acc[t][v], ones));
        }
    }
    __m256i corr[3];
#pragma GCC unroll 3
    for (int v = 0; v < 3; v++) corr[v] = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(rowsum + 8 * v)), 7);
#pragma GCC unroll 4
    for (int t = 0; t < I8_TM; t++) {
        if (t >= TM) break;
        int32_t *o = out + t * ldo;
        __m256i r[3];
#pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            r[v] = _mm256_sub_epi32(tot[t][v], corr[v]);
            if (fs) r[v] = _mm256_castps_si256(_mm256_mul_ps(_mm256_cvtepi32_ps(r[v]), _mm256_set1_ps(fs[t])));
        }
        if (nc == I8_NB) {
#pragma GCC unroll 3
            for (int v = 0; v < 3; v++) _mm256_storeu_si256((__m256i *)(o + 8 * v), r[v]);
        } else {
            int32_t tmp[I8_NB];
            for (int v = 0; v < 3; v++) _mm256_storeu_si256((__m256i *)(tmp + 8 * v), r[v]);
            memcpy(o, tmp, (size_t)nc * sizeof(int32_t));
        }
    }
}

#define PANEL_I8(TM)                                                                                       \
    T256 static void panel_i8_##TM(const int8_t *Bp, int64_t nk4, const uint8_t *u, int64_t ldu,            \
                                   const int32_t *rowsum, const float *fs, int32_t *out, int64_t ldo,       \
                                   int nc) {                                                                \
        panel_tile_i8(Bp, nk4, u, ldu, TM, rowsum, fs, out, ldo, nc);                                       \
    }
PANEL_I8(4)
PANEL_I8(3)
PANEL_I8(2)
PANEL_I8(1)

/* Rows [n0, n1) go in chunks of panels (BT_I8_CHUNK bytes of them, so that a chunk stays in
 * L2); each chunk is packed once, then tokens go through it in blocks of BT_I8_MB (offset to
 * unsigned bytes once per block and chunk).  Returns 0 (nothing done) when the buffers cannot
 * be had. */
T256 static int i8_panels(const bt_ternary *w, const int8_t *xq, int64_t ldq, int64_t M, int64_t n0, int64_t n1,
                          const float *fs, int32_t *out, int64_t ldo) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, kp = nblk * BT_BLOCK;
    int64_t cpan = BT_I8_CHUNK / (I8_NB * kp); /* panels per chunk */
    const int64_t npan = (n1 - n0 + I8_NB - 1) / I8_NB;
    cpan = cpan < 1 ? 1 : (cpan > npan ? npan : cpan);
    int8_t *Bp = (int8_t *)aligned_alloc(BT_ALIGN, (size_t)(cpan * I8_NB * kp));
    int32_t *rowsum = (int32_t *)aligned_alloc(BT_ALIGN, (size_t)(cpan * I8_NB * 4 + 63) / 64 * 64);
    uint8_t *u = (uint8_t *)aligned_alloc(BT_ALIGN, (size_t)(BT_I8_MB * kp));
    if (!Bp || !rowsum || !u) {
        free(Bp);
        free(rowsum);
        free(u);
        return 0;
    }
    const __m256i flip = _mm256_set1_epi8((char)0x80);
    for (int64_t q0 = 0; q0 < npan; q0 += cpan) {
        const int64_t q1 = npan - q0 < cpan ? npan : q0 + cpan;
        for (int64_t q = q0; q < q1; q++) {
            const int64_t n = n0 + q * I8_NB;
            const int nc = n1 - n < I8_NB ? (int)(n1 - n) : I8_NB;
            pack_panel24(w, n, nc, nblk, Bp + (q - q0) * I8_NB * kp, rowsum + (q - q0) * I8_NB);
        }
        for (int64_t m0 = 0; m0 < M; m0 += BT_I8_MB) {
            const int64_t mb = M - m0 < BT_I8_MB ? M - m0 : BT_I8_MB;
            for (int64_t t = 0; t < mb; t++)
                for (int64_t k = 0; k < kp; k += 32)
                    _mm256_storeu_si256(
                        (__m256i *)(u + t * kp + k),
                        _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(xq + (m0 + t) * ldq + k)), flip));
            for (int64_t q = q0; q < q1; q++) {
                const int64_t n = n0 + q * I8_NB;
                const int nc = n1 - n < I8_NB ? (int)(n1 - n) : I8_NB;
                const int8_t *B = Bp + (q - q0) * I8_NB * kp;
                const int32_t *rsum = rowsum + (q - q0) * I8_NB;
                int32_t *o = out + m0 * ldo + n;
                int64_t t = 0;
#define I8_F(t) (fs ? fs + m0 + (t) : NULL)
                for (; t + 4 <= mb; t += 4)
                    panel_i8_4(B, kp / 4, u + t * kp, kp, rsum, I8_F(t), o + t * ldo, ldo, nc);
                const int64_t left = mb - t;
                if (left == 3) panel_i8_3(B, kp / 4, u + t * kp, kp, rsum, I8_F(t), o + t * ldo, ldo, nc);
                else if (left == 2) panel_i8_2(B, kp / 4, u + t * kp, kp, rsum, I8_F(t), o + t * ldo, ldo, nc);
                else if (left == 1) panel_i8_1(B, kp / 4, u + t * kp, kp, rsum, I8_F(t), o + t * ldo, ldo, nc);
#undef I8_F
            }
        }
    }
    free(Bp);
    free(rowsum);
    free(u);
    return 1;
}

T256 int bt_i8f_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, int64_t M, int64_t n0, int64_t n1,
                     const float *fs, float *y, int64_t ldy) {
    return M >= BT_I8_PANEL_MIN_TOKENS && i8_panels(w, xq, ldq, M, n0, n1, fs, (int32_t *)y, ldy);
}

T256 void bt_i8_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                     int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, stride = w->stride;
    if (M >= BT_I8_PANEL_MIN_TOKENS && i8_panels(w, xq, ldq, M, n0, n1, NULL, out, ldo)) return;
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

/* ---- t1 (1.6-bit) weights, one token at a time (bt_ternary.h, format t1) -----------------
 * vpmaddubsw would saturate on the raw bytes (up to 255 x 128), so the codes are made first:
 * with p = q ^ 0x80 (the byte as a signed number minus 128; the xor commutes with the
 * multiplications by 3, p_{i+1} = 3 p_i mod 256), code_i = [p_i > -43] + [p_i > 42], two signed
 * compares whose -1 masks add to -code.  Tiles of 4 rows x 1 token; a block's ten int16 pair
 * sums (at most 10 * 512) are widened once per block. */
T256 INLINE __m256i times3_256(__m256i p) { return _mm256_add_epi8(_mm256_add_epi8(p, p), p); }

/* s16 += the products of the five planes of 32 bytes q (x_i = xh + step * i) */
T256 INLINE __m256i t1_half(__m256i q, const int8_t *xh, int64_t step, __m256i s16) {
    const __m256i lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42), z = _mm256_setzero_si256();
    __m256i p = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++) {
        const __m256i neg = _mm256_add_epi8(_mm256_cmpgt_epi8(p, lo), _mm256_cmpgt_epi8(p, hi));
        const __m256i c = _mm256_sub_epi8(z, neg);
        s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c, _mm256_loadu_si256((const __m256i *)(xh + step * i))));
        p = times3_256(p);
    }
    return s16;
}

/* 16 bytes into the low half, zeros above (zero bytes decode to codes 0) */
T256 INLINE __m256i load16(const uint8_t *c) {
    return _mm256_inserti128_si256(_mm256_setzero_si256(), _mm_loadu_si128((const __m128i *)c), 0);
}

T256 INLINE void t1_dot_tile(const uint8_t *w, int64_t stride, const int8_t *x, int R, int32_t *dot) {
    const int64_t nfull = stride / BT_BLOCK_BYTES, tb = stride % BT_BLOCK_BYTES;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4];
    const bt_gemv_pf pf = bt_gemv_pf_at(w, stride);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_si256();
    for (int64_t b = 0; b < nfull; b++) {
        const int8_t *xb = x + b * BT_T1_BLOCK;
        if (R == 4) bt_gemv_pf_step(pf, b); /* bt_prefetch.h */
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (r >= R) break;
            const uint8_t *c = w + r * stride + b * BT_BLOCK_BYTES;
            __m256i s16 = t1_half(_mm256_loadu_si256((const __m256i *)c), xb, 64, _mm256_setzero_si256());
            s16 = t1_half(_mm256_loadu_si256((const __m256i *)(c + 32)), xb + 32, 64, s16);
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16, ones));
        }
    }
    if (tb) { /* the narrow last block: tb = 16, 32 or 48 bytes, plane i at tb * i */
        const int8_t *xb = x + nfull * BT_T1_BLOCK;
        for (int r = 0; r < R; r++) {
            const uint8_t *c = w + r * stride + nfull * BT_BLOCK_BYTES;
            __m256i s16 = t1_half(tb >= 32 ? _mm256_loadu_si256((const __m256i *)c) : load16(c), xb, tb,
                                  _mm256_setzero_si256());
            if (tb == 48) s16 = t1_half(load16(c + 32), xb + 32, tb, s16);
            acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(s16, ones));
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r >= R) break;
        dot[r] = hsum8(acc[r]);
    }
}

T256 static void t1_dot_4(const uint8_t *w, int64_t stride, const int8_t *x, int32_t *d) {
    t1_dot_tile(w, stride, x, 4, d);
}
T256 static void t1_dot_1(const uint8_t *w, int64_t stride, const int8_t *x, int32_t *d) {
    t1_dot_tile(w, stride, x, 1, d);
}

T256 void bt_i8t1_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                       int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    int32_t dot[4];
    for (int64_t m = 0; m < M; m++) {
        const int8_t *x = xq + m * ldq;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            t1_dot_4(w->codes + n * w->stride, w->stride, x, dot);
            for (int r = 0; r < 4; r++) out[m * ldo + n + r] = dot[r] - sums[m];
        }
        for (; n < n1; n++) {
            t1_dot_1(w->codes + n * w->stride, w->stride, x, dot);
            out[m * ldo + n] = dot[0] - sums[m];
        }
    }
}

/* t1 row -> one code byte per weight (bt_t1_u8_fn), the compares above; the narrow last block
 * through the scalar decoder. */
T256 void bt_t1_u8_avx2(const uint8_t *row, int64_t stride, uint8_t *u) {
    const int64_t nfull = stride / BT_BLOCK_BYTES, tb = stride % BT_BLOCK_BYTES;
    const __m256i lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42), z = _mm256_setzero_si256();
    for (int64_t b = 0; b < nfull; b++)
        for (int h = 0; h < 2; h++) {
            __m256i p = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(row + b * BT_BLOCK_BYTES + 32 * h)),
                                         _mm256_set1_epi8((char)0x80));
            for (int i = 0; i < 5; i++) {
                const __m256i neg = _mm256_add_epi8(_mm256_cmpgt_epi8(p, lo), _mm256_cmpgt_epi8(p, hi));
                _mm256_storeu_si256((__m256i *)(u + b * BT_T1_BLOCK + 64 * i + 32 * h), _mm256_sub_epi8(z, neg));
                p = times3_256(p);
            }
        }
    if (tb) bt_t1_u8_scalar(row + nfull * BT_BLOCK_BYTES, tb, u + nfull * BT_T1_BLOCK);
}

/* Float panels (contract in bt_isa_kernels.h): C[i*ldc + j] = s * sum_{p<P} A(i, p) * B[p*32 + j].
 *
 * Register tile: 3 rows of A x the whole 32-column panel, 12 accumulators (acc[i][v]
 * holds row i, columns 8v..8v+7).  Per p the three A values are broadcast, then each of
 * the four B vectors of panel row p is loaded once and fused-multiply-added into the
 * three rows: 12 FMAs for 3 + 4 loads, 12 + 3 + 1 = 16 ymm.  Tails of 2 and 1 rows use
 * the same code.
 *
 * Blocking (bt_panels_avx2): depth blocks of BT_AVX2_KC, row blocks of BT_AVX2_MC (the
 * A block, MC x KC, is read from memory once and serves every panel of the group from
 * cache), then the panels of the group (B slice KC x 32 floats each), then the row tiles.
 * KC = 512, MC = 192 measured best on Zen 3 (32 KiB L1, 512 KiB L2) among KC 128..1024,
 * MC 96..384: the B slice streams from L2 fine, and fewer depth blocks mean fewer
 * round trips of the sums through C.  Between depth blocks the running sums are parked in C, unscaled, and
 * reloaded as they were: each output is still the single FMA chain over p = 0..P-1 in
 * order, from +0, multiplied by s once after the last block -- the operations of
 * bt_panel_scalar, so the same bits.  Columns j >= nc of C are never read or written
 * (masked loads and stores at the edge). */
#ifndef BT_AVX2_KC
#define BT_AVX2_KC 512
#endif
#ifndef BT_AVX2_MC
#define BT_AVX2_MC 192 /* a multiple of 3 */
#endif

/* Rows [0, MR) of the tile (row i at A + i*sa, then + p*sp), depth [k0, k1);
 * first: start from 0, else reload C; last: store s * sums, else store the sums. */
T256 INLINE void panel_tile(const float *A, int64_t sa, int64_t sp, const float *B, int64_t k0, int64_t k1,
                            float *C, int64_t ldc, const int MR, int nc, float s, int first, int last) {
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    __m256i mask[4];
#pragma GCC unroll 4
    for (int v = 0; v < 4; v++) mask[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc - 8 * v), iota);
    __m256 acc[3][4];
#pragma GCC unroll 3
    for (int i = 0; i < 3; i++) {
        if (i >= MR) break;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            if (first)
                acc[i][v] = _mm256_setzero_ps();
            else if (nc == BT_PANEL)
                acc[i][v] = _mm256_loadu_ps(C + i * ldc + 8 * v);
            else
                acc[i][v] = _mm256_maskload_ps(C + i * ldc + 8 * v, mask[v]);
        }
    }
    const float *ap = A + k0 * sp;
    const int64_t o1 = MR > 1 ? sa : 0, o2 = MR > 2 ? 2 * sa : 0;
    const float *bp = B + k0 * BT_PANEL;
    for (int64_t p = k0; p < k1; p++) {
        /* three A values, then one B vector at a time into the three rows */
        const __m256 x0 = _mm256_broadcast_ss(ap);
        const __m256 x1 = MR > 1 ? _mm256_broadcast_ss(ap + o1) : x0;
        const __m256 x2 = MR > 2 ? _mm256_broadcast_ss(ap + o2) : x0;
        ap += sp;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const __m256 b = _mm256_loadu_ps(bp + 8 * v);
            acc[0][v] = _mm256_fmadd_ps(x0, b, acc[0][v]);
            if (MR > 1) acc[1][v] = _mm256_fmadd_ps(x1, b, acc[1][v]);
            if (MR > 2) acc[2][v] = _mm256_fmadd_ps(x2, b, acc[2][v]);
        }
        bp += BT_PANEL;
    }
    const __m256 sv = _mm256_set1_ps(s);
#pragma GCC unroll 3
    for (int i = 0; i < 3; i++) {
        if (i >= MR) break;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const __m256 r = last ? _mm256_mul_ps(acc[i][v], sv) : acc[i][v];
            if (nc == BT_PANEL)
                _mm256_storeu_ps(C + i * ldc + 8 * v, r);
            else
                _mm256_maskstore_ps(C + i * ldc + 8 * v, mask[v], r);
        }
    }
}

#define PANEL_TILE(MR)                                                                              \
    T256 static void panel_##MR(const float *A, int64_t sa, int64_t sp, const float *B, int64_t k0,  \
                                int64_t k1, float *C, int64_t ldc, int nc, float s, int first,       \
                                int last) {                                                          \
        panel_tile(A, sa, sp, B, k0, k1, C, ldc, MR, nc, s, first, last);                            \
    }
PANEL_TILE(3)
PANEL_TILE(2)
PANEL_TILE(1)

/* G panels, panel g at B + g*ldp (P x 32 floats) giving columns C + 32g, all of them
 * full but the last (nc_last columns).  A(i, p) = A[(i / H)*ts + (i % H)*sa + p*sp]: A in
 * tiles of H rows (H a multiple of 3, or H >= M for a single tile), so that no row tile
 * of 3 straddles two of them. */
T256 void bt_panels_avx2(const float *A, int64_t sa, int64_t sp, int64_t H, int64_t ts, int64_t M,
                         const float *B, int64_t ldp, int G, int64_t P, float *C, int64_t ldc, int nc_last,
                         float s) {
    int64_t k0 = 0;
    do { /* at least one depth block, so that P == 0 still writes s * 0 */
        const int64_t k1 = P - k0 > BT_AVX2_KC ? k0 + BT_AVX2_KC : P;
        const int first = k0 == 0, last = k1 == P;
        for (int64_t m0 = 0; m0 < M; m0 += BT_AVX2_MC) {
            const int64_t m1 = M - m0 > BT_AVX2_MC ? m0 + BT_AVX2_MC : M;
            for (int g = 0; g < G; g++) {
                const float *Bg = B + g * ldp;
                float *Cg = C + g * BT_PANEL;
                const int nc = g == G - 1 ? nc_last : BT_PANEL;
                int64_t i = m0;
                for (; i + 3 <= m1; i += 3) {
                    const float *Ai = A + (i / H) * ts + (i % H) * sa;
                    panel_3(Ai, sa, sp, Bg, k0, k1, Cg + i * ldc, ldc, nc, s, first, last);
                }
                if (i < m1) {
                    const float *Ai = A + (i / H) * ts + (i % H) * sa;
                    if (m1 - i == 2) panel_2(Ai, sa, sp, Bg, k0, k1, Cg + i * ldc, ldc, nc, s, first, last);
                    else panel_1(Ai, sa, sp, Bg, k0, k1, Cg + i * ldc, ldc, nc, s, first, last);
                }
            }
        }
        k0 = k1;
    } while (k0 < P);
}

T256 void bt_panel_avx2(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                        float *C, int64_t ldc, int nc, float s) {
    bt_panels_avx2(A, sa, sp, M > 0 ? M : 1, 0, M, B, 0, 1, P, C, ldc, nc, s);
}

/* Panel of dequantized codes (bt_fill_q8_scalar): eight codes widened to floats and divided by
 * a[p] at a time (vdivps: the same correctly rounded quotients as the scalar division); the
 * narrow last panel of a call through the scalar code. */
T256 void bt_fill_q8_avx2(const int8_t *q, int64_t ldq, const float *a, int64_t P, int nc, float *B) {
    if (nc < BT_PANEL) {
        bt_fill_q8_scalar(q, ldq, a, P, nc, B);
        return;
    }
    for (int64_t p = 0; p < P; p++) {
        const int8_t *src = q + p * ldq;
        const __m256 ap = _mm256_set1_ps(a[p]);
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            const __m256i c = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(src + 8 * v)));
            _mm256_storeu_ps(B + p * BT_PANEL + 8 * v, _mm256_div_ps(_mm256_cvtepi32_ps(c), ap));
        }
    }
}

/* Panel of a transposed dense B (bt_fill_t_scalar): blocks of 8 rows of b (8 columns of the
 * panel) x 8 depths, loaded as 8 vectors along p, transposed in registers (unpack, shuffle,
 * lane permute) and stored as 8 vectors along j; depths past the last whole 8, columns past
 * the last whole 8 and the zeros past nc through the scalar code (copies: the same bits). */
T256 void bt_fill_t_avx2(const float *b, int64_t ldb, int64_t P, int nc, float *B) {
    const int nj = nc / 8 * 8;
    const int64_t np = P / 8 * 8;
    for (int j0 = 0; j0 < nj; j0 += 8) {
        const float *src = b + j0 * ldb;
        for (int64_t p = 0; p < np; p += 8) {
            __m256 r[8], t[8];
#pragma GCC unroll 8
            for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * ldb + p);
#pragma GCC unroll 4
            for (int i = 0; i < 8; i += 2) {
                t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
                t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
            }
            /* t[2q + h]: rows 2q, 2q+1 interleaved, depths {0,1,4,5} (h = 0) or {2,3,6,7} (h = 1) */
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++)
#pragma GCC unroll 2
                for (int q = 0; q < 4; q += 2) {
                    r[4 * h + q] = _mm256_shuffle_ps(t[2 * q + h], t[2 * q + 2 + h], 0x44);
                    r[4 * h + q + 1] = _mm256_shuffle_ps(t[2 * q + h], t[2 * q + 2 + h], 0xEE);
                }
            /* r[4h + 2s + e], s in {0, 1} the row quad (0-3, 4-7), depth 2h + e and 2h + e + 4 in
             * the two 128-bit lanes */
            float *dst = B + p * BT_PANEL + j0;
#pragma GCC unroll 4
            for (int d = 0; d < 4; d++) {
                const __m256 lo = r[4 * (d >> 1) + (d & 1)], hi = r[4 * (d >> 1) + 2 + (d & 1)];
                _mm256_storeu_ps(dst + d * BT_PANEL, _mm256_permute2f128_ps(lo, hi, 0x20));
                _mm256_storeu_ps(dst + (d + 4) * BT_PANEL, _mm256_permute2f128_ps(lo, hi, 0x31));
            }
        }
        for (int64_t p = np; p < P; p++)
            for (int j = 0; j < 8; j++) B[p * BT_PANEL + j0 + j] = src[j * ldb + p];
    }
    for (int64_t p = 0; p < P; p++) {
        for (int j = nj; j < nc; j++) B[p * BT_PANEL + j] = b[j * ldb + p];
        for (int j = nc; j < BT_PANEL; j++) B[p * BT_PANEL + j] = 0.0f;
    }
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

/* int8 x int8 rows of bt_gemm_s8 (bt_int8.h); the AVX-512 table uses them too. */
/* One-token rows are read as a single stream; prefetching this many bytes ahead lifted the
 * 32000 x 2048 head from about 75 % to about 95 % of the read bandwidth on Zen 3. */
#ifndef S8_PF
#define S8_PF 2048
#endif

/* Many tokens: R rows (1 or 2) x T tokens (1..4) over the first K32 weights, dot[r*4 + t] (the
 * sums of |w| * (sign(w) x) below).  Named accumulators a<r><t> keep the 8 sums in registers. */
#define S8A_TOKEN(t)                                                                                          \
    if (T > t) {                                                                                              \
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + t * ldx + k));                          \
        a0##t = _mm256_add_epi32(a0##t, _mm256_madd_epi16(_mm256_maddubs_epi16(s0, _mm256_sign_epi8(xv, w0)), \
                                                          ones));                                             \
        if (R > 1)                                                                                            \
            a1##t = _mm256_add_epi32(                                                                         \
                a1##t, _mm256_madd_epi16(_mm256_maddubs_epi16(s1, _mm256_sign_epi8(xv, w1)), ones));          \
    }
T256 INLINE void s8_tile_avx2(const int8_t *W, int64_t ldw, int64_t K32, const int8_t *xq, int64_t ldx, const int R,
                              const int T, int32_t *dot) {
    const __m256i ones = _mm256_set1_epi16(1), z = _mm256_setzero_si256();
    __m256i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    for (int64_t k = 0; k < K32; k += 32) {
        const __m256i w0 = _mm256_loadu_si256((const __m256i *)(W + k)), s0 = _mm256_sign_epi8(w0, w0);
        const __m256i w1 = R > 1 ? _mm256_loadu_si256((const __m256i *)(W + ldw + k)) : z;
        const __m256i s1 = _mm256_sign_epi8(w1, w1);
        S8A_TOKEN(0)
        S8A_TOKEN(1)
        S8A_TOKEN(2)
        S8A_TOKEN(3)
    }
    dot[0] = hsum8(a00), dot[1] = hsum8(a01), dot[2] = hsum8(a02), dot[3] = hsum8(a03);
    if (R > 1) dot[4] = hsum8(a10), dot[5] = hsum8(a11), dot[6] = hsum8(a12), dot[7] = hsum8(a13);
}
#undef S8A_TOKEN

typedef void s8a_tile_fn(const int8_t *W, int64_t ldw, int64_t K32, const int8_t *xq, int64_t ldx, int32_t *dot);
#define S8A_TILE(R, T)                                                                                        \
    T256 static void s8a_tile_##R##_##T(const int8_t *W, int64_t ldw, int64_t K32, const int8_t *xq,         \
                                        int64_t ldx, int32_t *dot) {                                          \
        s8_tile_avx2(W, ldw, K32, xq, ldx, R, T, dot);                                                        \
    }
S8A_TILE(1, 1)
S8A_TILE(1, 2)
S8A_TILE(1, 3)
S8A_TILE(1, 4)
S8A_TILE(2, 1)
S8A_TILE(2, 2)
S8A_TILE(2, 3)
S8A_TILE(2, 4)
#undef S8A_TILE
static s8a_tile_fn *const s8a_tiles[2][4] = {{s8a_tile_1_1, s8a_tile_1_2, s8a_tile_1_3, s8a_tile_1_4},
                                             {s8a_tile_2_1, s8a_tile_2_2, s8a_tile_2_3, s8a_tile_2_4}};

/* Rows of many tokens go in chunks of about this many bytes, kept in L2 while every token tile
 * walks them (each row was read from memory once per 4 tokens before). */
#ifndef S8A_CHUNK
#define S8A_CHUNK (256 * 1024)
#endif

/* |w| * (sign(w) x): the first operand of vpmaddubsw must be unsigned.  |w| <= 127 and
 * |x| <= 127 (per-token quantization maps max|x| to 127, and the export clips W to +-127), so
 * sign() never negates -128 and a pair sum is at most 2 * 127 * 127 = 32258: no saturation. */
T256 void bt_s8_rows_avx2(const int8_t *W, int64_t ldw, const float *ws, int64_t n0, int64_t n1, int64_t K,
                          const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t K32 = K & ~(int64_t)31;
    if (M == 1 && ldw == K) { /* one token (decoding): the rows are one stream, read ahead */
        const int64_t K64 = K & ~(int64_t)63;
        for (int64_t n = n0; n < n1; n++) {
            const int8_t *w = W + n * ldw;
            __m256i acc0 = _mm256_setzero_si256(), acc1 = _mm256_setzero_si256();
            int64_t k = 0;
            for (; k < K64; k += 64) {
                _mm_prefetch((const char *)(w + k + S8_PF), _MM_HINT_T0);
                const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));
                const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k + 32));
                const __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + k));
                const __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + k + 32));
                acc0 = _mm256_add_epi32(acc0, _mm256_madd_epi16(
                    _mm256_maddubs_epi16(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)), ones));
                acc1 = _mm256_add_epi32(acc1, _mm256_madd_epi16(
                    _mm256_maddubs_epi16(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1)), ones));
            }
            int32_t s = hsum8(_mm256_add_epi32(acc0, acc1));
            for (; k < K; k++) s += (int32_t)w[k] * (int32_t)xq[k];
            y[n] = (float)s * (ws[n] / a[0]);
        }
        return;
    }
    int64_t chunk = K > 0 ? S8A_CHUNK / K / 2 * 2 : n1 - n0;
    chunk = chunk < 2 ? 2 : chunk;
    int32_t dot[8];
    for (int64_t r0 = n0; r0 < n1; r0 += chunk) {
        const int64_t r1 = n1 - r0 < chunk ? n1 : r0 + chunk;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            const int T = M - m0 < 4 ? (int)(M - m0) : 4;
            for (int64_t n = r0; n < r1;) {
                const int R = r1 - n >= 2 ? 2 : 1;
                s8a_tiles[R - 1][T - 1](W + n * ldw, ldw, K32, xq + m0 * ldx, ldx, dot);
                for (int r = 0; r < R; r++) {
                    const int8_t *w = W + (n + r) * ldw;
                    for (int t = 0; t < T; t++) {
                        const int8_t *x = xq + (m0 + t) * ldx;
                        int32_t sum = dot[r * 4 + t];
                        for (int64_t k = K32; k < K; k++) sum += (int32_t)w[k] * (int32_t)x[k];
                        y[(m0 + t) * ldy + n + r] = (float)sum * (ws[n + r] / a[m0 + t]);
                    }
                }
                n += R;
            }
        }
    }
}

/* AVX2 + FMA: panels in groups and 3-row tiles (atile 12), the many-token int8 panels, the C
 * ternary panel fills. */
const bt_isa_ops bt_ops_avx2 = {
    .isa = BT_ISA_AVX2,
    .i8 = bt_i8_avx2,
    .i8_t1 = bt_i8t1_avx2,
    .t1_u8 = bt_t1_u8_avx2,
    .i8f = bt_i8f_avx2,
    .panel = bt_panel_avx2,
    .panels = bt_panels_avx2,
    .pack_a = 0,
    .atile = 12,
    .panel_rows = bt_panel_rows_scalar,
    .panel_cols = bt_panel_cols_scalar,
    .fill_q8 = bt_fill_q8_avx2,
    .fill_t = bt_fill_t_avx2,
    .quant = bt_quant_rows_avx2,
    .s8_rows = bt_s8_rows_avx2,
    .swiglu_fwd = bt_swiglu_fwd_avx2,
    .swiglu_bwd = bt_swiglu_bwd_avx2,
    .xent = bt_xent_avx2,
    .ttt_fwd = bt_ttt_fwd_avx2,
    .ttt_bwd = bt_ttt_bwd_avx2,
    .ttt_head = bt_ttt_head_avx2,
};

#endif /* BT_HAVE_X86 */
