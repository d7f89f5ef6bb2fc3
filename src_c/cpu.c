/* cpu.c -- feature detection and run-time settings (see bt_cpu.h). */
#include "bt_cpu.h"
#include "bt_ternary.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int g_isa = -1;
static int g_threads = 1;

int bt_isa_supported(int isa) {
    switch (isa) {
    case BT_ISA_SCALAR:
        return 1;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
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

int bt_get_isa(void) {
    if (g_isa < 0) g_isa = bt_isa_best();
    return g_isa;
}

int bt_set_isa(int isa) {
    if (isa < 0 || isa >= BT_ISA_COUNT || !bt_isa_supported(isa)) return BT_ERR_ISA;
    g_isa = isa;
    return BT_OK;
}

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
