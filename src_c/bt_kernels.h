/*
 * bt_kernels.h -- ternary matrix products, run by the kernel table of the current ISA (bt_cpu.h).
 *
 * Shapes: W is a bt_ternary [N, K] (N = rows = outputs, K = cols = inputs).
 *
 *   int8 path   out[m, n] = dot(w_n, xq_m)                       exact int32
 *               y[m, n]   = (float)out[m, n] * (s / a[m])         float32
 *     W in either packed format (bt_ternary.h: t2, or t1 at 1.6 bits: one token goes
 *     through the t1 kernels, several through t2 copies of its rows made a chunk at a time;
 *     the float paths copy a t1 matrix to t2 for the call): the same results on both.
 *     xq is [M, K] int8 with row pitch ldx; rows are copied into a zero-padded
 *     scratch only when K is not a multiple of the padding (bt_fmt_padded_cols).
 *
 *   float path  y[m, n]  = s * sum_k x[m, k] * w[n, k]        (forward)
 *               dx[m, k] = s * sum_n dy[m, n] * w[n, k]       (input gradient)
 *     Each output is accumulated sequentially over its reduction index in
 *     float32 with one fused multiply-add per term (exact products here, since w
 *     is -1, 0 or +1), then scaled by s once.  Every ISA follows that order and
 *     uses FMA (the scalar path through fmaf), so all paths agree bit for bit.
 *
 * Every function is thread-safe, allocates only per call (never inside its
 * loops) and uses bt_get_threads() OpenMP threads.
 */
#ifndef BT_KERNELS_H
#define BT_KERNELS_H

#include <stdint.h>
#include "bt_ternary.h"

int bt_gemm_i8_raw(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx,
                   int32_t *out, int64_t ldo);

/* BT_ERR_SCALE if some a[m] is not positive and finite. */
int bt_gemm_i8(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx, const float *a,
               float *y, int64_t ldy);

/* W1.58A8 forward: quantize x [M, K] float32 per token (bt_quant.h), then bt_gemm_i8.
 * a [M] receives the activation scales.  BT_ERR_NONFINITE on NaN/inf in x. */
int bt_bitlinear(const bt_ternary *w, const float *x, int64_t M, int64_t ldx, float *y, int64_t ldy,
                 float *a);

/* Rows [n0, n1) of bt_gemm_i8 on activations already zero padded, with their row sums (as
 * bt_quantize_act writes them into a buffer of pitch ldq >= bt_fmt_padded_cols(w->fmt, K)), on
 * the calling thread: no threads, no allocation, no checks (the caller has checked the
 * scales).  For callers that split the rows themselves. */
void bt_gemm_i8_rows(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums, const float *a,
                     int64_t M, int64_t n0, int64_t n1, float *y, int64_t ldy);

int bt_gemm_f32(const bt_ternary *w, const float *x, int64_t M, int64_t ldx,
                float *y, int64_t ldy);

int bt_gemm_f32_t(const bt_ternary *w, const float *dy, int64_t M, int64_t lddy,
                  float *dx, int64_t lddx);

/* Dense float32 GEMM, C [M, N] = op(A) [M, P] . op(B) [P, N] with op(X) = X or X^T
 * (trans_a: A is stored [P, M]; trans_b: B is stored [N, P]); row pitches lda, ldb, ldc.
 * Same microkernels, order and thread pool as the float ternary path: each output is
 * summed sequentially in p, so every ISA and thread count gives the same bits.  For the
 * training GEMMs that are not ternary (weight gradients, the LM head). */
int bt_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t P, const float *A, int64_t lda,
             const float *B, int64_t ldb, float *C, int64_t ldc);

/* C [M, N] = A^T . B with A stored [P, M] (pitch lda) and B = Qa(x) given as its int8 codes
 * q [P, N] (pitch ldq) and per-row scales a [P]: B[p, j] = (float)q[p, j] / a[p], the value
 * bt_dequant_act writes.  The BitLinear weight gradient dW = dY^T Qa(x) without the
 * dequantized copy of x: the float panels are filled from the codes.  Same bits as
 * bt_sgemm(1, 0, ...) on the dequantized matrix. */
int bt_sgemm_tn_q8(int64_t M, int64_t N, int64_t P, const float *A, int64_t lda, const int8_t *q, int64_t ldq,
                   const float *a, float *C, int64_t ldc);

#endif /* BT_KERNELS_H */
