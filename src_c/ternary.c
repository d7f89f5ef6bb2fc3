/* ternary.c -- packing, unpacking and validation of bt_ternary (see bt_ternary.h). */
#include "bt_ternary.h"
#include "bt_cpu.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Rows run in parallel; each row is summed in double, then the row sums are added in
 * row order, so the result does not depend on the thread count. */
int bt_absmean_scale(const float *w, int64_t rows, int64_t cols, int64_t ldw, float *scale) {
    double *rs = (double *)malloc((size_t)rows * sizeof(double));
    if (!rs) return BT_ERR_NOMEM;
    int bad_any = 0;
    const int nt = rows * cols >= (1 << 16) ? bt_get_threads() : 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(| : bad_any)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const float *row = w + r * ldw;
        double acc = 0.0;
        float bad = 0.0f;
        for (int64_t k = 0; k < cols; k++) {
            acc += fabs((double)row[k]);
            bad += row[k] * 0.0f; /* NaN for NaN or inf, else 0 */
        }
        rs[r] = acc;
        if (bad != bad) bad_any = 1;
    }
    (void)nt;
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) total += rs[r];
    free(rs);
    if (bad_any) return BT_ERR_NONFINITE;
    *scale = (float)(total / ((double)rows * (double)cols) + 1e-5);
    return BT_OK;
}

/* Code of one weight: clip(rint(q), -1, 1) + 1 with q = w / s.  rint(q) >= 1 exactly when
 * q > 0.5 (0.5 itself rounds to even, 0) and <= -1 exactly when q < -0.5, so no rounding
 * call is needed and the loop vectorizes. */
static inline unsigned code_of(float w, float scale) {
    const float q = w / scale;
    return 1u + (unsigned)(q > 0.5f) - (unsigned)(q < -0.5f);
}

int bt_pack(const float *w, int64_t ldw, float scale, bt_ternary *t) {
    if (!(scale > 0.0f) || isinf(scale)) return BT_ERR_NONFINITE;
    t->scale = scale;
    const int64_t full = t->cols / BT_BLOCK;
    int bad_any = 0;
    const int nt = t->rows * t->cols >= (1 << 16) ? bt_get_threads() : 1;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static) reduction(| : bad_any)
#endif
    for (int64_t r = 0; r < t->rows; r++) {
        const float *src = w + r * ldw;
        uint8_t *dst = t->codes + r * t->stride;
        float bad = 0.0f;
        for (int64_t k = 0; k < t->cols; k++) bad += src[k] * 0.0f; /* NaN for NaN or inf */
        if (bad != bad) {
            bad_any = 1;
            continue;
        }
        for (int64_t b = 0; b < full; b++) {
            const float *x = src + b * BT_BLOCK;
            uint8_t *o = dst + b * BT_BLOCK_BYTES;
            for (int i = 0; i < 64; i++)
                o[i] = (uint8_t)(code_of(x[i], scale) | code_of(x[64 + i], scale) << 2 |
                                 code_of(x[128 + i], scale) << 4 | code_of(x[192 + i], scale) << 6);
        }
        if (full * BT_BLOCK < t->cols) { /* last, padded block */
            uint8_t *o = dst + full * BT_BLOCK_BYTES;
            memset(o, BT_CODE_ZERO, BT_BLOCK_BYTES);
            for (int64_t k = full * BT_BLOCK; k < t->cols; k++) {
                const int64_t j = k - full * BT_BLOCK;
                const unsigned sh = 2u * (unsigned)(j >> 6);
                o[j & 63] = (uint8_t)((o[j & 63] & ~(3u << sh)) | (code_of(src[k], scale) << sh));
            }
        }
    }
    (void)nt;
    return bad_any ? BT_ERR_NONFINITE : BT_OK;
}

void bt_unpack(const bt_ternary *t, float *out, int64_t ldo) {
    for (int64_t r = 0; r < t->rows; r++) {
        float *dst = out + r * ldo;
        for (int64_t k = 0; k < t->cols; k++)
            dst[k] = t->scale * (float)((int)bt_code_at(t, r, k) - 1);
    }
}

int bt_check_codes(const bt_ternary *t) {
    int64_t full = t->cols / BT_BLOCK; /* blocks with no padding */
    for (int64_t r = 0; r < t->rows; r++) {
        const uint8_t *row = t->codes + r * t->stride;
        /* a 0b11 pair has both bits set: (b & (b >> 1)) & 0x55 != 0 */
        unsigned bad = 0;
        for (int64_t i = 0; i < full * BT_BLOCK_BYTES; i++)
            bad |= (unsigned)(row[i] & (row[i] >> 1)) & 0x55u;
        if (bad) return BT_ERR_BADCODE;
        for (int64_t k = full * BT_BLOCK; k < bt_padded_cols(t->cols); k++) {
            unsigned c = bt_code_at(t, r, k);
            if (c == 3u || (k >= t->cols && c != 1u)) return BT_ERR_BADCODE;
        }
    }
    return BT_OK;
}
