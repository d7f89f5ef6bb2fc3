/* ternary.c -- packing, unpacking and validation of bt_ternary (see bt_ternary.h). */
#include "bt_ternary.h"
#include "bt_cpu.h"
#include "bt_isa_kernels.h"

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

/* Width in bytes of t1 block b of a row of `stride` bytes (64, or less for the last). */
static inline int64_t t1_width(int64_t stride, int64_t b) {
    const int64_t left = stride - b * BT_BLOCK_BYTES;
    return left < BT_BLOCK_BYTES ? left : BT_BLOCK_BYTES;
}

/* One row of t1 bytes from its codes: code(k) for k < cols, 1 (w = 0) past it. */
static void t1_row_from(int64_t cols, int64_t stride, const void *ctx, unsigned (*code)(const void *, int64_t),
                        uint8_t *dst) {
    for (int64_t b = 0; b * BT_BLOCK_BYTES < stride; b++) {
        const int64_t wb = t1_width(stride, b), k0 = b * BT_T1_BLOCK;
        for (int64_t j = 0; j < wb; j++) {
            unsigned c[5];
            for (int i = 0; i < 5; i++) {
                const int64_t k = k0 + wb * i + j;
                c[i] = k < cols ? code(ctx, k) : 1u;
            }
            dst[b * BT_BLOCK_BYTES + j] = bt_t1_encode(c);
        }
    }
}

typedef struct {
    const float *x;
    float scale;
} float_row;

static unsigned code_of_float(const void *ctx, int64_t k) {
    const float_row *f = (const float_row *)ctx;
    return code_of(f->x[k], f->scale);
}

static void pack_row_t1(const float *src, int64_t cols, int64_t stride, float scale, uint8_t *dst) {
    const float_row f = {src, scale};
    t1_row_from(cols, stride, &f, code_of_float, dst);
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
        if (t->fmt == BT_FMT_T1) {
            pack_row_t1(src, t->cols, t->stride, scale, dst);
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

/* t1: byte q is valid when it is the encoding of the codes it decodes to. */
static int t1_valid(unsigned q) {
    unsigned c[5];
    bt_t1_decode(q, c);
    return bt_t1_encode(c) == q;
}

static int check_codes_t1(const bt_ternary *t) {
    uint8_t ok[256];
    for (unsigned q = 0; q < 256; q++) ok[q] = (uint8_t)t1_valid(q);
    const int64_t nblk = (t->stride + BT_BLOCK_BYTES - 1) / BT_BLOCK_BYTES;
    const int64_t last = (nblk - 1) * BT_BLOCK_BYTES, wb = t->stride - last, k0 = (nblk - 1) * BT_T1_BLOCK;
    for (int64_t r = 0; r < t->rows; r++) {
        const uint8_t *row = t->codes + r * t->stride;
        unsigned bad = 0;
        for (int64_t i = 0; i < t->stride; i++) bad |= ok[row[i]] ^ 1u;
        if (bad) return BT_ERR_BADCODE;
        for (int64_t j = 0; j < wb; j++) { /* padding of the last block: code 1 */
            unsigned c[5];
            bt_t1_decode(row[last + j], c);
            for (int i = 0; i < 5; i++)
                if (k0 + wb * i + j >= t->cols && c[i] != 1u) return BT_ERR_BADCODE;
        }
    }
    return BT_OK;
}

typedef struct {
    const bt_ternary *t;
    int64_t r;
} code_row;

static unsigned code_of_row(const void *ctx, int64_t k) {
    const code_row *c = (const code_row *)ctx;
    return bt_code_at(c->t, c->r, k);
}

/* t1 row -> t2 row: the codes one byte per weight (the table's t1_u8, u of
 * bt_fmt_padded_cols(BT_FMT_T1, cols) bytes), then four planes per byte. */
static void t1_row_to_t2(const bt_isa_ops *ops, const uint8_t *row, int64_t cols, int64_t stride1, uint8_t *u,
                         uint8_t *o, int64_t stride2) {
    const int64_t nblk = (cols + BT_T1_BLOCK - 1) / BT_T1_BLOCK;
    const int64_t done = (nblk - 1) * BT_T1_BLOCK + 5 * bt_t1_tail_bytes(cols), len = bt_fmt_padded_cols(BT_FMT_T1, cols);
    memset(u + done, 1, (size_t)(len - done)); /* what the narrow last block does not hold: w = 0 */
    ops->t1_u8(row, stride1, u);
    for (int64_t b = 0; b * BT_BLOCK_BYTES < stride2; b++) {
        const uint8_t *v = u + b * BT_BLOCK;
        uint8_t *d = o + b * BT_BLOCK_BYTES;
        for (int j = 0; j < 64; j++)
            d[j] = (uint8_t)(v[j] | v[64 + j] << 2 | v[128 + j] << 4 | v[192 + j] << 6);
    }
}

int bt_transcode(const bt_ternary *src, int64_t r0, int64_t r1, bt_ternary *dst) {
    dst->stride = bt_fmt_stride(dst->fmt, src->cols);
    uint8_t *u = NULL;
    if (src->fmt == BT_FMT_T1 && dst->fmt == BT_FMT_T2) {
        u = (uint8_t *)malloc((size_t)bt_fmt_padded_cols(BT_FMT_T1, src->cols));
        if (!u) return BT_ERR_NOMEM;
    }
    const bt_isa_ops *const ops = bt_ops();
    for (int64_t r = r0; r < r1; r++) {
        uint8_t *o = dst->codes + (r - r0) * dst->stride;
        if (dst->fmt == src->fmt) {
            memcpy(o, src->codes + r * src->stride, (size_t)dst->stride);
        } else if (dst->fmt == BT_FMT_T1) {
            const code_row c = {src, r};
            t1_row_from(src->cols, dst->stride, &c, code_of_row, o);
        } else {
            t1_row_to_t2(ops, src->codes + r * src->stride, src->cols, src->stride, u, o, dst->stride);
        }
    }
    free(u);
    return BT_OK;
}

int bt_check_codes(const bt_ternary *t) {
    if (t->fmt == BT_FMT_T1) return check_codes_t1(t);
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
