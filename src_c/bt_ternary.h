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

typedef struct {
    int64_t rows;      /* N: output features                          */
    int64_t cols;      /* K: input features                           */
    int64_t stride;    /* bytes per row: ceil(cols / 256) * 64         */
    float scale;       /* s: dequantized weight = s * (code - 1)       */
    uint8_t *codes;    /* rows * stride bytes, 64-byte aligned         */
} bt_ternary;

/* Bytes per row for `cols` weights. */
static inline int64_t bt_row_stride(int64_t cols) {
    return ((cols + BT_BLOCK - 1) / BT_BLOCK) * BT_BLOCK_BYTES;
}

/* Cols rounded up to whole blocks (the padded K of the int8 kernels). */
static inline int64_t bt_padded_cols(int64_t cols) {
    return ((cols + BT_BLOCK - 1) / BT_BLOCK) * BT_BLOCK;
}

/* Code (0, 1 or 2) of weight (r, k). */
static inline unsigned bt_code_at(const bt_ternary *t, int64_t r, int64_t k) {
    const uint8_t *row = t->codes + r * t->stride;
    int64_t b = k / BT_BLOCK, o = k % BT_BLOCK;
    return (row[b * BT_BLOCK_BYTES + (o & 63)] >> (2 * (o >> 6))) & 3u;
}

/* absmean scale of w [rows*cols] (row-major, row pitch ldw floats):
 * s = mean|w| + 1e-5, each row summed in double, the row sums added in row order.
 * BT_ERR_NONFINITE on NaN/inf, BT_ERR_NOMEM if its row buffer cannot be allocated. */
int bt_absmean_scale(const float *w, int64_t rows, int64_t cols, int64_t ldw, float *scale);

/* Quantize w with a given scale into t (t->codes already allocated,
 * t->rows/cols/stride set).  Codes: clip(rint(w / s), -1, 1) + 1. */
int bt_pack(const float *w, int64_t ldw, float scale, bt_ternary *t);

/* out[r*ldo + k] = s * (code - 1) for k < cols. */
void bt_unpack(const bt_ternary *t, float *out, int64_t ldo);

/* Validate codes: no 0b11 code, padding holds 0b01.  BT_OK or BT_ERR_BADCODE. */
int bt_check_codes(const bt_ternary *t);

#endif /* BT_TERNARY_H */
