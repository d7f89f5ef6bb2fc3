/*
 * bt_ternary.h -- the packed ternary (1.58-bit) matrix: layout, struct, packing.
 *
 * One matrix W of shape [rows, cols] (rows = output features N, cols = input
 * features K) with one float32 scale s (BitNet b1.58 absmean rule):
 *
 *     s     = mean(|W|) + 1e-5
 *     w[i]  = clip(round(W[i] / s), -1, 1)          in {-1, 0, +1}
 *     W    ~= s * w
 *
 * Codes.  Each weight is stored as the 2-bit unsigned code  c = w + 1:
 *
 *     w = -1  ->  c = 0b00        w = +1  ->  c = 0b10
 *     w =  0  ->  c = 0b01        c = 0b11 is invalid (rejected on load)
 *
 * Storing w + 1 (unsigned, 0..2) lets the int8 kernels feed the codes
 * straight into unsigned-by-signed byte products (VNNI vpdpbusd, AVX2
 * vpmaddubsw) and fix the offset once per token:  dot(w, x) = dot(c, x) - sum(x).
 *
 * Blocks.  A row is cut into blocks of BT_BLOCK = 256 weights held in 64 bytes.
 * Byte j (0..63) of block b holds four weights, one per 2-bit "plane":
 *
 *      bit  7   6   5   4   3   2   1   0
 *          [ k+192 ][ k+128 ][ k+64  ][  k    ]      k = 256*b + j
 *            plane 3  plane 2  plane 1  plane 0
 *
 * so plane p of a block is 64 consecutive weights [256b + 64p, 256b + 64p + 64),
 * and one 64-byte load + (shift, and 0x03) yields 64 codes that line up with
 * 64 consecutive int8 activations.  An AVX2 kernel takes the block as two
 * 32-byte halves (bytes 0..31 hold k = 256b + 64p + 0..31, bytes 32..63 hold
 * k = 256b + 64p + 32..63); the scalar kernel reads bytes one by one.  Every
 * path reads this same layout.
 *
 * Rows.  The row stride is stride = ceil(cols / 256) * 64 bytes (a multiple of
 * 64), so every row starts on a 64-byte boundary when `codes` is 64-byte
 * aligned.  Weights past `cols` (the padding of the last block) hold code 0b01
 * (w = 0): they contribute nothing to any product.  Storage is exactly
 * 2 bits per weight plus 4 bytes of scale when cols is a multiple of 256.
 *
 * Limits.  1 <= rows, 1 <= cols <= BT_MAX_COLS so that every int32
 * accumulation in the kernels is exact (|dot(c, x)| <= 2 * 128 * cols).
 *
 * ---- Format t1: 1.6 bits per weight (fmt = BT_FMT_T1) ----------------------------------
 *
 * Same codes c = w + 1 in {0, 1, 2}, five per byte (3^5 = 243 <= 256).  A byte holding the
 * codes (c0, c1, c2, c3, c4) stores
 *
 *     v = 81 c0 + 27 c1 + 9 c2 + 3 c3 + c4      (0..242)
 *     q = ceil(256 v / 243) = (256 v + 242) / 243
 *
 * so that q / 256 approximates v / 243 from above, and the codes come back as the successive
 * carries of multiplying by 3 in byte arithmetic:
 *
 *     p0 = q;   c_i = (3 p_i) >> 8;   p_{i+1} = (3 p_i) mod 256       (i = 0..4)
 *
 * Every byte decodes to codes in {0, 1, 2} that way; the 243 bytes q(v) are the valid ones
 * (the 13 others, 1, 20, 40, ..., 237, are rejected on load), and 0x80 holds five zeros.
 * Since 3 p_i - p_{i+1} = 256 c_i exactly, dot(c_i, x) = (3 dot(p_i, x) - dot(p_{i+1}, x)) / 256:
 * the AVX-512 kernel runs vpdpbusd on the bytes p_i themselves (see kernels_avx512.c).
 *
 * Blocks.  A row is cut into blocks of BT_T1_BLOCK = 320 weights held in 64 bytes; byte j
 * (0..63) of block b holds the codes of weights k = 320 b + 64 i + j for "plane" i = 0..4
 * (c0 is plane 0), so that plane i of a block is 64 consecutive weights, as in t2.  The last
 * block of a row is narrower when fewer weights remain: it holds r = cols - 320 (nblk - 1)
 * weights (1 <= r <= 320) in tb = 16 ceil(r / 80) bytes (16, 32, 48 or 64), byte j holding
 * weights k = 320 (nblk - 1) + tb i + j, i = 0..4: plane i is tb consecutive weights.
 *
 *     stride = 64 (nblk - 1) + tb   bytes per row,   nblk = ceil(cols / 320)
 *
 * a multiple of 16, not of 64: rows are packed back to back (16-byte aligned when `codes`
 * is), and a row of cols weights takes ceil(cols / 80) * 16 bytes: 1.6 bits per weight when
 * cols is a multiple of 80.  Weights past cols hold code 1 (w = 0).  Activations given to the
 * t1 kernels are padded with zeros to bt_fmt_padded_cols(BT_FMT_T1, cols) = a multiple of
 * both 256 and 320 past cols (the narrow last block reads 64-byte activation vectors that end
 * inside the last 320).
 */
#ifndef BT_TERNARY_H
#define BT_TERNARY_H

#include <stddef.h>
#include <stdint.h>

#include "bt_common.h"

#define BT_BLOCK 256           /* weights per block                    */
#define BT_BLOCK_BYTES 64      /* bytes per block                      */
#define BT_ALIGN 64            /* alignment of codes and of every row  */
#define BT_MAX_COLS (1 << 22)  /* keeps int32 accumulators exact       */
#define BT_CODE_ZERO 0x55u     /* a byte of four zero weights          */

#define BT_FMT_T2 0            /* 2 bits per weight (the layout above) */
#define BT_FMT_T1 1            /* 1.6 bits per weight (format t1)      */
#define BT_T1_BLOCK 320        /* weights per t1 block of 64 bytes     */
#define BT_T1_ZERO 0x80u       /* a t1 byte of five zero weights       */

typedef struct {
    int64_t rows;      /* N: output features                          */
    int64_t cols;      /* K: input features                           */
    int64_t stride;    /* bytes per row: bt_fmt_stride(fmt, cols)      */
    float scale;       /* s: dequantized weight = s * (code - 1)       */
    uint8_t *codes;    /* rows * stride bytes, 64-byte aligned         */
    int fmt;           /* BT_FMT_T2 or BT_FMT_T1                       */
} bt_ternary;

/* Bytes per row for `cols` weights. */
static inline int64_t bt_row_stride(int64_t cols) {
    return ((cols + BT_BLOCK - 1) / BT_BLOCK) * BT_BLOCK_BYTES;
}

/* Cols rounded up to whole blocks (the padded K of the int8 kernels). */
static inline int64_t bt_padded_cols(int64_t cols) {
    return ((cols + BT_BLOCK - 1) / BT_BLOCK) * BT_BLOCK;
}

/* t1: bytes of the last (possibly narrow) block of a row, 16, 32, 48 or 64. */
static inline int64_t bt_t1_tail_bytes(int64_t cols) {
    const int64_t r = cols - (cols - 1) / BT_T1_BLOCK * BT_T1_BLOCK; /* 1..320 */
    return 16 * ((r + 79) / 80);
}

/* t1: bytes per row. */
static inline int64_t bt_t1_row_stride(int64_t cols) {
    return (cols - 1) / BT_T1_BLOCK * BT_BLOCK_BYTES + bt_t1_tail_bytes(cols);
}

static inline int64_t bt_fmt_stride(int fmt, int64_t cols) {
    return fmt == BT_FMT_T1 ? bt_t1_row_stride(cols) : bt_row_stride(cols);
}

/* Activation pitch the int8 kernels of a format need: cols rounded up to whole 256-blocks (t2),
 * or to a multiple of both 256 and 320 (t1: its own kernels read whole 320-blocks; products of
 * many tokens go through t2 copies of its rows). */
static inline int64_t bt_fmt_padded_cols(int fmt, int64_t cols) {
    const int64_t p2 = bt_padded_cols(cols);
    if (fmt != BT_FMT_T1) return p2;
    const int64_t p1 = (cols + BT_T1_BLOCK - 1) / BT_T1_BLOCK * BT_T1_BLOCK;
    return p1 > p2 ? p1 : p2;
}

/* t1: the five codes of byte q, c[0] first (plane 0). */
static inline void bt_t1_decode(unsigned q, unsigned c[5]) {
    for (int i = 0; i < 5; i++) {
        q *= 3u;
        c[i] = q >> 8;
        q &= 255u;
    }
}

/* t1: the byte holding codes c[0..4] (each 0..2). */
static inline uint8_t bt_t1_encode(const unsigned c[5]) {
    const unsigned v = 81u * c[0] + 27u * c[1] + 9u * c[2] + 3u * c[3] + c[4];
    return (uint8_t)((256u * v + 242u) / 243u);
}

/* Code (0, 1 or 2) of weight (r, k). */
static inline unsigned bt_code_at(const bt_ternary *t, int64_t r, int64_t k) {
    const uint8_t *row = t->codes + r * t->stride;
    if (t->fmt == BT_FMT_T1) {
        const int64_t b = k / BT_T1_BLOCK, o = k % BT_T1_BLOCK;
        const int64_t wb = b * BT_BLOCK_BYTES + BT_BLOCK_BYTES <= t->stride ? BT_BLOCK_BYTES
                                                                           : t->stride - b * BT_BLOCK_BYTES;
        unsigned c[5];
        bt_t1_decode(row[b * BT_BLOCK_BYTES + o % wb], c);
        return c[o / wb];
    }
    int64_t b = k / BT_BLOCK, o = k % BT_BLOCK;
    return (row[b * BT_BLOCK_BYTES + (o & 63)] >> (2 * (o >> 6))) & 3u;
}

/* absmean scale of w [rows*cols] (row-major, row pitch ldw floats):
 * s = mean|w| + 1e-5, each row summed in double, the row sums added in row order.
 * BT_ERR_NONFINITE on NaN/inf, BT_ERR_NOMEM if its row buffer cannot be allocated. */
int bt_absmean_scale(const float *w, int64_t rows, int64_t cols, int64_t ldw, float *scale);

/* Quantize w with a given scale into t (t->codes already allocated,
 * t->rows/cols/stride/fmt set).  Codes: clip(rint(w / s), -1, 1) + 1, in t's format. */
int bt_pack(const float *w, int64_t ldw, float scale, bt_ternary *t);

/* out[r*ldo + k] = s * (code - 1) for k < cols. */
void bt_unpack(const bt_ternary *t, float *out, int64_t ldo);

/* Validate codes: no 0b11 code, padding holds 0b01 (t1: every byte one of the 243 valid
 * ones, padding weights 1).  BT_OK or BT_ERR_BADCODE. */
int bt_check_codes(const bt_ternary *t);

/* Rows [r0, r1) of src (either format) rewritten in dst's format into dst->codes (row r of
 * src becomes row r - r0 of dst; dst->cols == src->cols, dst->stride set): the same weights.
 * BT_OK, or BT_ERR_NOMEM when its row buffer cannot be allocated. */
int bt_transcode(const bt_ternary *src, int64_t r0, int64_t r1, bt_ternary *dst);

#endif /* BT_TERNARY_H */
