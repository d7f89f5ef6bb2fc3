/*
 * bt_isa_kernels.h -- the per-ISA kernel entry points behind bt_kernels.h.
 * Internal: kernels.c picks one set at run time; each set gives identical results.
 *
 * i8 kernels: out[m*ldo + n] = dot(w_n, xq_m) (exact int32) for n in [n0, n1), m < M.
 *   xq rows are padded to whole blocks with zeros; sums[m] = sum(xq_m).
 * quant kernels: bt_quantize_act (bt_quant.h) row by row; same results on every path.
 * panel fills: B [bt_padded_cols(K) x 32] floats, see kernels.c.
 * f32 panel kernels: C[i*ldc + j] = s * sum_{p<P} A[i*sa + p*sp] * B[p*32 + j]
 *   for i < M, j < nc (nc <= 32), sums taken sequentially in p.
 */
#ifndef BT_ISA_KERNELS_H
#define BT_ISA_KERNELS_H

#include <stdint.h>
#include "bt_ternary.h"

#define BT_PANEL 32 /* columns of a float panel */

typedef void (*bt_i8_fn)(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                         int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo);
typedef void (*bt_panel_fn)(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                            float *C, int64_t ldc, int nc, float s);

void bt_i8_scalar(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                  int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo);
typedef int (*bt_quant_fn)(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q,
                           int64_t ldq, float *a, int32_t *sums);
/* dst[k] = clip(rint(row[k] * scale), -128, 127) for k in [k0, k1); returns their sum.
 * The one scalar definition of the rounding, shared by every path's tails. */
int32_t bt_quant_span(const float *row, int64_t k0, int64_t k1, float scale, int8_t *dst);
int bt_quant_rows_scalar(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, int64_t ldq,
                         float *a, int32_t *sums);
void bt_panel_scalar(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                     float *C, int64_t ldc, int nc, float s);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define BT_HAVE_X86 1
void bt_i8_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo);
/* The AVX2 int8 product written as floats, y[m*ldy + n] = (float)dot(w_n, xq_m) * fs[m] (the
 * int32 result, then to_float's multiply): done only for the many-token panels; returns 0
 * (nothing written) for few tokens or when its buffers cannot be had. */
int bt_i8f_avx2(const bt_ternary *w, const int8_t *xq, int64_t ldq, int64_t M, int64_t n0, int64_t n1,
                const float *fs, float *y, int64_t ldy);
void bt_panel_avx2(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                   float *C, int64_t ldc, int nc, float s);
/* G panels at once (panel g at B + g*ldp, columns C + 32g, the last one nc_last wide), A in
 * tiles of H rows: A(i, p) = A[(i / H)*ts + (i % H)*sa + p*sp], H a multiple of 3 or >= M.
 * Same results as G calls of the f32 panel kernel. */
void bt_panels_avx2(const float *A, int64_t sa, int64_t sp, int64_t H, int64_t ts, int64_t M,
                    const float *B, int64_t ldp, int G, int64_t P, float *C, int64_t ldc, int nc_last,
                    float s);
int bt_quant_rows_avx2(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, int64_t ldq,
                       float *a, int32_t *sums);
int bt_quant_rows_avx512(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, int64_t ldq,
                         float *a, int32_t *sums);
void bt_panel_rows_avx512(const bt_ternary *w, int64_t n0, float *B);
void bt_panel_cols_avx512(const bt_ternary *w, int64_t k0, float *B);
void bt_i8_avx512(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                  int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo);
void bt_panel_avx512(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                     float *C, int64_t ldc, int nc, float s);
#endif

#endif /* BT_ISA_KERNELS_H */
