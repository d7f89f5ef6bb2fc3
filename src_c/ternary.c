/* ternary.c -- packing, unpacking and validation of bt_ternary (see bt_ternary.h). */
#include "bt_ternary.h"

#include <math.h>
#include <string.h>

int bt_absmean_scale(const float *w, int64_t rows, int64_t cols, int64_t ldw, float *scale) {
    double total = 0.0;
    for (int64_t r = 0; r < rows; r++) {
        const float *row = w + r * ldw;
        double acc = 0.0;
        float bad = 0.0f;
        for (int64_t k = 0; k < cols; k++) {
            acc += fabs((double)row[k]);
            bad += row[k] * 0.0f; /* NaN for NaN or inf, else 0 */
        }
        if (bad != 0.0f || bad != bad) return BT_ERR_NONFINITE;
        total += acc;
    }
    *scale = (float)(total / ((double)rows * (double)cols) + 1e-5);
    return BT_OK;
}

int bt_pack(const float *w, int64_t ldw, float scale, bt_ternary *t) {
    if (!(scale > 0.0f) || isinf(scale)) return BT_ERR_NONFINITE;
    t->scale = scale;
    for (int64_t r = 0; r < t->rows; r++) {
        const float *src = w + r * ldw;
        uint8_t *dst = t->codes + r * t->stride;
        memset(dst, BT_CODE_ZERO, (size_t)t->stride);
        for (int64_t k = 0; k < t->cols; k++) {
            if (!isfinite(src[k])) return BT_ERR_NONFINITE;
            float q = rintf(src[k] / scale);
            unsigned c = q >= 1.0f ? 2u : (q <= -1.0f ? 0u : 1u);
            int64_t b = k / BT_BLOCK, o = k % BT_BLOCK;
            uint8_t *byte = dst + b * BT_BLOCK_BYTES + (o & 63);
            unsigned sh = 2u * (unsigned)(o >> 6);
            *byte = (uint8_t)((*byte & ~(3u << sh)) | (c << sh));
        }
    }
    return BT_OK;
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
