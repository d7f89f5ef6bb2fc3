/* cpu.c -- feature detection and run-time settings (see bt_cpu.h); the one place that
 * selects the kernel table (bt_isa_kernels.h). */
#include "bt_cpu.h"
#include "bt_isa_kernels.h"

#include <stddef.h>

static const bt_isa_ops *g_ops; /* NULL until the first bt_ops() or bt_set_isa() */
static int g_threads = 1;

int bt_isa_supported(int isa) {
    switch (isa) {
    case BT_ISA_SCALAR:
        return 1;
#ifdef BT_HAVE_X86
    case BT_ISA_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case BT_ISA_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default:
        return 0;
    }
}

int bt_isa_best(void) {
    for (int i = BT_ISA_COUNT - 1; i > 0; i--)
        if (bt_isa_supported(i)) return i;
    return BT_ISA_SCALAR;
}

int bt_set_isa(int isa) {
    if (isa < 0 || isa >= BT_ISA_COUNT || !bt_isa_supported(isa)) return BT_ERR_ISA;
#ifdef BT_HAVE_X86
    static const bt_isa_ops *const tables[BT_ISA_COUNT] = {&bt_ops_scalar, &bt_ops_avx2, &bt_ops_avx512};
#else
    static const bt_isa_ops *const tables[BT_ISA_COUNT] = {&bt_ops_scalar, NULL, NULL};
#endif
    g_ops = tables[isa];
    return BT_OK;
}

const bt_isa_ops *bt_ops(void) {
    if (!g_ops) bt_set_isa(bt_isa_best());
    return g_ops;
}

int bt_get_isa(void) { return bt_ops()->isa; }

const char *bt_isa_name(int isa) {
    static const char *names[BT_ISA_COUNT] = {"scalar", "avx2", "avx512"};
    return (isa >= 0 && isa < BT_ISA_COUNT) ? names[isa] : "unknown";
}

int bt_get_threads(void) { return g_threads; }

void bt_set_threads(int n) { g_threads = n < 1 ? 1 : n; }

int bt_openmp_enabled(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
