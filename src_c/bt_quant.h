/*
 * bt_quant.h -- per-token absmax activation quantization to int8 (BitNet b1.58).
 *
 * For each token (row) x of length K:
 *     a    = 127 / max(max|x|, 1e-5)                (float32)
 *     x_q  = clip(rint(x * a), -128, 127)            (int8, round half to even)
 *     x   ~= x_q / a
 * Rows of x_q may be written with a padded pitch `ldq` >= K; the padding is
 * filled with zeros so that the int8 kernels can read whole 256-wide blocks.
 * `sums` (optional) receives sum(x_q) per row, which the kernels need because
 * weights are stored as w + 1.
 */
#ifndef BT_QUANT_H
#define BT_QUANT_H

#include <stdint.h>

/* x [M, K] row pitch ldx; q [M, ldq]; a [M]; sums [M] or NULL.
 * Returns BT_OK or BT_ERR_NONFINITE (NaN/inf in x; nothing meaningful written). */
int bt_quantize_act(const float *x, int64_t M, int64_t K, int64_t ldx,
                    int8_t *q, int64_t ldq, float *a, int32_t *sums);

/* Copy int8 rows into a padded buffer (zeros past K) and compute row sums.
 * With q == x only the sums are computed (x is left untouched). */
void bt_pad_act(const int8_t *x, int64_t M, int64_t K, int64_t ldx,
                int8_t *q, int64_t ldq, int32_t *sums);

/* out [M, K] = q / a[m] (float32): Qa(x), the dequantized activations. */
void bt_dequant_act(const int8_t *q, int64_t M, int64_t K, const float *a, float *out);

#endif /* BT_QUANT_H */
