/* kernels_scalar.c -- portable C kernels; the reference every SIMD path must match. */
#include "bt_isa_kernels.h"

#include <math.h>

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
