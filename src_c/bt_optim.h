/*
 * bt_optim.h -- the optimizer step of training: AdamW over one float32 tensor, and the sum
 * of squares used for gradient-norm clipping.
 *
 * Both are element-wise IEEE operations (no fused multiply-add, no approximations): the
 * result does not depend on the ISA, the thread count or the vector width.  The sum of
 * squares is accumulated in double over BT_OPTIM_SEGMENTS fixed segments (8 lanes each),
 * and the segment sums are added in order, so it too is the same on any number of threads.
 */
#ifndef BT_OPTIM_H
#define BT_OPTIM_H

#include <stdint.h>

#define BT_OPTIM_SEGMENTS 64

typedef struct {
    float lr;           /* learning rate of this step                                 */
    float beta1, beta2; /* moment decay rates                                         */
    float eps;          /* added to sqrt(v_hat)                                       */
    float weight_decay; /* decoupled: p -= lr * weight_decay * p (0 for no decay)     */
    float bc1, bc2;     /* bias corrections 1 - beta1^t, 1 - beta2^t                  */
    float gscale;       /* gradient multiplier (clipping, accumulation averaging)    */
} bt_adamw_args;

/* For each i: g = grad[i] * gscale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
 * p = p - lr * (wd * p + (m / bc1) / (sqrt(v / bc2) + eps)).  p, m, v are updated in place. */
void bt_adamw(const bt_adamw_args *a, float *p, const float *grad, float *m, float *v, int64_t n);

/* sum_i x[i]^2 in double, in a fixed order (see above). */
double bt_sumsq(const float *x, int64_t n);

#endif
