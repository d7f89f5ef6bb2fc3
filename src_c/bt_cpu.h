/*
 * bt_cpu.h -- CPU feature detection, kernel (ISA) selection and thread count.
 *
 * ISAs: BT_ISA_SCALAR (portable C, always present), BT_ISA_AVX2 (AVX2),
 * BT_ISA_AVX512 (AVX-512 F/BW/VL + VNNI).  The active ISA starts as the best
 * one the CPU and OS support and can be forced to any supported one; setting it
 * selects that ISA's function table (bt_ops() in bt_isa_kernels.h).
 */
#ifndef BT_CPU_H
#define BT_CPU_H

#include <stdint.h>

#include "bt_common.h"

enum { BT_ISA_SCALAR = 0, BT_ISA_AVX2 = 1, BT_ISA_AVX512 = 2, BT_ISA_COUNT = 3 };

int bt_isa_supported(int isa);   /* 1 if this machine can run it          */
int bt_isa_best(void);           /* best supported ISA                     */
int bt_get_isa(void);            /* ISA the kernels use now                */
int bt_set_isa(int isa);         /* BT_OK or BT_ERR_ISA                    */
const char *bt_isa_name(int isa);

int bt_get_threads(void);        /* threads the kernels use (>= 1)         */
void bt_set_threads(int n);      /* n < 1 is treated as 1                  */
int bt_openmp_enabled(void);     /* 1 if built with OpenMP                 */

/* Threads for a call of `work` (in any unit): one below min_work, else bt_get_threads(),
 * at most `units` (the pieces the work is cut in; at least one). */
static inline int bt_threads_for(double work, double min_work, int64_t units) {
    int nt = bt_get_threads();
    if (work < min_work) return 1;
    if (nt > units) nt = (int)(units > 0 ? units : 1);
    return nt;
}

#endif /* BT_CPU_H */
