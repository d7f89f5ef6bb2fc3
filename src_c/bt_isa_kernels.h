/*
 * bt_isa_kernels.h -- the per-ISA entry points and the table that holds one set of them.
 * Internal: the public functions (bt_kernels.h, bt_quant.h, bt_int8.h, bt_ops.h, bt_ttt.h)
 * call through bt_ops(), the table of the ISA set by bt_set_isa (bt_cpu.h); each table gives
 * identical results.
 *
 * i8 kernels: out[m*ldo + n] = dot(w_n, xq_m) (exact int32) for n in [n0, n1), m < M.
 *   xq rows are padded with zeros to bt_fmt_padded_cols(w->fmt, K); sums[m] = sum(xq_m).
 *   i8 takes t2 weights, i8_t1 t1 weights.
 * quant kernels: bt_quantize_act (bt_quant.h) row by row; same results on every path.
 * panel fills: B [bt_padded_cols(K) x 32] floats, see kernels_scalar.c.
 * f32 panel kernels: C[i*ldc + j] = s * sum_{p<P} A[i*sa + p*sp] * B[p*32 + j]
 *   for i < M, j < nc (nc <= 32), sums taken sequentially in p.
 * s8 rows: rows [n0, n1) of bt_gemm_s8 (bt_int8.h) on the calling thread.
 * ops and TTT entries: the same C (ops.c, ttt.c, ttt_decode.c) compiled for each ISA.
 */
#ifndef BT_ISA_KERNELS_H
#define BT_ISA_KERNELS_H

#include <stdint.h>

#include "bt_common.h"
#include "bt_ternary.h"
#include "bt_ttt.h"

#define BT_PANEL 32 /* columns of a float panel */

/* Function types (not pointers): `bt_i8_fn bt_i8_scalar;` declares a kernel, the table holds
 * `bt_i8_fn *`. */
typedef void bt_i8_fn(const bt_ternary *w, const int8_t *xq, int64_t ldq, const int32_t *sums, int64_t M,
                      int64_t n0, int64_t n1, int32_t *out, int64_t ldo);
/* The int8 product written as floats, y[m*ldy + n] = (float)dot(w_n, xq_m) * fs[m] (the int32
 * result, then to_float's multiply); returns 0 (nothing written) when it does not apply. */
typedef int bt_i8f_fn(const bt_ternary *w, const int8_t *xq, int64_t ldq, int64_t M, int64_t n0, int64_t n1,
                      const float *fs, float *y, int64_t ldy);
typedef void bt_panel_fn(const float *A, int64_t sa, int64_t sp, int64_t M, const float *B, int64_t P, float *C,
                         int64_t ldc, int nc, float s);
/* G panels at once (panel g at B + g*ldp, columns C + 32g, the last one nc_last wide), A in
 * tiles of H rows: A(i, p) = A[(i / H)*ts + (i % H)*sa + p*sp], H a multiple of 3 or >= M.
 * Same results as G calls of the f32 panel kernel. */
typedef void bt_panels_fn(const float *A, int64_t sa, int64_t sp, int64_t H, int64_t ts, int64_t M,
                          const float *B, int64_t ldp, int G, int64_t P, float *C, int64_t ldc, int nc_last,
                          float s);
/* Forward panel: B[k*32 + j] = code(n0 + j, k) - 1; transposed: B[n*32 + j] = code(n, k0 + j) - 1. */
typedef void bt_fill_fn(const bt_ternary *w, int64_t j0, float *B);
/* Panel of dequantized activation codes: B[p*32 + j] = (float)q[p*ldq + j] / a[p] for p < P,
 * j < nc (nc <= 32), 0 for j >= nc (the division, not a multiply by 1 / a[p]: the same bits). */
typedef void bt_q8fill_fn(const int8_t *q, int64_t ldq, const float *a, int64_t P, int nc, float *B);
/* Panel of a transposed dense B (the head's embedding as op(B) = E^T): B[p*32 + j] = b[j*ldb + p]
 * for p < P, j < nc (nc <= 32), 0 for j >= nc. */
typedef void bt_tfill_fn(const float *b, int64_t ldb, int64_t P, int nc, float *B);
typedef int bt_quant_fn(const float *x, int64_t M, int64_t K, int64_t ldx, int8_t *q, int64_t ldq, float *a,
                        int32_t *sums);
typedef void bt_s8_rows_fn(const int8_t *W, int64_t ldw, const float *ws, int64_t n0, int64_t n1, int64_t K,
                           const int8_t *xq, int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy);
/* ops.c: elements [i0, i1) of the SwiGLU gate, rows [m0, m1) of the cross-entropy. */
typedef void bt_swiglu_fwd_fn(const float *g, const float *u, int64_t i0, int64_t i1, float *h, float *sg);
typedef void bt_swiglu_bwd_fn(const float *dh, const float *g, const float *u, const float *sg, int64_t i0,
                              int64_t i1, float *dg, float *du);
typedef void bt_xent_fn(const float *logits, const int64_t *targets, const float *wt, int64_t m0, int64_t m1,
                        int64_t V, float *dlogits, double *loss);
/* ttt.c: one row r = (sequence, head) of bt_ttt_forward / bt_ttt_backward, with a thread's scratch. */
typedef struct bt_ttt_scratch bt_ttt_scratch;
typedef void bt_ttt_fwd_fn(const bt_ttt_args *a, int64_t r, float *out, float *Ws, float *saved,
                           bt_ttt_scratch *s);
typedef void bt_ttt_bwd_fn(const bt_ttt_args *a, int64_t r, const float *Ws, float *saved, const float *dout,
                           float *dq, float *dk, float *dv, float *dlr, float *dtok, float *dW1, float *db1,
                           float *dgamma, float *dbeta, bt_ttt_scratch *s);
/* ttt_decode.c: one head of one decoded token (bt_ttt_decode_heads); stream: W0 read once. */
typedef void bt_ttt_head_fn(int64_t f, int64_t K, int64_t pos, const float *q, const float *k, const float *v,
                            float lr, float tok, const float *gamma, const float *beta, float *W0, float *b0,
                            float *Kb, float *Gb, float *Sb, int commit, float *out, float *zk, float *zq,
                            float *xh, int stream);

/* t1 rows (format t1, bt_ternary.h) to one code byte per weight: u[k] = code(k) for the
 * 320 nblk weights of the row's blocks that hold weights (the narrow last block's k =
 * 320 (nblk - 1) + tb i + j); the other bytes of u are left as they are. */
typedef void bt_t1_u8_fn(const uint8_t *row, int64_t stride, uint8_t *u);

/* One ISA's kernels.  Optional entries are NULL where the ISA has no such variant. */
typedef struct {
    int isa;                       /* BT_ISA_* (bt_cpu.h)                                        */
    bt_i8_fn *i8;                  /* ternary int8 product                                        */
    bt_i8_fn *i8_t1;               /* the same on t1 weights, token by token (GEMV)               */
    bt_t1_u8_fn *t1_u8;            /* t1 row decoded to one code byte per weight                  */
    bt_i8f_fn *i8f;                /* optional: the same written as floats (many tokens)          */
    bt_panel_fn *panel;            /* float panel                                                 */
    bt_panels_fn *panels;          /* optional: groups of panels (then A tiles of atile % 3 == 0) */
    int atile;                     /* rows of a packed A tile (bt_sgemm with trans_a, no pack_a)  */
    bt_fill_fn *panel_rows;        /* forward ternary panel fill                                  */
    bt_fill_fn *panel_cols;        /* transposed ternary panel fill                               */
    bt_q8fill_fn *fill_q8;         /* panel fill from int8 activation codes (sgemm_tn_q8)         */
    bt_tfill_fn *fill_t;           /* panel fill from a transposed dense B (bt_sgemm, trans_b)    */
    bt_quant_fn *quant;            /* activation quantization                                     */
    bt_s8_rows_fn *s8_rows;        /* int8 x int8 head rows                                       */
    bt_swiglu_fwd_fn *swiglu_fwd;
    bt_swiglu_bwd_fn *swiglu_bwd;
    bt_xent_fn *xent;
    bt_ttt_fwd_fn *ttt_fwd;
    bt_ttt_bwd_fn *ttt_bwd;
    bt_ttt_head_fn *ttt_head;
    int pack_a;                    /* panels packs blocks of A itself: sgemm_tn passes A^T as is  */
    int group_kib;                 /* KiB of filled B panels per panels call (0: BT_GROUP_BYTES)  */
} bt_isa_ops;

/* The table of the current ISA (the best supported one until bt_set_isa picks another). */
const bt_isa_ops *bt_ops(void);

/* The tables, one per ISA, each in its ISA's file (kernels_scalar.c, kernels_avx2.c,
 * kernels_avx512.c); the x86 ones exist only where BT_HAVE_X86 is set. */
extern const bt_isa_ops bt_ops_scalar, bt_ops_avx2, bt_ops_avx512;

/* dst[k] = clip(rint(row[k] * scale), -128, 127) for k in [k0, k1); returns their sum.
 * The one scalar definition of the rounding, shared by every path's tails. */
int32_t bt_quant_span(const float *row, int64_t k0, int64_t k1, float scale, int8_t *dst);

/* The entries.  Scalar: the reference every other path matches. */
bt_i8_fn bt_i8_scalar, bt_i8_avx2, bt_i8_avx512;
bt_i8_fn bt_i8t1_scalar, bt_i8t1_avx2, bt_i8t1_avx512;
bt_t1_u8_fn bt_t1_u8_scalar, bt_t1_u8_avx2, bt_t1_u8_avx512;
bt_i8f_fn bt_i8f_avx2;
bt_panel_fn bt_panel_scalar, bt_panel_avx2, bt_panel_avx512;
bt_panels_fn bt_panels_avx2, bt_panels_avx512;
bt_fill_fn bt_panel_rows_scalar, bt_panel_cols_scalar, bt_panel_rows_avx512, bt_panel_cols_avx512;
bt_q8fill_fn bt_fill_q8_scalar, bt_fill_q8_avx2, bt_fill_q8_avx512;
bt_tfill_fn bt_fill_t_scalar, bt_fill_t_avx2;
bt_quant_fn bt_quant_rows_scalar, bt_quant_rows_avx2, bt_quant_rows_avx512;
bt_s8_rows_fn bt_s8_rows_scalar, bt_s8_rows_avx2, bt_s8_rows_avx512;
bt_swiglu_fwd_fn bt_swiglu_fwd_scalar, bt_swiglu_fwd_avx2, bt_swiglu_fwd_avx512;
bt_swiglu_bwd_fn bt_swiglu_bwd_scalar, bt_swiglu_bwd_avx2, bt_swiglu_bwd_avx512;
bt_xent_fn bt_xent_scalar, bt_xent_avx2, bt_xent_avx512;
bt_ttt_fwd_fn bt_ttt_fwd_scalar, bt_ttt_fwd_avx2, bt_ttt_fwd_avx512;
bt_ttt_bwd_fn bt_ttt_bwd_scalar, bt_ttt_bwd_avx2, bt_ttt_bwd_avx512;
bt_ttt_head_fn bt_ttt_head_scalar, bt_ttt_head_avx2;

#endif /* BT_ISA_KERNELS_H */
