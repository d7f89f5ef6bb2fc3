/* kernels_scalar.c -- portable C kernels, the reference every SIMD path must match, and the
 * scalar table (bt_isa_kernels.h). */
#include "bt_isa_kernels.h"
#include "bt_cpu.h"

#include <math.h>
#include <stddef.h>

void bt_i8_scalar(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                  int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    const int64_t nblk = w->stride / BT_BLOCK_BYTES;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w->codes + n * w->stride;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *x = xq + m * ldq;
            int32_t acc = 0;
            for (int64_t b = 0; b < nblk; b++) {
                const uint8_t *c = row + b * BT_BLOCK_BYTES;
                const int8_t *xb = x + b * BT_BLOCK;
                for (int i = 0; i < 64; i++) {
                    unsigned v = c[i];
                    acc += (int32_t)(v & 3u) * xb[i] + (int32_t)((v >> 2) & 3u) * xb[64 + i] +
                           (int32_t)((v >> 4) & 3u) * xb[128 + i] + (int32_t)(v >> 6) * xb[192 + i];
                }
            }
            out[m * ldo + n] = acc - sums[m];
        }
    }
}

/* t1 (bt_ternary.h): byte q of block b holds the codes of weights 320b + wb*i + j, got as the
 * carries of q * 3^(i+1) in byte arithmetic. */
void bt_i8t1_scalar(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums,
                    int64_t M, int64_t n0, int64_t n1, int32_t *out, int64_t ldo) {
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *row = w->codes + n * w->stride;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *x = xq + m * ldq;
            int32_t acc = 0;
            for (int64_t b = 0; b * BT_BLOCK_BYTES < w->stride; b++) {
                const int64_t left = w->stride - b * BT_BLOCK_BYTES;
                const int64_t wb = left < BT_BLOCK_BYTES ? left : BT_BLOCK_BYTES;
                const uint8_t *c = row + b * BT_BLOCK_BYTES;
                const int8_t *xb = x + b * BT_T1_BLOCK;
                for (int64_t j = 0; j < wb; j++) {
                    unsigned p = c[j];
                    for (int i = 0; i < 5; i++) {
                        p *= 3u;
                        acc += (int32_t)(p >> 8) * xb[wb * i + j];
                        p &= 255u;
                    }
                }
            }
            out[m * ldo + n] = acc - sums[m];
        }
    }
}

void bt_t1_u8_scalar(const uint8_t *row, int64_t stride, uint8_t *u) {
    for (int64_t b = 0; b * BT_BLOCK_BYTES < stride; b++) {
        const int64_t left = stride - b * BT_BLOCK_BYTES;
        const int64_t wb = left < BT_BLOCK_BYTES ? left : BT_BLOCK_BYTES;
        for (int64_t j = 0; j < wb; j++) {
            unsigned c[5];
            bt_t1_decode(row[b * BT_BLOCK_BYTES + j], c);
            for (int i = 0; i < 5; i++) u[b * BT_T1_BLOCK + wb * i + j] = (uint8_t)c[i];
        }
    }
}

void bt_panel_scalar(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P,
                     float *C, int64_t ldc, int nc, float s) {
    float acc[BT_PANEL];
    for (int64_t i = 0; i < M; i++) {
        const float *a = A + i * sa;
        for (int j = 0; j < BT_PANEL; j++) acc[j] = 0.0f;
        for (int64_t p = 0; p < P; p++) {
            const float ap = a[p * sp], *bp = B + p * BT_PANEL;
            /* fused multiply-add, as the SIMD paths do: the same single rounding per term */
            for (int j = 0; j < BT_PANEL; j++) acc[j] = fmaf(ap, bp[j], acc[j]);
        }
        for (int j = 0; j < nc; j++) C[i * ldc + j] = acc[j] * s;
    }
}

/* Forward panel: B[k*32 + j] = code(n0 + j, k) - 1 for k < Kp = bt_padded_cols(K)
 * (padding weights give 0; rows past N give 0), the fill of kernels.c's panel driver.  Walks k outer and the 32 rows inner so
 * that B is written sequentially; bt_panel_rows_avx512 writes the same floats faster. */
void bt_panel_rows_scalar(const bt_ternary *w, int64_t n0, float *B) {
    const int64_t K = bt_padded_cols(w->cols);
    const int nr = w->rows - n0 < BT_PANEL ? (int)(w->rows - n0) : BT_PANEL;
    const uint8_t *base = w->codes + n0 * w->stride;
    for (int64_t k = 0; k < K; k++) {
        const int64_t off = (k / BT_BLOCK) * BT_BLOCK_BYTES + (k & 63);
        const unsigned sh = 2u * (unsigned)((k % BT_BLOCK) >> 6);
        float *dst = B + k * BT_PANEL;
        for (int j = 0; j < nr; j++) dst[j] = (float)((int)((base[j * w->stride + off] >> sh) & 3u) - 1);
        for (int j = nr; j < BT_PANEL; j++) dst[j] = 0.0f;
    }
}

/* Transposed panel: B[n*32 + j] = code(n, k0 + j) - 1 for n < N (cols past K give 0). */
void bt_panel_cols_scalar(const bt_ternary *w, int64_t k0, float *B) {
    const int64_t b = k0 / BT_BLOCK, o = k0 % BT_BLOCK; /* k0 is a multiple of 32 */
    const unsigned sh = 2u * (unsigned)(o >> 6);
    const int64_t i0 = o & 63;
    const int nc = w->cols - k0 < BT_PANEL ? (int)(w->cols - k0) : BT_PANEL;
    for (int64_t n = 0; n < w->rows; n++) {
        const uint8_t *c = w->codes + n * w->stride + b * BT_BLOCK_BYTES + i0;
        float *dst = B + n * BT_PANEL;
        for (int j = 0; j < BT_PANEL; j++) dst[j] = (float)((int)((c[j] >> sh) & 3u) - 1);
        for (int j = nc; j < BT_PANEL; j++) dst[j] = 0.0f;
    }
}

/* Panel of dequantized codes (bt_q8fill_fn): B[p*32 + j] = (float)q[p*ldq + j] / a[p], 0 past nc. */
void bt_fill_q8_scalar(const int8_t *q, int64_t ldq, const float *a, int64_t P, int nc, float *B) {
    for (int64_t p = 0; p < P; p++) {
        const int8_t *src = q + p * ldq;
        const float ap = a[p];
        float *dst = B + p * BT_PANEL;
        for (int j = 0; j < nc; j++) dst[j] = (float)src[j] / ap;
        for (int j = nc; j < BT_PANEL; j++) dst[j] = 0.0f;
    }
}

/* Panel of a transposed dense B (bt_tfill_fn): B[p*32 + j] = b[j*ldb + p], 0 past nc.  Column j
 * of the panel is row j of b, read in order. */
void bt_fill_t_scalar(const float *b, int64_t ldb, int64_t P, int nc, float *B) {
    for (int64_t p = 0; p < P; p++)
        for (int j = nc; j < BT_PANEL; j++) B[p * BT_PANEL + j] = 0.0f;
    for (int j = 0; j < nc; j++) {
        const float *src = b + j * ldb;
        for (int64_t p = 0; p < P; p++) B[p * BT_PANEL + j] = src[p];
    }
}

/* Rows [n0, n1) of bt_gemm_s8 (bt_int8.h): exact int32 sums, then the two scales. */
void bt_s8_rows_scalar(const int8_t *W, int64_t ldw, const float *ws, int64_t n0, int64_t n1, int64_t K,
                       const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    for (int64_t n = n0; n < n1; n++) {
        const int8_t *w = W + n * ldw;
        for (int64_t m = 0; m < M; m++) {
            const int8_t *x = xq + m * ldx;
            int32_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int32_t)w[k] * (int32_t)x[k];
            y[m * ldy + n] = (float)acc * (ws[n] / a[m]);
        }
    }
}

/* The portable path: every entry plain C (ops and TTT: ops.c, ttt.c, ttt_decode.c compiled
 * for the baseline ISA). */
const bt_isa_ops bt_ops_scalar = {
    .isa = BT_ISA_SCALAR,
    .i8 = bt_i8_scalar,
    .i8_t1 = bt_i8t1_scalar,
    .t1_u8 = bt_t1_u8_scalar,
    .i8f = NULL,
    .panel = bt_panel_scalar,
    .panels = NULL,
    .pack_a = 0,
    .atile = 8,
    .panel_rows = bt_panel_rows_scalar,
    .panel_cols = bt_panel_cols_scalar,
    .fill_q8 = bt_fill_q8_scalar,
    .fill_t = bt_fill_t_scalar,
    .quant = bt_quant_rows_scalar,
    .s8_rows = bt_s8_rows_scalar,
    .swiglu_fwd = bt_swiglu_fwd_scalar,
    .swiglu_bwd = bt_swiglu_bwd_scalar,
    .xent = bt_xent_scalar,
    .ttt_fwd = bt_ttt_fwd_scalar,
    .ttt_bwd = bt_ttt_bwd_scalar,
    .ttt_head = bt_ttt_head_scalar,
};
