/*
 * bt_int8.h -- int8 x int8 matrix products for the LM head of a packed model file.
 *
 * The head is stored as int8 rows with one float32 scale per row (absmax / 127) and the
 * activations are quantized per token as everywhere else (a = 127 / max|x|):
 *     y[m, n] = (sum_k W[n, k] * xq[m, k]) * wscale[n] / a[m]
 * The integer sums are exact, so every ISA path gives the same bits.  W is [N, K] row-major
 * with row stride ldw >= K bytes; xq [M, K] with stride ldx; y [M, N] with stride ldy.
 * W and xq must lie in [-127, 127] (the AVX2 sign trick cannot negate -128).
 * Threads split the rows of W (each weight row is read once per call for up to 4 tokens
 * at a time).
 */
#ifndef BT_INT8_H
#define BT_INT8_H

#include <stdint.h>

void bt_gemm_s8(const int8_t *W, int64_t ldw, const float *wscale, int64_t N, int64_t K, const int8_t *xq,
                int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy);

/* Rows [n0, n1) of y on the calling thread (no threads of its own). */
void bt_gemm_s8_rows(const int8_t *W, int64_t ldw, const float *wscale, int64_t n0, int64_t n1, int64_t K,
                     const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy);

#endif
