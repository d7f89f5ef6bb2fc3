/* int8.c -- int8 x int8 products (bt_int8.h): the thread split over the rows kernel of the
 * current table (scalar in kernels_scalar.c, AVX2 sign trick + vpmaddubsw in kernels_avx2.c, VNNI
 * vpdpbusd on offset activations in kernels_avx512.c).
 * The int32 sums are exact, so the paths agree bit for bit. */
#include "bt_int8.h"

#include "bt_cpu.h"
#include "bt_isa_kernels.h"

void bt_gemm_s8_rows(const int8_t *W, int64_t ldw, const float *wscale, int64_t n0, int64_t n1, int64_t K,
                     const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    if (n1 > n0) bt_ops()->s8_rows(W, ldw, wscale, n0, n1, K, xq, ldx, a, M, y, ldy);
}

void bt_gemm_s8(const int8_t *W, int64_t ldw, const float *wscale, int64_t N, int64_t K, const int8_t *xq,
                int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) {
    bt_s8_rows_fn *const fn = bt_ops()->s8_rows;
    const int nt = bt_threads_for(0.0, 0.0, N * K * M / (1 << 16) + 1);
    BT_PARALLEL(nt) {
        int64_t n0, n1;
        bt_thread_range(N, 1, &n0, &n1);
        fn(W, ldw, wscale, n0, n1, K, xq, ldx, a, M, y, ldy);
    }
}
