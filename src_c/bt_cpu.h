/*
 * bt_cpu.h -- CPU feature detection, kernel (ISA) selection and thread count.
 *
 * ISAs: BT_ISA_SCALAR (portable C, always present), BT_ISA_AVX2 (AVX2),
 * BT_ISA_AVX512 (AVX-512 F/BW/VL + VNNI).  The active ISA starts as the best
 * one the CPU and OS support and can be forced to any supported one.
 */
#ifndef BT_CPU_H
#define BT_CPU_H

#include <stdint.h>

enum { BT_ISA_SCALAR = 0, BT_ISA_AVX2 = 1, BT_ISA_AVX512 = 2, BT_ISA_COUNT = 3 };

int bt_isa_supported(int isa);   /* 1 if this machine can run it          */
int bt_isa_best(void);           /* best supported ISA                     */
int bt_get_isa(void);            /* ISA the kernels use now                */
int bt_set_isa(int isa);         /* BT_OK or BT_ERR_ISA                    */
const char *bt_isa_name(int isa);

int bt_get_threads(void);        /* threads the kernels use (>= 1)         */
void bt_set_threads(int n);      /* n < 1 is treated as 1                  */
int bt_openmp_enabled(void);     /* 1 if built with OpenMP                 */

/* [0, n) split in `parts` contiguous ranges with boundaries on multiples of `grain`:
 * range idx is [*lo, *hi) (the thread split of the kernels). */
static inline void bt_split(int64_t n, int parts, int idx, int64_t grain, int64_t *lo, int64_t *hi) {
    const int64_t units = (n + grain - 1) / grain;
    const int64_t a = units * idx / parts, b = units * (idx + 1) / parts;
    *lo = a * grain < n ? a * grain : n;
    *hi = b * grain < n ? b * grain : n;
}

#endif /* BT_CPU_H */
