/* kernels_avx512.c -- AVX-512 (F/BW/VL + VNNI) kernels.  Same results as kernels_scalar.c.
 *
 * int8 GEMV (M == 1): four rows at a time.  Instead of shifting each plane down,
 * plane p is masked in place (c & (3 << 2p)), i.e. multiplied by 4^p, and
 * accumulated in its own register; the four sums are shifted back (exactly, as
 * each is a multiple of 4^p) once per row.  Per 256 weights and row: one load,
 * four ands, four vpdpbusd.
 * int8 GEMM (M > 1): tiles of 4 rows x 4 tokens; the codes of a plane are
 * unpacked once (shift, and) and reused by the four tokens.
 * The AVX-512 table is at the end.
 */
#include "bt_isa_kernels.h"
#include "bt_arena.h"
#include "bt_cpu.h"
#include "bt_prefetch.h"
#include "bt_transpose.h"

#ifdef BT_HAVE_X86
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#define T512 BT_TARGET_AVX512

/* a0 + a1/4 + a2/16 + a3/64, lane by lane (exact: plane p sums are multiples of 4^p). */
T512 INLINE __m512i plane_combine(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
    __m512i s = _mm512_add_epi32(a0, _mm512_srai_epi32(a1, 2));
    s = _mm512_add_epi32(s, _mm512_srai_epi32(a2, 4));
    return _mm512_add_epi32(s, _mm512_srai_epi32(a3, 6));
}

/* Horizontal sums of four vectors at once: out[i] = sum of the 16 lanes of s_i. */
T512 INLINE void reduce4(__m512i s0, __m512i s1, __m512i s2, __m512i s3, int32_t *out) {
    const __m512i a = _mm512_add_epi32(_mm512_unpacklo_epi32(s0, s1), _mm512_unpackhi_epi32(s0, s1));
    const __m512i b = _mm512_add_epi32(_mm512_unpacklo_epi32(s2, s3), _mm512_unpackhi_epi32(s2, s3));
    const __m512i c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
    const __m256i d = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
    const __m128i e = _mm_add_epi32(_mm256_castsi256_si128(d), _mm256_extracti128_si256(d, 1));
    _mm_storeu_si128((__m128i *)out, e);
}

/* GEMV over R rows (R = 1..4), one token.  Named accumulators (not arrays) keep
 * everything in registers: a<r><p> is row r, plane p. */
#define GEMV_ROW(r)                                                                   \
    if (R > r) {                                                                      \
        const __m512i c = _mm512_loadu_si512(w + r * stride + b * BT_BLOCK_BYTES);    \
        a##r##0 = _mm512_dpbusd_epi32(a##r##0, _mm512_and_si512(c, m0), x0);          \
        a##r##1 = _mm512_dpbusd_epi32(a##r##1, _mm512_and_si512(c, m1), x1);          \
        a##r##2 = _mm512_dpbusd_epi32(a##r##2, _mm512_and_si512(c, m2), x2);          \
        a##r##3 = _mm512_dpbusd_epi32(a##r##3, _mm512_and_si512(c, m3), x3);          \
    }

T512 INLINE void gemv_tile(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x,
                           const int R, int32_t *dot) {
    const __m512i m0 = _mm512_set1_epi8(0x03), m1 = _mm512_set1_epi8(0x0C);
    const __m512i m2 = _mm512_set1_epi8(0x30), m3 = _mm512_set1_epi8((char)0xC0);
    const __m512i z = _mm512_setzero_si512();
    __m512i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    __m512i a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
    const bt_gemv_pf pf = bt_gemv_pf_at(w, stride);
    for (int64_t b = 0; b < nblk; b++) {
        const int8_t *xb = x + b * BT_BLOCK;
        if (R == 4) bt_gemv_pf_step(pf, b); /* bt_prefetch.h */
        const __m512i x0 = _mm512_loadu_si512(xb), x1 = _mm512_loadu_si512(xb + 64);
        const __m512i x2 = _mm512_loadu_si512(xb + 128), x3 = _mm512_loadu_si512(xb + 192);
        GEMV_ROW(0)
        GEMV_ROW(1)
        GEMV_ROW(2)
        GEMV_ROW(3)
    }
    int32_t tmp[4];
    reduce4(plane_combine(a00, a01, a02, a03), R > 1 ? plane_combine(a10, a11, a12, a13) : z,
            R > 2 ? plane_combine(a20, a21, a22, a23) : z,
            R > 3 ? plane_combine(a30, a31, a32, a33) : z, tmp);
    for (int r = 0; r < R; r++) dot[r] = tmp[r];
}
#undef GEMV_ROW

T512 static void gemv_4(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x, int32_t *d) {
    gemv_tile(w, stride, nblk, x, 4, d);
}
T512 static void gemv_1(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x, int32_t *d) {
    gemv_tile(w, stride, nblk, x, 1, d);
}

/* GEMM tile: R rows (1 or 4) x T tokens (1..4); dot[r*4 + t].  a<r><t> is row r, token t.
 * Each plane of each row's codes is unpacked once (shift, and) and used by T tokens. */
#define GEMM_TOKEN(t)                                                                 \
    if (T > t) {                                                                      \
        const __m512i xv = _mm512_loadu_si512(x + t * ldq + b * BT_BLOCK + 64 * p);   \
        a0##t = _mm512_dpbusd_epi32(a0##t, u0, xv);                                   \
        if (R > 1) {                                                                  \
            a1##t = _mm512_dpbusd_epi32(a1##t, u1, xv);                               \
            a2##t = _mm512_dpbusd_epi32(a2##t, u2, xv);                               \
            a3##t = _mm512_dpbusd_epi32(a3##t, u3, xv);                               \
        }                                                                             \
    }
/* unpacked = 0: w is the packed codes (stride bytes per row); unpacked = 1: w holds one code
 * byte per weight in natural k order (see unpack_u8), stride = padded K. */
#define UNPACK(r)                                                                                      \
    (unpacked ? _mm512_loadu_si512(w + r * stride + b * BT_BLOCK + 64 * p)                           \
              : _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(w + r * stride + b * BT_BLOCK_BYTES), \
                                                   2 * p),                                             \
                                 m))

T512 INLINE void gemm_tile(const uint8_t *w, int64_t stride, int64_t nblk, const int8_t *x,
                           int64_t ldq, const int R, const int T, int32_t *dot, const int unpacked) {
    const __m512i m = _mm512_set1_epi8(0x03), z = _mm512_setzero_si512();
    __m512i a00 = z, a01 = z, a02 = z, a03 = z, a10 = z, a11 = z, a12 = z, a13 = z;
    __m512i a20 = z, a21 = z, a22 = z, a23 = z, a30 = z, a31 = z, a32 = z, a33 = z;
    for (int64_t b = 0; b < nblk; b++) {
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {
            const __m512i u0 = UNPACK(0);
            const __m512i u1 = R > 1 ? UNPACK(1) : z;
            const __m512i u2 = R > 1 ? UNPACK(2) : z;
            const __m512i u3 = R > 1 ? UNPACK(3) : z;
            GEMM_TOKEN(0)
            GEMM_TOKEN(1)
            GEMM_TOKEN(2)
            GEMM_TOKEN(3)
        }
    }
    int32_t tmp[4];
    reduce4(a00, a10, a20, a30, tmp);
    for (int r = 0; r < R; r++) dot[r * 4 + 0] = tmp[r];
    if (T > 1) { reduce4(a01, a11, a21, a31, tmp); for (int r = 0; r < R; r++) dot[r * 4 + 1] = tmp[r]; }
    if (T > 2) { reduce4(a02, a12, a22, a32, tmp); for (int r = 0; r < R; r++) dot[r * 4 + 2] = tmp[r]; }
    if (T > 3) { reduce4(a03, a13, a23, a33, tmp); for (int r = 0; r < R; r++) dot[r * 4 + 3] = tmp[r]; }
}
#undef GEMM_TOKEN
#undef UNPACK

#define GEMM_TILE(R, T)                                                                          \
    T512 static void gemm_##R##_##T(const uint8_t *w, int64_t stride, int64_t nblk,             \
                                    const int8_t *x, int64_t ldq, int32_t *dot) {               \
        gemm_tile(w, stride, nblk, x, ldq, R, T, dot, 0);                                        \
    }                                                                                            \
    T512 static void gemm_u8_##R##_##T(const uint8_t *w, int64_t stride, int64_t nblk,          \
                                       const int8_t *x, int64_t ldq, int32_t *dot) {            \
        gemm_tile(w, stride, nblk, x, ldq, R, T, dot, 1);                                        \
    }
GEMM_TILE(4, 4)
GEMM_TILE(4, 3)
GEMM_TILE(4, 2)
GEMM_TILE(1, 4)
GEMM_TILE(1, 3)
GEMM_TILE(1, 2)

typedef void (*tile_fn)(const uint8_t *, int64_t, int64_t, const int8_t *, int64_t, int32_t *);

/* Rows [n0, n1) of w as one code byte (0, 1, 2) per weight, row pitch kp = padded K. */
T512 static void unpack_u8(const bt_ternary *w, int64_t n0, int64_t n1, uint8_t *u) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, kp = nblk * BT_BLOCK;
    const __m512i m = _mm512_set1_epi8(0x03);
    for (int64_t n = n0; n < n1; n++)
        for (int64_t b = 0; b < nblk; b++) {
            const __m512i c = _mm512_loadu_si512(w->codes + n * w->stride + b * BT_BLOCK_BYTES);
            uint8_t *dst = u + (n - n0) * kp + b * BT_BLOCK;
            _mm512_storeu_si512(dst, _mm512_and_si512(c, m));
            _mm512_storeu_si512(dst + 64, _mm512_and_si512(_mm512_srli_epi16(c, 2), m));
            _mm512_storeu_si512(dst + 128, _mm512_and_si512(_mm512_srli_epi16(c, 4), m));
            _mm512_storeu_si512(dst + 192, _mm512_and_si512(_mm512_srli_epi16(c, 6), m));
        }
}

/* Tokens from this many on, the rows are unpacked to one byte per weight, a chunk of rows
 * at a time (BT_U8_CHUNK bytes, so that the chunk stays in L2 while every token tile walks
 * it): the tiles then run vpdpbusd straight from memory with no shift/and per tile. */
#define BT_U8_MIN_TOKENS 16
#define BT_U8_CHUNK (256 * 1024)

/* Token tiles [0, mt) x rows [r0, r1); rows are read at base + n * stride. */
T512 static void gemm_rows(const uint8_t *base, int64_t stride, int64_t nblk, int unpacked, const int8_t *xq,
                           int64_t ldq, const int32_t *sums, int64_t mt, int64_t r0, int64_t r1, int32_t *out,
                           int64_t ldo) {
    int32_t dot[16];
    for (int64_t m = 0; m < mt;) {
        const int64_t left = mt - m;
        const int T = left >= 4 ? 4 : (int)left; /* 2, 3 or 4 */
        tile_fn f4, f1;
        if (unpacked) {
            f4 = T == 4 ? gemm_u8_4_4 : (T == 3 ? gemm_u8_4_3 : gemm_u8_4_2);
            f1 = T == 4 ? gemm_u8_1_4 : (T == 3 ? gemm_u8_1_3 : gemm_u8_1_2);
        } else {
            f4 = T == 4 ? gemm_4_4 : (T == 3 ? gemm_4_3 : gemm_4_2);
            f1 = T == 4 ? gemm_1_4 : (T == 3 ? gemm_1_3 : gemm_1_2);
        }
        const int8_t *x = xq + m * ldq;
        int64_t n = r0;
        for (; n + 4 <= r1; n += 4) {
            f4(base + n * stride, stride, nblk, x, ldq, dot);
            for (int r = 0; r < 4; r++)
                for (int t = 0; t < T; t++) out[(m + t) * ldo + n + r] = dot[r * 4 + t] - sums[m + t];
        }
        for (; n < r1; n++) {
            f1(base + n * stride, stride, nblk, x, ldq, dot);
            for (int t = 0; t < T; t++) out[(m + t) * ldo + n] = dot[t] - sums[m + t];
        }
        m += T;
    }
}

/* Many tokens (from BT_P8_MIN_TOKENS): the rows are packed, a chunk at a time, into column
 * panels of up to 48 rows (P8_NV vectors of 16 rows), [k/4][vector][16 rows][4 codes]: one
 * 64-byte load holds four consecutive codes of 16 rows.  A register tile of up to P8_TM = 8
 * tokens x 48 rows then takes, per four k, the panel's three vectors and one 4-byte broadcast
 * of each token's activations, 24 vpdpbusd(codes, x) into 24 accumulators that each hold 16
 * outputs: no horizontal sums, and the outputs are stored as vectors (as floats when asked:
 * (float)(dot - sum x) * fs[m], to_float's two operations).  The sums are exact int32, so the
 * results are the other kernels' bit for bit.  Loop order: a chunk of panels (P8_CHUNK bytes,
 * kept in L2) is packed once, then every token tile (its rows in L1) walks it. */
#define P8_TM 8
#define P8_NV 3
#define P8_ROWS (16 * P8_NV)
#ifndef BT_P8_MIN_TOKENS
#define BT_P8_MIN_TOKENS 16
#endif
#ifndef P8_CHUNK
#define P8_CHUNK (512 * 1024)
#endif

/* Rows [n, n + nr) (nr <= 48) of w -> one panel of nv = ceil(nr / 16) vectors at P
 * (kp / 4 * nv * 64 bytes): P[(s*nv + v)*64 + 4i + c] = code(n + 16v + i, 4s + c), rows past nr 0. */
T512 static void p8_pack(const bt_ternary *w, int64_t n, int nr, int64_t nblk, uint8_t *P) {
    const __m512i m = _mm512_set1_epi8(0x03), z = _mm512_setzero_si512();
    const int nv = (nr + 15) / 16;
    for (int v = 0; v < nv; v++) {
        const int rows = nr - 16 * v < 16 ? nr - 16 * v : 16;
        const uint8_t *src = w->codes + (n + 16 * v) * w->stride;
        for (int64_t b = 0; b < nblk; b++)
#pragma GCC unroll 1
            for (int p = 0; p < 4; p++) {
                __m512i c[16];
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++)
                    c[i] = i < rows ? _mm512_and_si512(_mm512_srli_epi16(_mm512_loadu_si512(src + i * w->stride +
                                                                                           b * BT_BLOCK_BYTES),
                                                                         2 * p),
                                                       m)
                                    : z;
                bt_transpose16_i32(c);
                uint8_t *dst = P + ((64 * b + 16 * p) * nv + v) * 64; /* step s = (256b + 64p) / 4 */
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) _mm512_storeu_si512(dst + j * nv * 64, c[j]);
            }
    }
}

/* One output vector: o[j] = r[j] - sx for j < left, as int32; or as floats: times fs[t] when
 * fs is given, times (ws[j] / am[t]) when ws is given (the int8 head's row scales). */
T512 INLINE void p8_store(__m512i r, int32_t sx, const float *fs, const float *ws, const float *am, int t, int32_t *o,
                          int left) {
    if (left <= 0) return;
    const __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    r = _mm512_sub_epi32(r, _mm512_set1_epi32(sx));
    if (fs) r = _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(r), _mm512_set1_ps(fs[t])));
    if (ws)
        r = _mm512_castps_si512(_mm512_mul_ps(
            _mm512_cvtepi32_ps(r), _mm512_div_ps(_mm512_maskz_loadu_ps(km, ws), _mm512_set1_ps(am[t]))));
    if (left >= 16)
        _mm512_storeu_si512(o, r);
    else
        _mm512_mask_storeu_epi32(o, km, r);
}

/* Token t of a tile: its 4 activations of step s broadcast, times the NV panel vectors.  Named
 * accumulators, each token's step one asm statement: GCC otherwise copies the accumulators
 * through the stack every step. */
#if defined(__GNUC__)
#define P8_DP(v) "vpdpbusd %[xb], %[b" #v "], %[a" #v "]\n\t"
#define P8_TOKEN(t)                                                                                        \
    if (TM > t) {                                                                                          \
        __m512i xb;                                                                                        \
        const int32_t *xp = (const int32_t *)(const void *)(x + t * ldq + 4 * s);                          \
        if (NV == 3)                                                                                       \
            __asm__("vpbroadcastd %[xm], %[xb]\n\t" P8_DP(0) P8_DP(1) P8_DP(2)                             \
                    : [a0] "+v"(a##t##0), [a1] "+v"(a##t##1), [a2] "+v"(a##t##2), [xb] "=&v"(xb)           \
                    : [b0] "v"(b0), [b1] "v"(b1), [b2] "v"(b2), [xm] "m"(*xp));                            \
        else if (NV == 2)                                                                                  \
            __asm__("vpbroadcastd %[xm], %[xb]\n\t" P8_DP(0) P8_DP(1)                                      \
                    : [a0] "+v"(a##t##0), [a1] "+v"(a##t##1), [xb] "=&v"(xb)                               \
                    : [b0] "v"(b0), [b1] "v"(b1), [xm] "m"(*xp));                                          \
        else                                                                                               \
            __asm__("vpbroadcastd %[xm], %[xb]\n\t" P8_DP(0)                                               \
                    : [a0] "+v"(a##t##0), [xb] "=&v"(xb)                                                   \
                    : [b0] "v"(b0), [xm] "m"(*xp));                                                        \
    }
#else
#define P8_TOKEN(t)                                                                     \
    if (TM > t) {                                                                       \
        int32_t xv;                                                                     \
        memcpy(&xv, x + t * ldq + 4 * s, 4);                                            \
        const __m512i xb = _mm512_set1_epi32(xv);                                       \
        a##t##0 = _mm512_dpbusd_epi32(a##t##0, b0, xb);                                 \
        if (NV > 1) a##t##1 = _mm512_dpbusd_epi32(a##t##1, b1, xb);                     \
        if (NV > 2) a##t##2 = _mm512_dpbusd_epi32(a##t##2, b2, xb);                     \
    }
#endif
#define P8_OUT(t)                                                                                   \
    if (TM > t) {                                                                                   \
        p8_store(a##t##0, xs[t], fs, ws, am, t, out + t * ldo, nc);                                 \
        if (NV > 1) p8_store(a##t##1, xs[t], fs, ws ? ws + 16 : NULL, am, t, out + t * ldo + 16, nc - 16); \
        if (NV > 2) p8_store(a##t##2, xs[t], fs, ws ? ws + 32 : NULL, am, t, out + t * ldo + 32, nc - 32); \
    }

/* TM tokens (rows of x, pitch ldq) x one panel of NV vectors: out[t*ldo + j] = sum_k c x - xs[t]
 * for j < nc, as int32, or as floats (p8_store) when fs or ws is given. */
T512 INLINE void p8_tile(const uint8_t *P, int64_t nk4, const int8_t *x, int64_t ldq, const int TM, const int NV,
                         const int32_t *xs, const float *fs, const float *ws, const float *am, int32_t *out,
                         int64_t ldo, int nc) {
    const __m512i z = _mm512_setzero_si512();
    __m512i a00 = z, a01 = z, a02 = z, a10 = z, a11 = z, a12 = z, a20 = z, a21 = z, a22 = z, a30 = z, a31 = z,
            a32 = z, a40 = z, a41 = z, a42 = z, a50 = z, a51 = z, a52 = z, a60 = z, a61 = z, a62 = z, a70 = z,
            a71 = z, a72 = z;
    for (int64_t s = 0; s < nk4; s++) {
        const __m512i b0 = _mm512_loadu_si512(P + s * NV * 64);
        const __m512i b1 = NV > 1 ? _mm512_loadu_si512(P + (s * NV + 1) * 64) : z;
        const __m512i b2 = NV > 2 ? _mm512_loadu_si512(P + (s * NV + 2) * 64) : z;
        P8_TOKEN(0)
        P8_TOKEN(1)
        P8_TOKEN(2)
        P8_TOKEN(3)
        P8_TOKEN(4)
        P8_TOKEN(5)
        P8_TOKEN(6)
        P8_TOKEN(7)
    }
    P8_OUT(0)
    P8_OUT(1)
    P8_OUT(2)
    P8_OUT(3)
    P8_OUT(4)
    P8_OUT(5)
    P8_OUT(6)
    P8_OUT(7)
}
#undef P8_TOKEN
#undef P8_DP
#undef P8_OUT

typedef void p8_tile_fn(const uint8_t *P, int64_t nk4, const int8_t *x, int64_t ldq, const int32_t *xs,
                        const float *fs, const float *ws, const float *am, int32_t *out, int64_t ldo, int nc);
#define P8_TILE(TM, NV)                                                                                      \
    T512 static void p8_tile_##TM##_##NV(const uint8_t *P, int64_t nk4, const int8_t *x, int64_t ldq,        \
                                         const int32_t *xs, const float *fs, const float *ws, const float *am, \
                                         int32_t *out, int64_t ldo, int nc) {                                 \
        p8_tile(P, nk4, x, ldq, TM, NV, xs, fs, ws, am, out, ldo, nc);                                        \
    }
#define P8_TILES(TM) P8_TILE(TM, 1) P8_TILE(TM, 2) P8_TILE(TM, 3)
P8_TILES(1)
P8_TILES(2)
P8_TILES(3)
P8_TILES(4)
P8_TILES(5)
P8_TILES(6)
P8_TILES(7)
P8_TILES(8)
#undef P8_TILES
#undef P8_TILE
/* [tokens - 1][vectors - 1] */
static p8_tile_fn *const p8_tiles[P8_TM][P8_NV] = {
    {p8_tile_1_1, p8_tile_1_2, p8_tile_1_3}, {p8_tile_2_1, p8_tile_2_2, p8_tile_2_3},
    {p8_tile_3_1, p8_tile_3_2, p8_tile_3_3}, {p8_tile_4_1, p8_tile_4_2, p8_tile_4_3},
    {p8_tile_5_1, p8_tile_5_2, p8_tile_5_3}, {p8_tile_6_1, p8_tile_6_2, p8_tile_6_3},
    {p8_tile_7_1, p8_tile_7_2, p8_tile_7_3}, {p8_tile_8_1, p8_tile_8_2, p8_tile_8_3},
};

/* Rows [n0, n1) x M tokens through the panels; sums NULL: the token sums are made here.
 * The panels live in the thread's scratch buffer (bt_arena.h).  Returns 0 (nothing written)
 * when the buffer cannot be had. */
T512 static int i8_panels(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums, int64_t M,
                          int64_t n0, int64_t n1, const float *fs, int32_t *out, int64_t ldo) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, kp = nblk * BT_BLOCK, nk4 = kp / 4;
    const int64_t pbytes = P8_ROWS * kp; /* bytes of a full panel */
    const int64_t npan = (n1 - n0 + P8_ROWS - 1) / P8_ROWS;
    int64_t cpan = P8_CHUNK / pbytes;
    cpan = cpan < 1 ? 1 : (cpan > npan ? npan : cpan);
    const size_t sbytes = sums ? 0 : ((size_t)M * 4 + 63) / 64 * 64;
    uint8_t *buf = (uint8_t *)bt_scratch(BT_SCRATCH_S8, (size_t)(cpan * pbytes) + sbytes);
    if (!buf) return 0;
    if (!sums) { /* sum x of each token (its padding is zero) */
        int32_t *xs = (int32_t *)(buf + cpan * pbytes);
        const __m512i ones = _mm512_set1_epi8(1);
        for (int64_t m = 0; m < M; m++) {
            __m512i acc = _mm512_setzero_si512();
            for (int64_t k = 0; k < kp; k += 64)
                acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(xq + m * ldq + k));
            xs[m] = _mm512_reduce_add_epi32(acc);
        }
        sums = xs;
    }
    for (int64_t q0 = 0; q0 < npan; q0 += cpan) {
        const int64_t q1 = npan - q0 < cpan ? npan : q0 + cpan;
        for (int64_t q = q0; q < q1; q++) {
            const int64_t n = n0 + q * P8_ROWS;
            p8_pack(w, n, n1 - n < P8_ROWS ? (int)(n1 - n) : P8_ROWS, nblk, buf + (q - q0) * pbytes);
        }
        for (int64_t m = 0; m < M; m += P8_TM) {
            const int tm = M - m < P8_TM ? (int)(M - m) : P8_TM;
            for (int64_t q = q0; q < q1; q++) {
                const int64_t n = n0 + q * P8_ROWS;
                const int nc = n1 - n < P8_ROWS ? (int)(n1 - n) : P8_ROWS;
                p8_tiles[tm - 1][(nc + 15) / 16 - 1](buf + (q - q0) * pbytes, nk4, xq + m * ldq, ldq, sums + m,
                                                     fs ? fs + m : NULL, NULL, NULL, out + m * ldo + n, ldo, nc);
            }
        }
    }
    return 1;
}

T512 static int i8f_avx512(const bt_ternary *w, const int8_t *xq, int64_t ldq, int64_t M, int64_t n0, int64_t n1,
                           const float *fs, float *y, int64_t ldy) {
    return M >= BT_P8_MIN_TOKENS && i8_panels(w, xq, ldq, NULL, M, n0, n1, fs, (int32_t *)y, ldy);
}

T512 void bt_i8_avx512(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                       int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    if (M >= BT_P8_MIN_TOKENS && i8_panels(w, xq, ldq, sums, M, n0, n1, NULL, out, ldo)) return;
    const int64_t nblk = w->stride / BT_BLOCK_BYTES, kp = nblk * BT_BLOCK;
    int32_t dot[16];
    /* single tokens (M == 1, or the last token of an odd tail) use the GEMV kernel */
    const int64_t mt = M >= 2 ? M - (M % 4 == 1 ? 1 : 0) : 0; /* tokens handled by tiles */
    int64_t chunk = (BT_U8_CHUNK / kp) / 4 * 4;
    chunk = chunk < 4 ? 4 : chunk;
    uint8_t *u = mt >= BT_U8_MIN_TOKENS ? (uint8_t *)aligned_alloc(BT_ALIGN, (size_t)(chunk * kp)) : NULL;
    if (u) {
        for (int64_t r0 = n0; r0 < n1; r0 += chunk) {
            const int64_t r1 = r0 + chunk < n1 ? r0 + chunk : n1;
            unpack_u8(w, r0, r1, u);
            gemm_rows(u - r0 * kp, kp, nblk, 1, xq, ldq, sums, mt, r0, r1, out, ldo);
        }
        free(u);
    } else {
        gemm_rows(w->codes, w->stride, nblk, 0, xq, ldq, sums, mt, n0, n1, out, ldo);
    }
    for (int64_t m = mt; m < M; m++) {
        const int8_t *x = xq + m * ldq;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            gemv_4(w->codes + n * w->stride, w->stride, nblk, x, dot);
            for (int r = 0; r < 4; r++) out[m * ldo + n + r] = dot[r] - sums[m];
        }
        for (; n < n1; n++) {
            gemv_1(w->codes + n * w->stride, w->stride, nblk, x, dot);
            out[m * ldo + n] = dot[0] - sums[m];
        }
    }
}

/* ---- t1 (1.6-bit) weights, one token at a time (bt_ternary.h, format t1) -----------------
 * Per 64-byte block and row: p_0 = the bytes, p_{i+1} = 3 p_i (two byte adds), and
 *     A += vpdpbusd(p_i, x_i),   B += vpdpbusd(p_{i+1}, x_i)      (i = 0..4, x_i: plane i)
 * Byte by byte 3 p_i - p_{i+1} = 256 c_i, so lane by lane 3A - B = 256 * (the lane's part of
 * dot(c, x)) exactly; int32 wraps in A and B cancel as long as that true value fits, which
 * holds over T1_FLUSH blocks (256 * 2 * 128 * 20 * 1024 < 2^31): then (3A - B) >> 8 goes
 * into the row's sum.  The narrow last block is read with a byte mask (zero bytes add 0). */
#define T1_FLUSH 1024

T512 INLINE __m512i times3(__m512i p) { return _mm512_add_epi8(_mm512_add_epi8(p, p), p); }

T512 INLINE void t1_block(__m512i p, const __m512i x[5], __m512i *a, __m512i *b) {
#pragma GCC unroll 5
    for (int i = 0; i < 5; i++) {
        *a = _mm512_dpbusd_epi32(*a, p, x[i]);
        p = times3(p);
        *b = _mm512_dpbusd_epi32(*b, p, x[i]);
    }
}

T512 INLINE __m512i t1_flush(__m512i s, __m512i a, __m512i b) {
    return _mm512_add_epi32(s, _mm512_srai_epi32(_mm512_sub_epi32(_mm512_add_epi32(_mm512_add_epi32(a, a), a), b), 8));
}

T512 INLINE void t1_gemv_tile(const uint8_t *w, int64_t stride, const int8_t *x, const int R, int32_t *dot) {
    const int64_t nfull = stride / BT_BLOCK_BYTES, tb = stride % BT_BLOCK_BYTES;
    const __m512i z = _mm512_setzero_si512();
    __m512i s0 = z, s1 = z, s2 = z, s3 = z;
    const bt_gemv_pf pf = bt_gemv_pf_at(w, stride);
    for (int64_t c0 = 0; c0 < nfull || (c0 == nfull && tb); c0 += T1_FLUSH) {
        __m512i a0 = z, a1 = z, a2 = z, a3 = z, b0 = z, b1 = z, b2 = z, b3 = z;
        const int64_t c1 = nfull - c0 < T1_FLUSH ? nfull : c0 + T1_FLUSH;
        for (int64_t b = c0; b < c1; b++) {
            const int8_t *xb = x + b * BT_T1_BLOCK;
            if (R == 4) bt_gemv_pf_step(pf, b); /* bt_prefetch.h */
            __m512i xv[5];
#pragma GCC unroll 5
            for (int i = 0; i < 5; i++) xv[i] = _mm512_loadu_si512(xb + 64 * i);
            const uint8_t *c = w + b * BT_BLOCK_BYTES;
            t1_block(_mm512_loadu_si512(c), xv, &a0, &b0);
            if (R > 1) t1_block(_mm512_loadu_si512(c + stride), xv, &a1, &b1);
            if (R > 2) t1_block(_mm512_loadu_si512(c + 2 * stride), xv, &a2, &b2);
            if (R > 3) t1_block(_mm512_loadu_si512(c + 3 * stride), xv, &a3, &b3);
        }
        if (c1 == nfull && tb) { /* the narrow last block: tb bytes, plane i at tb * i */
            const __mmask64 k = ((__mmask64)1 << tb) - 1;
            const int8_t *xb = x + nfull * BT_T1_BLOCK;
            __m512i xv[5];
#pragma GCC unroll 5
            for (int i = 0; i < 5; i++) xv[i] = _mm512_loadu_si512(xb + tb * i);
            const uint8_t *c = w + nfull * BT_BLOCK_BYTES;
            t1_block(_mm512_maskz_loadu_epi8(k, c), xv, &a0, &b0);
            if (R > 1) t1_block(_mm512_maskz_loadu_epi8(k, c + stride), xv, &a1, &b1);
            if (R > 2) t1_block(_mm512_maskz_loadu_epi8(k, c + 2 * stride), xv, &a2, &b2);
            if (R > 3) t1_block(_mm512_maskz_loadu_epi8(k, c + 3 * stride), xv, &a3, &b3);
            c0 = nfull; /* done */
        }
        s0 = t1_flush(s0, a0, b0);
        if (R > 1) s1 = t1_flush(s1, a1, b1);
        if (R > 2) s2 = t1_flush(s2, a2, b2);
        if (R > 3) s3 = t1_flush(s3, a3, b3);
    }
    int32_t tmp[4];
    reduce4(s0, s1, s2, s3, tmp);
    for (int r = 0; r < R; r++) dot[r] = tmp[r];
}

T512 static void t1_gemv_4(const uint8_t *w, int64_t stride, const int8_t *x, int32_t *d) {
    t1_gemv_tile(w, stride, x, 4, d);
}
T512 static void t1_gemv_1(const uint8_t *w, int64_t stride, const int8_t *x, int32_t *d) {
    t1_gemv_tile(w, stride, x, 1, d);
}

T512 void bt_i8t1_avx512(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                         int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    int32_t dot[4];
    for (int64_t m = 0; m < M; m++) {
        const int8_t *x = xq + m * ldq;
        int64_t n = n0;
        for (; n + 4 <= n1; n += 4) {
            t1_gemv_4(w->codes + n * w->stride, w->stride, x, dot);
            for (int r = 0; r < 4; r++) out[m * ldo + n + r] = dot[r] - sums[m];
        }
        for (; n < n1; n++) {
            t1_gemv_1(w->codes + n * w->stride, w->stride, x, dot);
            out[m * ldo + n] = dot[0] - sums[m];
        }
    }
}

/* t1 row -> one code byte per weight (bt_t1_u8_fn): code = [p >= 86] + [p >= 171] for each
 * p_i of a 64-byte block; the narrow last block goes through the scalar decoder. */
T512 void bt_t1_u8_avx512(const uint8_t *row, int64_t stride, uint8_t *u) {
    const int64_t nfull = stride / BT_BLOCK_BYTES, tb = stride % BT_BLOCK_BYTES;
    const __m512i t1 = _mm512_set1_epi8(85), t2 = _mm512_set1_epi8((char)170), one = _mm512_set1_epi8(1);
    for (int64_t b = 0; b < nfull; b++) {
        __m512i p = _mm512_loadu_si512(row + b * BT_BLOCK_BYTES);
        for (int i = 0; i < 5; i++) {
            const __mmask64 k1 = _mm512_cmpgt_epu8_mask(p, t1), k2 = _mm512_cmpgt_epu8_mask(p, t2);
            const __m512i c = _mm512_mask_add_epi8(_mm512_maskz_mov_epi8(k1, one), k2, _mm512_maskz_mov_epi8(k1, one), one);
            _mm512_storeu_si512(u + b * BT_T1_BLOCK + 64 * i, c);
            p = times3(p);
        }
    }
    if (tb) bt_t1_u8_scalar(row + nfull * BT_BLOCK_BYTES, tb, u + nfull * BT_T1_BLOCK);
}

/* Float panels (contract in bt_isa_kernels.h): C[i*ldc + j] = s * sum_{p<P} A(i, p) * B[p*32 + j].
 *
 * Register tile: 12 rows of A x the whole 32-column panel, 24 zmm accumulators (acc[i][h]
 * holds row i, columns 16h..16h+15).  Per p the two B vectors of panel row p are loaded once
 * and each of the 12 A values is broadcast once and fused-multiply-added into both halves:
 * 24 FMAs for 14 loads, 24 + 2 + 1 = 27 zmm.  Tails of 1..11 rows use the same code.
 *
 * Blocking (bt_panels_avx512): row blocks of BT_AVX512_MC (their C block, MC x 32G floats, stays
 * in L2 through the depth blocks), then depth blocks of BT_AVX512_KC (the A block, MC x KC
 * floats, stays in L2 while every panel of the group uses it), then the panels of the group
 * (the B slice of a panel, KC x 32 floats = 32 KiB, stays in L1 while every row tile of the
 * block walks it), then the row tiles.  A is read in place when its rows
 * are contiguous in p (sp == 1, one tile of rows); otherwise (A^T of sgemm_tn, sa == 1) each
 * A block is first packed into tiles [KC][12] (one thread-local buffer, bt_arena.h), so that
 * the broadcasts read sequentially.  Groups are large (group_kib 4 MiB, up to 16 panels = 512
 * columns): the A block is packed once per group, and packing is what costs (A^T rows 2^k bytes
 * apart, fetched from L3 without the prefetchers' help), while the group's B slices (G x 32 KiB
 * per depth block) stream in sequentially.
 * Between depth blocks the running sums are parked in C, unscaled, and reloaded as they
 * were: each output is still the single FMA chain over p = 0..P-1 in order, from +0,
 * multiplied by s once after the last block -- the operations of bt_panel_scalar, so the
 * same bits.  Columns j >= nc of C are never read or written (masked loads and stores). */
#ifndef BT_AVX512_KC
#define BT_AVX512_KC 256
#endif
#ifndef BT_AVX512_MC
#define BT_AVX512_MC 240 /* a multiple of 12 */
#endif
#define F_MR 12

/* Rows [0, MR) of a tile (row i at A + i*sa, then + p*sp), kc depth steps of B (32 floats
 * each); first: start from 0, else reload C; last: store s * sums, else the sums. */
T512 INLINE void ftile(const float *A, int64_t sa, int64_t sp, const float *B, int64_t kc, float *C,
                       int64_t ldc, const int MR, __mmask16 k0, __mmask16 k1, float s, int first, int last) {
    __m512 acc[F_MR][2];
    if (first) {
#pragma GCC unroll 12
        for (int i = 0; i < F_MR; i++) {
            if (i >= MR) break;
            acc[i][0] = acc[i][1] = _mm512_setzero_ps();
        }
    } else {
        const float *Cl = C;
        __asm__("" : "+r"(Cl)); /* row addresses made here, not kept live through the loop */
#pragma GCC unroll 12
        for (int i = 0; i < F_MR; i++) {
            if (i >= MR) break;
            acc[i][0] = _mm512_maskz_loadu_ps(k0, Cl + i * ldc);
            acc[i][1] = _mm512_maskz_loadu_ps(k1, Cl + i * ldc + 16);
        }
    }
    const float *ap = A;
    for (int64_t p = 0; p < kc; p++) {
        const __m512 b0 = _mm512_loadu_ps(B + p * BT_PANEL), b1 = _mm512_loadu_ps(B + p * BT_PANEL + 16);
#pragma GCC unroll 12
        for (int i = 0; i < F_MR; i++) {
            if (i >= MR) break;
            const __m512 a = _mm512_set1_ps(ap[i * sa]);
            acc[i][0] = _mm512_fmadd_ps(a, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(a, b1, acc[i][1]);
        }
        ap += sp;
    }
    float *Cs = C;
    __asm__("" : "+r"(Cs));
    const __m512 sv = _mm512_set1_ps(s);
#pragma GCC unroll 12
    for (int i = 0; i < F_MR; i++) {
        if (i >= MR) break;
        _mm512_mask_storeu_ps(Cs + i * ldc, k0, last ? _mm512_mul_ps(acc[i][0], sv) : acc[i][0]);
        _mm512_mask_storeu_ps(Cs + i * ldc + 16, k1, last ? _mm512_mul_ps(acc[i][1], sv) : acc[i][1]);
    }
}

typedef void ftile_fn(const float *A, int64_t sa, int64_t sp, const float *B, int64_t kc, float *C,
                      int64_t ldc, __mmask16 k0, __mmask16 k1, float s, int first, int last);
#define FTILE(MR)                                                                                        \
    T512 static void ftile_##MR(const float *A, int64_t sa, int64_t sp, const float *B, int64_t kc,     \
                                float *C, int64_t ldc, __mmask16 k0, __mmask16 k1, float s, int first,  \
                                int last) {                                                            \
        ftile(A, sa, sp, B, kc, C, ldc, MR, k0, k1, s, first, last);                                   \
    }
FTILE(1)
FTILE(2)
FTILE(3)
FTILE(4)
FTILE(5)
FTILE(6)
FTILE(7)
FTILE(8)
FTILE(9)
FTILE(10)
FTILE(11)
FTILE(12)
#undef FTILE
static ftile_fn *const ftiles[F_MR + 1] = {NULL,     ftile_1, ftile_2, ftile_3, ftile_4,  ftile_5, ftile_6,
                                           ftile_7,  ftile_8, ftile_9, ftile_10, ftile_11, ftile_12};

/* Row i of A (the tiles of H rows of the contract), depth 0. */
static inline const float *a_row(const float *A, int64_t sa, int64_t H, int64_t ts, int64_t i) {
    return A + (i / H) * ts + (i % H) * sa;
}

/* Rows [m0, m1) x depth [k0, k0 + kc) of A into tiles of 12 rows, tile t at dst + t*12*kc laid
 * out [kc][12] (rows past m1 of the last tile are left as they are: never stored to C).  When
 * the rows of the block lie side by side (sa == 1, one tile of the contract), the block is read
 * one p at a time, its mc floats in order: with a power-of-two sp, a walk down p per tile would
 * land every line in the same few cache sets and miss in L1 and L2 alike. */
T512 static void pack_a(const float *A, int64_t sa, int64_t sp, int64_t H, int64_t ts, int64_t m0, int64_t m1,
                        int64_t k0, int64_t kc, float *dst) {
    if (sa == 1 && (m0 % H) + (m1 - m0) <= H) {
        const float *src = a_row(A, sa, H, ts, m0) + k0 * sp;
        const int64_t nt = (m1 - m0) / F_MR, tail = (m1 - m0) % F_MR;
        const __mmask16 km = (__mmask16)((1u << F_MR) - 1u), kt = (__mmask16)((1u << tail) - 1u);
        for (int64_t p = 0; p < kc; p++) {
            const float *row = src + p * sp;
            float *d = dst + p * F_MR;
            for (int64_t t = 0; t < nt; t++)
                _mm512_mask_storeu_ps(d + t * F_MR * kc, km, _mm512_maskz_loadu_ps(km, row + t * F_MR));
            if (tail) _mm512_mask_storeu_ps(d + nt * F_MR * kc, kt, _mm512_maskz_loadu_ps(kt, row + nt * F_MR));
        }
        return;
    }
    for (int64_t t0 = m0; t0 < m1; t0 += F_MR) {
        const int mr = m1 - t0 < F_MR ? (int)(m1 - t0) : F_MR;
        float *d = dst + (t0 - m0) * kc;
        for (int i = 0; i < mr; i++) {
            const float *src = a_row(A, sa, H, ts, t0 + i) + k0 * sp;
            for (int64_t p = 0; p < kc; p++) d[p * F_MR + i] = src[p * sp];
        }
    }
}

/* G panels, panel g at B + g*ldp (P x 32 floats) giving columns C + 32g, all full but the last
 * (nc_last columns); A(i, p) = A[(i / H)*ts + (i % H)*sa + p*sp]. */
T512 void bt_panels_avx512(const float *A, int64_t sa, int64_t sp, int64_t H, int64_t ts, int64_t M,
                           const float *B, int64_t ldp, int G, int64_t P, float *C, int64_t ldc, int nc_last,
                           float s) {
    if (M <= 0) return;
    const int direct = sp == 1 && H >= M; /* rows of A read in place */
    float *pk = NULL;
    if (!direct) {
        const int64_t kcmax = P < BT_AVX512_KC ? (P > 0 ? P : 1) : BT_AVX512_KC;
        const int64_t mcmax = M < BT_AVX512_MC ? (M + F_MR - 1) / F_MR * F_MR : BT_AVX512_MC;
        pk = (float *)bt_scratch(BT_SCRATCH_APACK, (size_t)(mcmax * kcmax) * sizeof(float));
        /* out of memory: read A in place with its strides (slower, same results) */
    }
    const __mmask16 full = 0xFFFF;
    const __mmask16 l0 = nc_last >= 16 ? full : (__mmask16)((1u << nc_last) - 1u);
    const __mmask16 l1 = nc_last >= 32 ? full : (nc_last <= 16 ? 0 : (__mmask16)((1u << (nc_last - 16)) - 1u));
    for (int64_t m0 = 0; m0 < M; m0 += BT_AVX512_MC) {
        const int64_t m1 = M - m0 > BT_AVX512_MC ? m0 + BT_AVX512_MC : M;
        int64_t k0 = 0;
        do { /* at least one depth block, so that P == 0 still writes s * 0 */
            const int64_t kc = P - k0 > BT_AVX512_KC ? BT_AVX512_KC : P - k0;
            const int first = k0 == 0, last = k0 + kc == P;
            if (pk) pack_a(A, sa, sp, H, ts, m0, m1, k0, kc, pk);
            for (int g = 0; g < G; g++) {
                const float *Bg = B + g * ldp + k0 * BT_PANEL;
                float *Cg = C + g * BT_PANEL;
                const __mmask16 k0m = g == G - 1 ? l0 : full, k1m = g == G - 1 ? l1 : full;
                for (int64_t i = m0; i < m1; i += F_MR) {
                    const int mr = m1 - i < F_MR ? (int)(m1 - i) : F_MR;
                    float *Ci = Cg + i * ldc;
                    if (pk)
                        ftiles[mr](pk + (i - m0) * kc, 1, F_MR, Bg, kc, Ci, ldc, k0m, k1m, s, first, last);
                    else if (direct)
                        ftiles[mr](A + i * sa + k0, sa, 1, Bg, kc, Ci, ldc, k0m, k1m, s, first, last);
                    else
                        for (int r = 0; r < mr; r++) /* rows one at a time: any H, ts */
                            ftiles[1](a_row(A, sa, H, ts, i + r) + k0 * sp, 0, sp, Bg, kc, Ci + r * ldc, ldc, k0m,
                                      k1m, s, first, last);
                }
            }
            k0 += kc;
        } while (k0 < P);
    }
}

T512 void bt_panel_avx512(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                          float *C, int64_t ldc, int nc, float s) {
    bt_panels_avx512(A, sa, sp, M > 0 ? M : 1, 0, M, B, 0, 1, P, C, ldc, nc, s);
}

/* Panel of dequantized codes (bt_fill_q8_scalar): sixteen codes widened to floats and divided
 * by a[p] at a time (vdivps: the same correctly rounded quotients as the scalar division),
 * masked past nc. */
T512 void bt_fill_q8_avx512(const int8_t *q, int64_t ldq, const float *a, int64_t P, int nc, float *B) {
    const __mmask16 k0 = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1u);
    const __mmask16 k1 = nc >= 32 ? 0xFFFF : (nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1u));
    for (int64_t p = 0; p < P; p++) {
        const int8_t *src = q + p * ldq;
        const __m512 ap = _mm512_set1_ps(a[p]);
        const __m512i c0 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k0, src));
        const __m512i c1 = _mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k1, src + 16));
        /* lanes past nc: +0 whatever a[p] is, as in the scalar fill */
        _mm512_storeu_ps(B + p * BT_PANEL, _mm512_maskz_div_ps(k0, _mm512_cvtepi32_ps(c0), ap));
        _mm512_storeu_ps(B + p * BT_PANEL + 16, _mm512_maskz_div_ps(k1, _mm512_cvtepi32_ps(c1), ap));
    }
}

/* Forward float panel (bt_panel_rows_scalar in kernels_scalar.c): B[k*32 + j] = code(n0 + j, k)
 * - 1 for k < bt_padded_cols(K) (padding weights decode to 0), rows past N give 0.  Decodes 16
 * rows x 16 k at a time and transposes the 16x16 tile in registers.  Same bytes as the C version. */
T512 INLINE __m512 decode16(const uint8_t *c, int shift) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    const __m512i code = _mm512_and_si512(_mm512_srl_epi32(v, _mm_cvtsi32_si128(shift)), _mm512_set1_epi32(3));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(code, _mm512_set1_epi32(1)));
}

/* The same 16 x 16 transpose on floats (moves only: the bits are kept). */
T512 INLINE void transpose16(__m512 r[16]) {
    __m512i v[16];
    for (int i = 0; i < 16; i++) v[i] = _mm512_castps_si512(r[i]);
    bt_transpose16_i32(v);
    for (int i = 0; i < 16; i++) r[i] = _mm512_castsi512_ps(v[i]);
}

T512 void bt_panel_rows_avx512(const bt_ternary *w, int64_t n0, float *B) {
    const int64_t kp = bt_padded_cols(w->cols);
    const int nr = w->rows - n0 < BT_PANEL ? (int)(w->rows - n0) : BT_PANEL;
    const uint8_t *base = w->codes + n0 * w->stride;
    for (int64_t k0 = 0; k0 < kp; k0 += 16) {
        const int64_t off = (k0 / BT_BLOCK) * BT_BLOCK_BYTES + (k0 & 63);
        const int shift = 2 * (int)((k0 % BT_BLOCK) >> 6);
        for (int h = 0; h < 2; h++) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                const int j = 16 * h + i;
                r[i] = j < nr ? decode16(base + j * w->stride + off, shift) : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int i = 0; i < 16; i++) _mm512_storeu_ps(B + (k0 + i) * BT_PANEL + 16 * h, r[i]);
        }
    }
}

/* Transposed float panel (bt_panel_cols_scalar in kernels_scalar.c): B[n*32 + j] =
 * code(n, k0 + j) - 1, cols past K give 0. */
T512 void bt_panel_cols_avx512(const bt_ternary *w, int64_t k0, float *B) {
    const int64_t off = (k0 / BT_BLOCK) * BT_BLOCK_BYTES + (k0 & 63);
    const int shift = 2 * (int)((k0 % BT_BLOCK) >> 6);
    const int nc = w->cols - k0 < BT_PANEL ? (int)(w->cols - k0) : BT_PANEL;
    const __mmask16 m0 = nc >= 16 ? 0xFFFF : (__mmask16)((1u << nc) - 1u);
    const __mmask16 m1 = nc >= 32 ? 0xFFFF : (nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1u));
    for (int64_t n = 0; n < w->rows; n++) {
        const uint8_t *c = w->codes + n * w->stride + off;
        _mm512_storeu_ps(B + n * BT_PANEL, _mm512_maskz_mov_ps(m0, decode16(c, shift)));
        _mm512_storeu_ps(B + n * BT_PANEL + 16, _mm512_maskz_mov_ps(m1, decode16(c + 16, shift)));
    }
}

/* Activation quantization (bt_quant.h), 16 floats at a time. */
T512 int bt_quant_rows_avx512(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q,
                              int64_t ldq, float *a, int32_t *sums) {
    const __m512 zero = _mm512_setzero_ps(), lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * ldx;
        __m512 vmax = zero, vbad = zero;
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 mk = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
            const __m512 v = _mm512_maskz_loadu_ps(mk, row + k);
            vmax = _mm512_max_ps(vmax, _mm512_abs_ps(v));
            vbad = _mm512_add_ps(vbad, _mm512_mul_ps(v, zero));
        }
        if (_mm512_cmp_ps_mask(vbad, vbad, _CMP_UNORD_Q)) return BT_ERR_NONFINITE;
        const float amax = _mm512_reduce_max_ps(vmax);
        const float scale = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
        const __m512 sv = _mm512_set1_ps(scale);
        __m512i vsum = _mm512_setzero_si512();
        int8_t *dst = q + m * ldq;
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 mk = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1u);
            __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, row + k), sv),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
            const __m512i iv = _mm512_cvtps_epi32(r);
            vsum = _mm512_add_epi32(vsum, iv);
            _mm_mask_storeu_epi8(dst + k, mk, _mm512_cvtepi32_epi8(iv));
        }
        if (ldq > K) memset(dst + K, 0, (size_t)(ldq - K));
        a[m] = scale;
        if (sums) sums[m] = _mm512_reduce_add_epi32(vsum);
    }
    return BT_OK;
}

/* int8 x int8 rows of bt_gemm_s8 (bt_int8.h) with VNNI.  vpdpbusd multiplies unsigned by signed
 * bytes, so the activations are offset to unsigned bytes u = x + 128 (x ^ 0x80): sum_k u w =
 * dot(w, x) + 128 sum_k w, and the correction 128 sum_k w of a row is made by the same
 * instruction, vpdpbusd(0x80 bytes, w).  All sums are int32 and wrap alike, so dot is the exact
 * sum of the scalar rows; y = (float)dot * (ws[n] / a[m]) as there.  K tails: masked loads
 * (zero weights add 0 to both sums).  Tiles of 4 rows x up to 4 tokens; rows go in chunks of
 * about S8_CHUNK bytes (they stay in L2 while every token tile walks them), and a chunk's
 * corrections are made with its first token tile and kept for the others.  One token
 * (decoding, bound by the read of W): the AVX2 rows as before, a read-ahead stream (a VNNI
 * loop over the 32000 x 2048 head measured no faster: 11-11.7 against 11.3-12.7 GB/s). */
#ifndef S8_CHUNK
#define S8_CHUNK (256 * 1024)
#endif
#define S8_CHUNK_ROWS 1024 /* at most this many rows per chunk (their corrections on the stack) */

T512 INLINE int32_t hsum16(__m512i v) { return _mm512_reduce_add_epi32(v); }

/* R rows (1 or 4) x T tokens (1..4) over K: dot[r*4 + t] = sum_k u w; corr: also c[r] = 128 sum_k w. */
T512 INLINE void s8_tile(const int8_t *W, int64_t ldw, int64_t K, const int8_t *xq, int64_t ldx, const int R,
                         const int T, const int corr, int32_t *dot, int32_t *c) {
    const __m512i flip = _mm512_set1_epi8((char)0x80), z = _mm512_setzero_si512();
    __m512i acc[4][4], cs[4];
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        cs[r] = z;
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) acc[r][t] = z;
    }
    for (int64_t k = 0; k < K; k += 64) {
        const __mmask64 km = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
        __m512i w[4];
#pragma GCC unroll 4
        for (int r = 0; r < 4; r++) {
            if (r >= R) break;
            w[r] = _mm512_maskz_loadu_epi8(km, W + r * ldw + k);
            if (corr) cs[r] = _mm512_dpbusd_epi32(cs[r], flip, w[r]);
        }
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            if (t >= T) break;
            const __m512i u = _mm512_xor_si512(_mm512_maskz_loadu_epi8(km, xq + t * ldx + k), flip);
#pragma GCC unroll 4
            for (int r = 0; r < 4; r++) {
                if (r >= R) break;
                acc[r][t] = _mm512_dpbusd_epi32(acc[r][t], u, w[r]);
            }
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
        if (r >= R) break;
        if (corr) c[r] = hsum16(cs[r]);
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            if (t >= T) break;
            dot[r * 4 + t] = hsum16(acc[r][t]);
        }
    }
}

typedef void s8_tile_fn(const int8_t *W, int64_t ldw, int64_t K, const int8_t *xq, int64_t ldx, int32_t *dot,
                        int32_t *c);
#define S8_TILE(R, T, C)                                                                                    \
    T512 static void s8_tile_##R##_##T##_##C(const int8_t *W, int64_t ldw, int64_t K, const int8_t *xq,    \
                                             int64_t ldx, int32_t *dot, int32_t *c) {                      \
        s8_tile(W, ldw, K, xq, ldx, R, T, C, dot, c);                                                      \
    }
#define S8_TILES(R, C) S8_TILE(R, 1, C) S8_TILE(R, 2, C) S8_TILE(R, 3, C) S8_TILE(R, 4, C)
S8_TILES(4, 0)
S8_TILES(4, 1)
S8_TILES(1, 0)
S8_TILES(1, 1)
#undef S8_TILES
#undef S8_TILE
/* [rows 4 or 1][corrections made][tokens - 1] */
static s8_tile_fn *const s8_tiles[2][2][4] = {
    {{s8_tile_4_1_0, s8_tile_4_2_0, s8_tile_4_3_0, s8_tile_4_4_0}, {s8_tile_4_1_1, s8_tile_4_2_1, s8_tile_4_3_1, s8_tile_4_4_1}},
    {{s8_tile_1_1_0, s8_tile_1_2_0, s8_tile_1_3_0, s8_tile_1_4_0}, {s8_tile_1_1_1, s8_tile_1_2_1, s8_tile_1_3_1, s8_tile_1_4_1}},
};

/* Many tokens, K a multiple of 4 (from BT_P8_MIN_TOKENS): the i8 panels above on offset weights.
 * Rows of W are packed into the same 48-row panels as the ternary codes, as unsigned bytes
 * w + 128 (w ^ 0x80), and the activations stay signed, broadcast: sum_k (w + 128) x = dot(w, x)
 * + 128 sum_k x, so each token subtracts 128 times its sum (int32, exact as all these sums).
 * y = (float)dot * (ws[n] / a[m]) as in the scalar rows, one division per output there too. */
T512 static void s8_pack(const int8_t *W, int64_t ldw, int64_t n, int nr, int64_t K, uint8_t *P) {
    const __m512i flip = _mm512_set1_epi8((char)0x80), z = _mm512_setzero_si512();
    const int nv = (nr + 15) / 16;
    const int64_t nk4 = K / 4;
    for (int v = 0; v < nv; v++) {
        const int rows = nr - 16 * v < 16 ? nr - 16 * v : 16;
        const int8_t *src = W + (n + 16 * v) * ldw;
        for (int64_t k = 0; k < K; k += 64) {
            const __mmask64 km = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            __m512i c[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++)
                c[i] = i < rows ? _mm512_xor_si512(_mm512_maskz_loadu_epi8(km, src + i * ldw + k), flip) : z;
            bt_transpose16_i32(c);
            uint8_t *dst = P + ((k / 4) * nv + v) * 64;
            const int steps = nk4 - k / 4 < 16 ? (int)(nk4 - k / 4) : 16;
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++)
                if (j < steps) _mm512_storeu_si512(dst + j * nv * 64, c[j]);
        }
    }
}

/* Rows [n0, n1) of bt_gemm_s8 through the panels (K % 4 == 0); 0 when the buffer cannot be had. */
T512 static int s8_panels(const int8_t *W, int64_t ldw, const float *ws, int64_t n0, int64_t n1, int64_t K,
                          const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    const int64_t nk4 = K / 4, pbytes = P8_ROWS * K;
    const int64_t npan = (n1 - n0 + P8_ROWS - 1) / P8_ROWS;
    int64_t cpan = P8_CHUNK / pbytes;
    cpan = cpan < 1 ? 1 : (cpan > npan ? npan : cpan);
    uint8_t *buf = (uint8_t *)bt_scratch(BT_SCRATCH_S8, (size_t)(cpan * pbytes) + ((size_t)M * 4 + 63) / 64 * 64);
    if (!buf) return 0;
    int32_t *xs = (int32_t *)(buf + cpan * pbytes);
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t m = 0; m < M; m++) { /* 128 sum_k x of each token */
        __m512i acc = _mm512_setzero_si512();
        for (int64_t k = 0; k < K; k += 64) {
            const __mmask64 km = K - k >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (K - k)) - 1);
            acc = _mm512_dpbusd_epi32(acc, ones, _mm512_maskz_loadu_epi8(km, xq + m * ldx + k));
        }
        xs[m] = (int32_t)((uint32_t)_mm512_reduce_add_epi32(acc) << 7);
    }
    for (int64_t q0 = 0; q0 < npan; q0 += cpan) {
        const int64_t q1 = npan - q0 < cpan ? npan : q0 + cpan;
        for (int64_t q = q0; q < q1; q++) {
            const int64_t n = n0 + q * P8_ROWS;
            s8_pack(W, ldw, n, n1 - n < P8_ROWS ? (int)(n1 - n) : P8_ROWS, K, buf + (q - q0) * pbytes);
        }
        for (int64_t m = 0; m < M; m += P8_TM) {
            const int tm = M - m < P8_TM ? (int)(M - m) : P8_TM;
            for (int64_t q = q0; q < q1; q++) {
                const int64_t n = n0 + q * P8_ROWS;
                const int nc = n1 - n < P8_ROWS ? (int)(n1 - n) : P8_ROWS;
                p8_tiles[tm - 1][(nc + 15) / 16 - 1](buf + (q - q0) * pbytes, nk4, xq + m * ldx, ldx, xs + m, NULL,
                                                     ws + n, a + m, (int32_t *)(y + m * ldy + n), ldy, nc);
            }
        }
    }
    return 1;
}

/* One token (decoding), rows ldw = K bytes apart: one stream, each line prefetched this many
 * bytes ahead. */
#ifndef S8_PF1
#define S8_PF1 4096
#endif

/* |w| . (sign(w) x) by vpdpbusd: the mask of w < 0 negates x (|x| <= 127), |w| <= 127 is the
 * unsigned operand; four exact products per int32 lane and no saturation, so the sums are the
 * other paths' int32 sums, 128 bytes a step in two accumulators. */
T512 static void s8_row1_avx512(const int8_t *W, const float *ws, int64_t n0, int64_t n1, int64_t K,
                                const int8_t *xq, float a0, float *y) {
    const __m512i zero = _mm512_setzero_si512();
    const int64_t K64 = K & ~(int64_t)63;
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = W + n * K;
        __m512i acc0 = zero, acc1 = zero;
        int64_t k = 0;
        for (; k + 128 <= K64; k += 128) {
            _mm_prefetch((const char *)(w + k + S8_PF1), _MM_HINT_T0);
            _mm_prefetch((const char *)(w + k + S8_PF1 + 64), _MM_HINT_T0);
            const __m512i w0 = _mm512_loadu_si512((const void *)(w + k));
            const __m512i w1 = _mm512_loadu_si512((const void *)(w + k + 64));
            const __m512i x0 = _mm512_loadu_si512((const void *)(xq + k));
            const __m512i x1 = _mm512_loadu_si512((const void *)(xq + k + 64));
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_abs_epi8(w0),
                                       _mm512_mask_sub_epi8(x0, _mm512_movepi8_mask(w0), zero, x0));
            acc1 = _mm512_dpbusd_epi32(acc1, _mm512_abs_epi8(w1),
                                       _mm512_mask_sub_epi8(x1, _mm512_movepi8_mask(w1), zero, x1));
        }
        for (; k < K64; k += 64) {
            _mm_prefetch((const char *)(w + k + S8_PF1), _MM_HINT_T0);
            const __m512i w0 = _mm512_loadu_si512((const void *)(w + k));
            const __m512i x0 = _mm512_loadu_si512((const void *)(xq + k));
            acc0 = _mm512_dpbusd_epi32(acc0, _mm512_abs_epi8(w0),
                                       _mm512_mask_sub_epi8(x0, _mm512_movepi8_mask(w0), zero, x0));
        }
        int32_t s = _mm512_reduce_add_epi32(_mm512_add_epi32(acc0, acc1));
        for (; k < K; k++) s += (int32_t)w[k] * (int32_t)xq[k];
        y[n] = (float)s * (ws[n] / a0);
    }
}

T512 void bt_s8_rows_avx512(const int8_t *W, int64_t ldw, const float *ws, int64_t n0, int64_t n1, int64_t K,
                            const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    if (M == 1 && ldw == K) { /* one token (decoding): memory-bound, one stream */
        s8_row1_avx512(W, ws, n0, n1, K, xq, a[0], y);
        return;
    }
    if (M == 1) { /* strided rows: the AVX2 kernel */
        bt_s8_rows_avx2(W, ldw, ws, n0, n1, K, xq, ldx, a, M, y, ldy);
        return;
    }
    if (M >= BT_P8_MIN_TOKENS && K > 0 && K % 4 == 0 && s8_panels(W, ldw, ws, n0, n1, K, xq, ldx, a, M, y, ldy))
        return;
    int64_t chunk = K > 0 ? S8_CHUNK / K / 4 * 4 : S8_CHUNK_ROWS;
    chunk = chunk < 4 ? 4 : (chunk > S8_CHUNK_ROWS ? S8_CHUNK_ROWS : chunk);
    int32_t corr[S8_CHUNK_ROWS];
    int32_t dot[16];
    for (int64_t r0 = n0; r0 < n1; r0 += chunk) {
        const int64_t r1 = n1 - r0 < chunk ? n1 : r0 + chunk;
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
            const int T = M - m0 < 4 ? (int)(M - m0) : 4;
            const int mk = m0 == 0; /* the chunk's first token tile makes its corrections */
            const int8_t *x = xq + m0 * ldx;
            for (int64_t n = r0; n < r1;) {
                const int R = r1 - n >= 4 ? 4 : 1;
                s8_tiles[R == 4 ? 0 : 1][mk][T - 1](W + n * ldw, ldw, K, x, ldx, dot, corr + (n - r0));
                for (int r = 0; r < R; r++)
                    for (int t = 0; t < T; t++) {
                        const int32_t d = dot[r * 4 + t] - corr[n - r0 + r];
                        y[(m0 + t) * ldy + n + r] = (float)d * (ws[n + r] / a[m0 + t]);
                    }
                n += R;
            }
        }
    }
}

/* AVX-512: its own int8, float panels (12-row tiles, A packed by the panels kernel), panel fill,
 * quantization and int8 head (VNNI) kernels; the decoded TTT head is the AVX2 one. */
const bt_isa_ops bt_ops_avx512 = {
    .isa = BT_ISA_AVX512,
    .i8 = bt_i8_avx512,
    .i8_t1 = bt_i8t1_avx512,
    .t1_u8 = bt_t1_u8_avx512,
    .i8f = i8f_avx512,
    .panel = bt_panel_avx512,
    .panels = bt_panels_avx512,
    .pack_a = 1,
    .group_kib = 4096, /* 4 MiB of panels (measured: 1.2-1.3x the 1 MiB groups on the dW and head GEMMs) */
    .atile = 12,
    .panel_rows = bt_panel_rows_avx512,
    .panel_cols = bt_panel_cols_avx512,
    .fill_q8 = bt_fill_q8_avx512,
    .fill_t = bt_fill_t_avx2,
    .quant = bt_quant_rows_avx512,
    .s8_rows = bt_s8_rows_avx512,
    .swiglu_fwd = bt_swiglu_fwd_avx512,
    .swiglu_bwd = bt_swiglu_bwd_avx512,
    .xent = bt_xent_avx512,
    .ttt_fwd = bt_ttt_fwd_avx512,
    .ttt_bwd = bt_ttt_bwd_avx512,
    .ttt_head = bt_ttt_head_avx2,
};

#endif /* BT_HAVE_X86 */
