/* optim.c -- AdamW step and sum of squares (see bt_optim.h). */
#include "bt_optim.h"

#include <math.h>

#include "bt_cpu.h"

/* below ~64k elements a thread is not worth it */
static int optim_threads(int64_t n) { return bt_threads_for(0.0, 0.0, n / (64 * 1024) + 1); }

static void adamw_range(const bt_adamw_args *a, float *p, const float *grad, float *m, float *v, int64_t lo,
                        int64_t hi) {
    const float b1 = a->beta1, b2 = a->beta2, c1 = 1.0f - a->beta1, c2 = 1.0f - a->beta2;
    const float lr = a->lr, wd = a->weight_decay, eps = a->eps, gs = a->gscale;
    const float ibc1 = 1.0f / a->bc1, ibc2 = 1.0f / a->bc2;
    for (int64_t i = lo; i < hi; i++) {
        const float g = grad[i] * gs;
        const float mi = b1 * m[i] + c1 * g;
        const float vi = b2 * v[i] + c2 * (g * g);
        m[i] = mi;
        v[i] = vi;
        const float upd = (mi * ibc1) / (sqrtf(vi * ibc2) + eps);
        p[i] = p[i] - lr * (wd * p[i] + upd);
    }
}

void bt_adamw(const bt_adamw_args *a, float *p, const float *grad, float *m, float *v, int64_t n) {
    const int nt = optim_threads(n);
    BT_PARALLEL(nt) {
        int64_t lo, hi;
        bt_thread_range(n, 1, &lo, &hi);
        adamw_range(a, p, grad, m, v, lo, hi);
    }
}

static double sumsq_block(const float *x, int64_t lo, int64_t hi) {
    /* 8 fixed lanes so the compiler may vectorize without changing the order. */
    double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = lo;
    for (; i + 8 <= hi; i += 8)
        for (int l = 0; l < 8; l++) s[l] += (double)x[i + l] * (double)x[i + l];
    for (; i < hi; i++) s[0] += (double)x[i] * (double)x[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

double bt_sumsq(const float *x, int64_t n) {
    /* BT_OPTIM_SEGMENTS fixed segments, whatever the thread count; their sums added in order. */
    double part[BT_OPTIM_SEGMENTS];
    const int nt = optim_threads(n);
    BT_PARALLEL_FOR(nt)
    for (int s = 0; s < BT_OPTIM_SEGMENTS; s++)
        part[s] = sumsq_block(x, n * s / BT_OPTIM_SEGMENTS, n * (s + 1) / BT_OPTIM_SEGMENTS);
    double total = 0.0;
    for (int s = 0; s < BT_OPTIM_SEGMENTS; s++) total += part[s];
    return total;
}
