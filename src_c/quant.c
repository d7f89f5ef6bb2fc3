/* quant.c -- activation quantization (see bt_quant.h). */
#include "bt_quant.h"
#include "bt_ternary.h"
#include "bt_cpu.h"
#include "bt_isa_kernels.h"

#include <math.h>
#include <string.h>

int32_t bt_quant_span(const float *row, int64_t k0, int64_t k1, float scale, int8_t *dst) {
    int32_t s = 0;
    for (int64_t k = k0; k < k1; k++) {
        float r = rintf(row[k] * scale);
        r = r < -128.0f ? -128.0f : (r > 127.0f ? 127.0f : r);
        dst[k] = (int8_t)r;
        s += dst[k];
    }
    return s;
}

int bt_quant_rows_scalar(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q,
                         int64_t ldq, float *a, int32_t *sums) {
    for (int64_t m = 0; m < M; m++) {
        const float *row = x + m * ldx;
        float amax = 0.0f, bad = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float v = fabsf(row[k]);
            amax = v > amax ? v : amax;
            bad += row[k] * 0.0f;
        }
        if (bad != bad) return BT_ERR_NONFINITE;
        const float scale = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
        int8_t *dst = q + m * ldq;
        const int32_t s = bt_quant_span(row, 0, K, scale, dst);
        if (ldq > K) memset(dst + K, 0, (size_t)(ldq - K));
        a[m] = scale;
        if (sums) sums[m] = s;
    }
    return BT_OK;
}

int bt_quantize_act(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, int64_t ldq,
                    float *a, int32_t *sums) {
    return bt_ops()->quant(x, M, K, ldx, q, ldq, a, sums);
}

void bt_pad_act(const int8_t *x, int64_t M, int64_t K, int64_t ldx,
                int8_t *q, int64_t ldq, int32_t *sums) {
    for (int64_t m = 0; m < M; m++) {
        const int8_t *src = x + m * ldx;
        int8_t *dst = q + m * ldq;
        int32_t s = 0;
        for (int64_t k = 0; k < K; k++) s += src[k];
        if (dst != src) {
            memcpy(dst, src, (size_t)K);
            if (ldq > K) memset(dst + K, 0, (size_t)(ldq - K));
        }
        if (sums) sums[m] = s;
    }
}

void bt_dequant_act(const int8_t *q, int64_t M, int64_t K, const float *a, float *out) {
    const int nt = M * K >= (1 << 16) ? bt_get_threads() : 1;
    BT_PARALLEL_FOR(nt)
    for (int64_t m = 0; m < M; m++) {
        const int8_t *src = q + m * K;
        float *dst = out + m * K;
        const float am = a[m];
        for (int64_t k = 0; k < K; k++) dst[k] = (float)src[k] / am;
    }
}
