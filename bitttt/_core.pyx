# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Thin Cython bridge to the C core in src_c/.

Callers (bitttt.ternary, bitttt.kernels) validate dtypes, shapes and contiguity;
the functions here trust their arguments, release the GIL around the C calls and
map C error codes to Python exceptions.
"""
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uintptr_t


cdef extern from "bt_ternary.h":
    ctypedef struct bt_ternary:
        int64_t rows
        int64_t cols
        int64_t stride
        float scale
        uint8_t *codes
        int fmt
    int BT_FMT_T2, BT_FMT_T1
    int64_t bt_fmt_stride(int fmt, int64_t cols)
    int64_t bt_fmt_padded_cols(int fmt, int64_t cols)
    int bt_transcode(const bt_ternary *src, int64_t r0, int64_t r1, bt_ternary *dst) nogil
    int BT_OK, BT_ERR_NONFINITE, BT_ERR_BADCODE, BT_ERR_SHAPE, BT_ERR_NOMEM, BT_ERR_ISA, BT_ERR_SCALE
    int BT_BLOCK, BT_BLOCK_BYTES, BT_ALIGN, BT_MAX_COLS
    int64_t bt_row_stride(int64_t cols)
    int64_t bt_padded_cols(int64_t cols)
    int bt_absmean_scale(const float *w, int64_t rows, int64_t cols, int64_t ldw, float *scale) nogil
    int bt_pack(const float *w, int64_t ldw, float scale, bt_ternary *t) nogil
    void bt_unpack(const bt_ternary *t, float *out, int64_t ldo) nogil
    int bt_check_codes(const bt_ternary *t) nogil

cdef extern from "bt_quant.h":
    int bt_quantize_act(const float *x, int64_t M, int64_t K, int64_t ldx,
                        int8_t *q, int64_t ldq, float *a, int32_t *sums) nogil
    void bt_dequant_act(const int8_t *q, int64_t M, int64_t K, const float *a, float *out) nogil

cdef extern from "bt_kernels.h":
    int bt_gemm_i8_raw(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx,
                       int32_t *out, int64_t ldo) nogil
    int bt_gemm_i8(const bt_ternary *w, const int8_t *xq, int64_t M, int64_t ldx, const float *a,
                   float *y, int64_t ldy) nogil
    int bt_bitlinear(const bt_ternary *w, const float *x, int64_t M, int64_t ldx, float *y,
                     int64_t ldy, float *a) nogil
    int bt_gemm_f32(const bt_ternary *w, const float *x, int64_t M, int64_t ldx,
                    float *y, int64_t ldy) nogil
    int bt_gemm_f32_t(const bt_ternary *w, const float *dy, int64_t M, int64_t lddy,
                      float *dx, int64_t lddx) nogil
    int bt_sgemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t P, const float *A, int64_t lda,
                 const float *B, int64_t ldb, float *C, int64_t ldc) nogil
    int bt_sgemm_tn_q8(int64_t M, int64_t N, int64_t P, const float *A, int64_t lda, const int8_t *q,
                       int64_t ldq, const float *a, float *C, int64_t ldc) nogil

cdef extern from "bt_ttt.h":
    ctypedef struct bt_ttt_args:
        int64_t B, H, T, f, K
        const float *q
        const float *k
        const float *v
        const float *cos
        const float *sin
        const float *lr
        const float *tok
        const float *W1
        const float *b1
        const float *gamma
        const float *beta
        const float *Winit
        const float *binit
        const uint8_t *reset
        float *Wfin
        float *bfin
    int64_t bt_ttt_saved_floats(int64_t K, int64_t f)
    int bt_ttt_forward(const bt_ttt_args *a, float *out, float *Ws, float *saved) nogil
    int bt_ttt_backward(const bt_ttt_args *a, const float *Ws, float *saved, const float *dout,
                        float *dq, float *dk, float *dv, float *dlr, float *dtok, float *dW1, float *db1,
                        float *dgamma, float *dbeta) nogil

cdef extern from "bt_ops.h":
    void bt_rmsnorm_fwd(const float *x, const float *w, int64_t M, int64_t D, float eps, float *y, float *r) nogil
    int bt_rmsnorm_bwd(const float *dy, const float *x, const float *w, const float *r, int64_t M, int64_t D,
                       float *dx, float *dw) nogil
    void bt_layernorm_fwd(const float *x, const float *w, const float *b, int64_t M, int64_t D, float eps,
                          float *y, float *xh, float *r) nogil
    int bt_layernorm_bwd(const float *dy, const float *xh, const float *w, const float *r, int64_t M, int64_t D,
                         float *dx, float *dw, float *db) nogil
    void bt_swiglu_fwd(const float *g, const float *u, int64_t n, float *h, float *sg) nogil
    void bt_swiglu_bwd(const float *dh, const float *g, const float *u, const float *sg, int64_t n, float *dg,
                       float *du) nogil
    void bt_softmax_xent(const float *logits, const int64_t *targets, const float *wt, int64_t M, int64_t V,
                         float *dlogits, double *loss) nogil

cdef extern from "bt_cpu.h":
    int BT_ISA_COUNT
    int bt_isa_supported(int isa)
    int bt_isa_best()
    int bt_get_isa()
    int bt_set_isa(int isa)
    const char *bt_isa_name(int isa)
    int bt_get_threads()
    void bt_set_threads(int n)
    int bt_openmp_enabled()

cdef extern from "bt_bandwidth.h":
    double bt_read_bandwidth(int64_t nbytes, int reps, int threads) nogil
    double bt_now() nogil


BLOCK = BT_BLOCK
BLOCK_BYTES = BT_BLOCK_BYTES
ALIGN = BT_ALIGN
MAX_COLS = BT_MAX_COLS
ISA_NAMES = tuple(bt_isa_name(i).decode() for i in range(BT_ISA_COUNT))


FMT_T2 = BT_FMT_T2
FMT_T1 = BT_FMT_T1


def row_stride(int64_t cols, int fmt=BT_FMT_T2):
    """Bytes per packed row for `cols` weights in format `fmt` (FMT_T2 or FMT_T1)."""
    return bt_fmt_stride(fmt, cols)


def padded_cols(int64_t cols, int fmt=BT_FMT_T2):
    """`cols` rounded up to the activation padding of format `fmt` (t2: whole 256-weight blocks)."""
    return bt_fmt_padded_cols(fmt, cols)


cdef int _check(int err) except -1:
    if err == BT_OK:
        return 0
    if err == BT_ERR_NONFINITE:
        raise ValueError("input contains NaN or infinity")
    if err == BT_ERR_BADCODE:
        raise ValueError("packed codes are corrupted (invalid 2-bit code 0b11 or nonzero padding)")
    if err == BT_ERR_NOMEM:
        raise MemoryError("bitttt kernel could not allocate its scratch buffer")
    if err == BT_ERR_SCALE:
        raise ValueError("activation scales a must be positive and finite")
    if err == BT_ERR_ISA:
        raise ValueError("kernel ISA not supported on this CPU")
    raise RuntimeError(f"bitttt C core error {err}")


cdef inline void _view(bt_ternary *t, const uint8_t[:, ::1] codes, int64_t cols, float scale,
                       int fmt=BT_FMT_T2) noexcept nogil:
    t.rows = codes.shape[0]
    t.cols = cols
    t.stride = codes.shape[1]
    t.scale = scale
    t.codes = <uint8_t *>&codes[0, 0]
    t.fmt = BT_FMT_T1 if fmt == BT_FMT_T1 else BT_FMT_T2


def transcode(const uint8_t[:, ::1] src, int64_t cols, int src_fmt, uint8_t[:, ::1] dst, int dst_fmt):
    """dst [rows, row_stride(cols, dst_fmt)] = the weights of src [rows, row_stride(cols, src_fmt)]."""
    cdef bt_ternary s, d
    cdef int err
    _view(&s, src, cols, 1.0, src_fmt)
    _view(&d, dst, cols, 1.0, dst_fmt)
    with nogil:
        err = bt_transcode(&s, 0, s.rows, &d)
    _check(err)


def absmean_scale(const float[:, ::1] w):
    """s = mean|w| + 1e-5 (float32, summed in float64); ValueError on NaN/inf."""
    cdef float s = 0
    cdef int err
    with nogil:
        err = bt_absmean_scale(&w[0, 0], w.shape[0], w.shape[1], w.shape[1], &s)
    _check(err)
    return s


def pack(const float[:, ::1] w, float scale, uint8_t[:, ::1] codes, int fmt=BT_FMT_T2):
    """Quantize w [rows, cols] with `scale` into codes [rows, stride]."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, w.shape[1], scale, fmt)
    with nogil:
        err = bt_pack(&w[0, 0], w.shape[1], scale, &t)
    _check(err)


def unpack(const uint8_t[:, ::1] codes, int64_t cols, float scale, float[:, ::1] out, int fmt=BT_FMT_T2):
    """out [rows, cols] = scale * (code - 1)."""
    cdef bt_ternary t
    _view(&t, codes, cols, scale, fmt)
    with nogil:
        bt_unpack(&t, &out[0, 0], out.shape[1])


def check_codes(const uint8_t[:, ::1] codes, int64_t cols, int fmt=BT_FMT_T2):
    """ValueError unless every code is valid and the padding holds zeros."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, 1.0, fmt)
    with nogil:
        err = bt_check_codes(&t)
    _check(err)


def quantize_act(const float[:, ::1] x, int8_t[:, ::1] q, float[::1] a, int32_t[::1] sums):
    """Per-row absmax int8 quantization of x [M, K] into q [M, ldq >= K] (zeros past K)."""
    cdef int err
    with nogil:
        err = bt_quantize_act(&x[0, 0], x.shape[0], x.shape[1], x.shape[1],
                              &q[0, 0], q.shape[1], &a[0], &sums[0])
    _check(err)


def dequant_act(const int8_t[:, ::1] q, const float[::1] a, float[:, ::1] out):
    """out [M, K] = q / a[m]."""
    with nogil:
        bt_dequant_act(&q[0, 0], q.shape[0], q.shape[1], &a[0], &out[0, 0])


def gemm_i8_raw(const uint8_t[:, ::1] codes, int64_t cols, const int8_t[:, ::1] xq,
                int32_t[:, ::1] out, int fmt=BT_FMT_T2):
    """out [M, N] = exact int32 dot products of the ternary rows with xq [M, K]."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, 1.0, fmt)
    with nogil:
        err = bt_gemm_i8_raw(&t, &xq[0, 0], xq.shape[0], xq.shape[1], &out[0, 0], out.shape[1])
    _check(err)


def gemm_i8(const uint8_t[:, ::1] codes, int64_t cols, float scale, const int8_t[:, ::1] xq,
            const float[::1] a, float[:, ::1] y, int fmt=BT_FMT_T2):
    """y [M, N] = (float)dot * (scale / a[m])."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, scale, fmt)
    with nogil:
        err = bt_gemm_i8(&t, &xq[0, 0], xq.shape[0], xq.shape[1], &a[0], &y[0, 0], y.shape[1])
    _check(err)


def bitlinear(const uint8_t[:, ::1] codes, int64_t cols, float scale, const float[:, ::1] x,
              float[:, ::1] y, float[::1] a, int fmt=BT_FMT_T2):
    """y [M, N] = Qa(x) @ (scale * w)^T; a [M] receives the activation scales."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, scale, fmt)
    with nogil:
        err = bt_bitlinear(&t, &x[0, 0], x.shape[0], x.shape[1], &y[0, 0], y.shape[1], &a[0])
    _check(err)


def gemm_f32(const uint8_t[:, ::1] codes, int64_t cols, float scale, const float[:, ::1] x,
             float[:, ::1] y, int fmt=BT_FMT_T2):
    """y [M, N] = x [M, K] @ (scale * w)^T."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, scale, fmt)
    with nogil:
        err = bt_gemm_f32(&t, &x[0, 0], x.shape[0], x.shape[1], &y[0, 0], y.shape[1])
    _check(err)


def gemm_f32_t(const uint8_t[:, ::1] codes, int64_t cols, float scale, const float[:, ::1] dy,
               float[:, ::1] dx, int fmt=BT_FMT_T2):
    """dx [M, K] = dy [M, N] @ (scale * w)."""
    cdef bt_ternary t
    cdef int err
    _view(&t, codes, cols, scale, fmt)
    with nogil:
        err = bt_gemm_f32_t(&t, &dy[0, 0], dy.shape[0], dy.shape[1], &dx[0, 0], dx.shape[1])
    _check(err)


def sgemm(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c, bint trans_a, bint trans_b):
    """c [M, N] = op(a) @ op(b); shapes checked by the caller."""
    cdef int err
    cdef int64_t M = c.shape[0], N = c.shape[1]
    cdef int64_t P = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        err = bt_sgemm(trans_a, trans_b, M, N, P, &a[0, 0], a.shape[1], &b[0, 0], b.shape[1],
                       &c[0, 0], c.shape[1])
    _check(err)


def sgemm_tn_q8(const float[:, ::1] a, const int8_t[:, ::1] q, const float[::1] s, float[:, ::1] c):
    """c [M, N] = a^T @ (q / s[:, None]); a [P, M], q [P, N], s [P]; shapes checked by the caller."""
    cdef int err
    with nogil:
        err = bt_sgemm_tn_q8(c.shape[0], c.shape[1], a.shape[0], &a[0, 0], a.shape[1], &q[0, 0], q.shape[1],
                             &s[0], &c[0, 0], c.shape[1])
    _check(err)


cdef void _ttt_args(bt_ttt_args *a, int64_t H, const float[:, :, ::1] q, const float[:, :, ::1] k,
                    const float[:, :, ::1] v, const float[:, ::1] cos, const float[:, ::1] sin,
                    const float[:, :, ::1] lr, const float[::1] tok, const float[:, :, ::1] W1,
                    const float[:, ::1] b1, const float[:, ::1] gamma, const float[:, ::1] beta) noexcept:
    a.B = q.shape[0]
    a.H = H
    a.T = q.shape[1]
    a.f = q.shape[2] // H
    a.K = tok.shape[0]
    a.q = &q[0, 0, 0]
    a.k = &k[0, 0, 0]
    a.v = &v[0, 0, 0]
    a.cos = &cos[0, 0]
    a.sin = &sin[0, 0]
    a.lr = &lr[0, 0, 0]
    a.tok = &tok[0]
    a.W1 = &W1[0, 0, 0]
    a.b1 = &b1[0, 0]
    a.gamma = &gamma[0, 0]
    a.beta = &beta[0, 0]
    a.Winit = NULL
    a.binit = NULL
    a.reset = NULL
    a.Wfin = NULL
    a.bfin = NULL


cdef void _ttt_stream(bt_ttt_args *a, const float[:, :, ::1] Winit, const float[:, ::1] binit,
                      const uint8_t[:, ::1] reset) noexcept:
    if Winit is not None:
        a.Winit = &Winit[0, 0, 0]
        a.binit = &binit[0, 0]
    if reset is not None:
        a.reset = &reset[0, 0]


def ttt_forward(int64_t H, const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v,
                const float[:, ::1] cos, const float[:, ::1] sin, const float[:, :, ::1] lr, const float[::1] tok,
                const float[:, :, ::1] W1, const float[:, ::1] b1, const float[:, ::1] gamma,
                const float[:, ::1] beta, float[:, :, ::1] out, float[:, :, :, ::1] Ws, float[:, :, ::1] saved,
                const float[:, :, ::1] Winit=None, const float[:, ::1] binit=None, const uint8_t[:, ::1] reset=None,
                float[:, :, ::1] Wfin=None, float[:, ::1] bfin=None):
    """TTT-Linear inner loop (src_c/bt_ttt.h); shapes checked by bitttt.backend.cpu.  The streaming
    arguments (Winit [R, f, f] with binit [R, f], reset [B, C], Wfin [R, f, f] with bfin [R, f]) are
    optional."""
    cdef bt_ttt_args a
    cdef int err
    _ttt_args(&a, H, q, k, v, cos, sin, lr, tok, W1, b1, gamma, beta)
    _ttt_stream(&a, Winit, binit, reset)
    if Wfin is not None:
        a.Wfin = &Wfin[0, 0, 0]
        a.bfin = &bfin[0, 0]
    with nogil:
        err = bt_ttt_forward(&a, &out[0, 0, 0], &Ws[0, 0, 0, 0], &saved[0, 0, 0])
    _check(err)


def ttt_saved_floats(int64_t K, int64_t f):
    """Floats the TTT forward saves per (sequence x head, mini-batch) for the backward."""
    return bt_ttt_saved_floats(K, f)


def ttt_backward(int64_t H, const float[:, :, ::1] q, const float[:, :, ::1] k, const float[:, :, ::1] v,
                 const float[:, ::1] cos, const float[:, ::1] sin, const float[:, :, ::1] lr, const float[::1] tok,
                 const float[:, :, ::1] W1, const float[:, ::1] b1, const float[:, ::1] gamma,
                 const float[:, ::1] beta, const float[:, :, :, ::1] Ws, float[:, :, ::1] saved,
                 const float[:, :, ::1] dout, float[:, :, ::1] dq, float[:, :, ::1] dk, float[:, :, ::1] dv,
                 float[:, :, ::1] dlr, float[:, ::1] dtok, float[:, :, ::1] dW1, float[:, ::1] db1,
                 float[:, ::1] dgamma, float[:, ::1] dbeta, const float[:, :, ::1] Winit=None,
                 const float[:, ::1] binit=None, const uint8_t[:, ::1] reset=None):
    """Backward of ttt_forward (the same streaming arguments); parameter gradients per row, summed by
    the caller."""
    cdef bt_ttt_args a
    cdef int err
    _ttt_args(&a, H, q, k, v, cos, sin, lr, tok, W1, b1, gamma, beta)
    _ttt_stream(&a, Winit, binit, reset)
    with nogil:
        err = bt_ttt_backward(&a, &Ws[0, 0, 0, 0], &saved[0, 0, 0], &dout[0, 0, 0], &dq[0, 0, 0], &dk[0, 0, 0],
                              &dv[0, 0, 0], &dlr[0, 0, 0], &dtok[0, 0], &dW1[0, 0, 0], &db1[0, 0],
                              &dgamma[0, 0], &dbeta[0, 0])
    _check(err)


def rmsnorm_fwd(const float[:, ::1] x, const float[::1] w, float eps, float[:, ::1] y, float[::1] r):
    with nogil:
        bt_rmsnorm_fwd(&x[0, 0], &w[0], x.shape[0], x.shape[1], eps, &y[0, 0], &r[0])


def rmsnorm_bwd(const float[:, ::1] dy, const float[:, ::1] x, const float[::1] w, const float[::1] r,
                float[:, ::1] dx, float[::1] dw):
    cdef int err
    with nogil:
        err = bt_rmsnorm_bwd(&dy[0, 0], &x[0, 0], &w[0], &r[0], x.shape[0], x.shape[1], &dx[0, 0], &dw[0])
    _check(err)


def layernorm_fwd(const float[:, ::1] x, const float[::1] w, const float[::1] b, float eps, float[:, ::1] y,
                  float[:, ::1] xh, float[::1] r):
    with nogil:
        bt_layernorm_fwd(&x[0, 0], &w[0], &b[0], x.shape[0], x.shape[1], eps, &y[0, 0], &xh[0, 0], &r[0])


def layernorm_bwd(const float[:, ::1] dy, const float[:, ::1] xh, const float[::1] w, const float[::1] r,
                  float[:, ::1] dx, float[::1] dw, float[::1] db):
    cdef int err
    with nogil:
        err = bt_layernorm_bwd(&dy[0, 0], &xh[0, 0], &w[0], &r[0], xh.shape[0], xh.shape[1], &dx[0, 0], &dw[0],
                               &db[0])
    _check(err)


def swiglu_fwd(const float[::1] g, const float[::1] u, float[::1] h, float[::1] sg=None):
    """sg None: sigmoid(g) is not stored (swiglu_bwd recomputes it)."""
    cdef float *sp = NULL
    if sg is not None:
        sp = &sg[0]
    with nogil:
        bt_swiglu_fwd(&g[0], &u[0], g.shape[0], &h[0], sp)


def swiglu_bwd(const float[::1] dh, const float[::1] g, const float[::1] u, const float[::1] sg,
               float[::1] dg, float[::1] du):
    """sg None: recomputed from g, bit for bit the forward's."""
    cdef const float *sp = NULL
    if sg is not None:
        sp = &sg[0]
    with nogil:
        bt_swiglu_bwd(&dh[0], &g[0], &u[0], sp, g.shape[0], &dg[0], &du[0])


def softmax_xent(const float[:, ::1] logits, const int64_t[::1] targets, const float[::1] wt,
                 float[:, ::1] dlogits, double[::1] loss):
    with nogil:
        bt_softmax_xent(&logits[0, 0], &targets[0], &wt[0], logits.shape[0], logits.shape[1],
                        &dlogits[0, 0], &loss[0])


def isa_supported(int isa):
    return bool(bt_isa_supported(isa))


def isa_best():
    return bt_isa_best()


def get_isa():
    return bt_get_isa()


def set_isa(int isa):
    _check(bt_set_isa(isa))


def get_threads():
    return bt_get_threads()


def set_threads(int n):
    bt_set_threads(n)


def openmp_enabled():
    return bool(bt_openmp_enabled())


def read_bandwidth(int64_t nbytes, int reps, int threads):
    """Best read rate in bytes/s over `reps` passes of an `nbytes` buffer."""
    cdef double r
    with nogil:
        r = bt_read_bandwidth(nbytes, reps, threads)
    if r < 0:
        raise MemoryError(f"could not allocate {nbytes} bytes for the bandwidth probe")
    return r


def now():
    """Monotonic clock, seconds."""
    return bt_now()


cdef extern from "bt_optim.h":
    ctypedef struct bt_adamw_args:
        float lr, beta1, beta2, eps, weight_decay, bc1, bc2, gscale
    void bt_adamw(const bt_adamw_args *a, float *p, const float *grad, float *m, float *v, int64_t n) nogil
    double bt_sumsq(const float *x, int64_t n) nogil


def adamw(float[::1] p, const float[::1] grad, float[::1] m, float[::1] v, float lr, float beta1, float beta2,
          float eps, float weight_decay, float bc1, float bc2, float gscale):
    """One AdamW step over flat float32 views (p, m, v updated in place)."""
    cdef int64_t n = p.shape[0]
    if grad.shape[0] != n or m.shape[0] != n or v.shape[0] != n:
        raise ValueError("adamw: p, grad, m and v must have the same length")
    cdef bt_adamw_args a
    a.lr = lr
    a.beta1 = beta1
    a.beta2 = beta2
    a.eps = eps
    a.weight_decay = weight_decay
    a.bc1 = bc1
    a.bc2 = bc2
    a.gscale = gscale
    if n == 0:
        return
    with nogil:
        bt_adamw(&a, &p[0], &grad[0], &m[0], &v[0], n)


def sumsq(const float[::1] x):
    """Sum of squares of a flat float32 view, in double, in a fixed order."""
    if x.shape[0] == 0:
        return 0.0
    cdef double r
    with nogil:
        r = bt_sumsq(&x[0], x.shape[0])
    return r


cdef extern from "bt_int8.h":
    void bt_gemm_s8(const int8_t *W, int64_t ldw, const float *wscale, int64_t N, int64_t K, const int8_t *xq,
                    int64_t ldx, const float *a, int64_t M, float *y, int64_t ldy) nogil


def gemm_s8(const int8_t[:, ::1] w, const float[::1] wscale, const int8_t[:, ::1] xq, const float[::1] a,
            float[:, ::1] y):
    """y[m, n] = (sum_k w[n, k] xq[m, k]) * wscale[n] / a[m]  (exact int32 sums)."""
    cdef int64_t N = w.shape[0], K = w.shape[1], M = xq.shape[0]
    if xq.shape[1] != K or wscale.shape[0] != N or a.shape[0] != M or y.shape[0] != M or y.shape[1] != N:
        raise ValueError("gemm_s8: shapes do not agree")
    if N == 0 or M == 0:
        return
    with nogil:
        bt_gemm_s8(&w[0, 0], K, &wscale[0], N, K, &xq[0, 0], K, &a[0], M, &y[0, 0], N)


cdef extern from "bt_ttt.h":
    void bt_ttt_prefill(int64_t H, int64_t f, int64_t K, int64_t pos0, int64_t T, const float *q, const float *k,
                        const float *v, const float *xn, const float *lr_w, const float *lr_b, float lr_scale,
                        const float *tok, const float *gamma, const float *beta, float *W0, float *b0, float *Kb,
                        float *Gb, float *Sb, float *out, float *scratch) nogil


def ttt_prefill(int64_t pos0, const float[:, ::1] q, const float[:, ::1] k, const float[:, ::1] v,
                const float[:, ::1] xn, const float[:, ::1] lr_w, const float[::1] lr_b, float lr_scale,
                const float[::1] tok, const float[:, ::1] gamma, const float[:, ::1] beta,
                float[:, :, ::1] W0, float[:, ::1] b0, float[:, :, ::1] Kb, float[:, :, ::1] Gb, float[:, ::1] Sb,
                float[:, ::1] out):
    """T tokens through a layer's TTT inner loop (bt_ttt_prefill): q, k, v, xn, out [T, H f] (q, k
    rotated; xn the normalized layer input), lr_w [H, H f], lr_b [H], tok [K], gamma, beta, b0,
    Sb [H, f], W0 [H, f, f], Kb, Gb [H, K, f]; the state arrays are updated in place."""
    cdef int64_t T = q.shape[0], H = W0.shape[0], f = W0.shape[1], K = Kb.shape[1]
    if T < 1 or q.shape[1] != H * f or k.shape[0] != T or k.shape[1] != H * f or v.shape[0] != T \
            or v.shape[1] != H * f or out.shape[0] != T or out.shape[1] != H * f or xn.shape[0] != T \
            or xn.shape[1] != H * f or lr_w.shape[0] != H or lr_w.shape[1] != H * f or lr_b.shape[0] != H \
            or tok.shape[0] != K or not 0 <= pos0 < K:
        raise ValueError("ttt_prefill: token arrays disagree")
    if W0.shape[2] != f or gamma.shape[0] != H or gamma.shape[1] != f or beta.shape[0] != H or beta.shape[1] != f \
            or b0.shape[0] != H or b0.shape[1] != f or Sb.shape[0] != H or Sb.shape[1] != f or Kb.shape[0] != H \
            or Kb.shape[2] != f or Gb.shape[0] != H or Gb.shape[1] != K or Gb.shape[2] != f:
        raise ValueError("ttt_prefill: state shapes disagree")
    import numpy as np
    cdef float[::1] scratch = np.empty(H * 3 * f, dtype=np.float32)
    with nogil:
        bt_ttt_prefill(H, f, K, pos0, T, &q[0, 0], &k[0, 0], &v[0, 0], &xn[0, 0], &lr_w[0, 0], &lr_b[0], lr_scale,
                       &tok[0], &gamma[0, 0], &beta[0, 0], &W0[0, 0, 0], &b0[0, 0], &Kb[0, 0, 0], &Gb[0, 0, 0], &Sb[0, 0], &out[0, 0],
                       &scratch[0])


cdef extern from "bt_decode.h":
    ctypedef struct bt_dec_dims:
        int64_t D, H, f, I, K
        float rms_eps
        float lr_scale
        const float *cos
        const float *sin
    ctypedef struct bt_dec_layer:
        bt_ternary wq, wk, wv, wo, wgate, wup, wdown
        const float *norm1
        const float *norm2
        const float *lr_w
        const float *lr_b
        const float *gamma
        const float *beta
        const float *tok
        const float *post_w
        const float *post_b
    ctypedef struct bt_dec_state:
        float *W0
        float *b0
        float *Kb
        float *Gb
        float *Sb
    ctypedef struct bt_dec_head:
        const float *norm_w
        const int8_t *Wq
        const float *wscale
        const float *Wf
        int64_t V
    size_t bt_decode_scratch_floats(const bt_dec_dims *d)
    double bt_decode_min_parallel_bytes(double bytes)
    int bt_decode_token(const bt_dec_dims *d, const bt_dec_layer *layers, const bt_dec_state *states, int64_t L,
                        int64_t pos, float *x, const bt_dec_head *hd, float *logits, float *scratch) nogil


from libc.stdlib cimport calloc, free


def decode_min_parallel_bytes(double nbytes=-1.0):
    """Weights per token below which decoding runs on one thread; sets it when nbytes >= 0.
    Returns the previous value."""
    return bt_decode_min_parallel_bytes(nbytes)


cdef const float *_fptr(object keep, object arr, int64_t n, str name) except NULL:
    """A pointer into float32 C-contiguous `arr` of n values (kept alive in `keep`)."""
    import numpy as np
    flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    cdef const float[::1] mv = flat
    if mv.shape[0] != n:
        raise ValueError(f"Decoder: {name} has {mv.shape[0]} values, expected {n}")
    keep.append(flat)
    return &mv[0]


cdef class Decoder:
    """One token through every layer and the head in one C call per layer (bt_decode.h).

    dims: dict with D, H, f, I, K, rms_eps, lr_scale, cos, sin ([K, f / 2] float32).
    layers: one dict per layer: 'wq', 'wk', 'wv', 'wo', 'wgate', 'wup', 'wdown' as (codes
    uint8 [rows, stride], cols, scale[, fmt]) (fmt FMT_T2, the default, or FMT_T1), and float32 arrays 'norm1', 'norm2' [D], 'lr_w'
    [H, D], 'lr_b' [H], 'gamma', 'beta' [H, f], 'tok' [K], 'post_w', 'post_b' [D].
    head: dict with 'norm_w' [D] and either 'Wq' int8 [V, D] with 'wscale' [V], or 'Wf' float32 [V, D]."""
    cdef bt_dec_dims dims
    cdef bt_dec_layer *layers
    cdef bt_dec_state *states
    cdef bt_dec_head hd
    cdef int64_t L
    cdef list keep
    cdef float[::1] scratch

    def __cinit__(self):
        self.layers = NULL
        self.states = NULL

    def __init__(self, dict dims, list layers, dict head):
        import numpy as np
        self.keep = []
        cdef int64_t D = dims["D"], H = dims["H"], f = dims["f"], I = dims["I"], K = dims["K"]
        if D != H * f or f % 2 or K < 1 or I < 1:
            raise ValueError("Decoder: inconsistent dimensions")
        self.dims.D, self.dims.H, self.dims.f, self.dims.I, self.dims.K = D, H, f, I, K
        self.dims.rms_eps = dims["rms_eps"]
        self.dims.lr_scale = dims["lr_scale"]
        self.dims.cos = _fptr(self.keep, dims["cos"], K * (f // 2), "cos")
        self.dims.sin = _fptr(self.keep, dims["sin"], K * (f // 2), "sin")
        self.L = len(layers)
        self.layers = <bt_dec_layer *>calloc(max(self.L, 1), sizeof(bt_dec_layer))
        self.states = <bt_dec_state *>calloc(max(self.L, 1), sizeof(bt_dec_state))
        if self.layers == NULL or self.states == NULL:
            raise MemoryError()
        cdef bt_dec_layer *l
        cdef bt_ternary *slots[7]
        cdef const uint8_t[:, ::1] codes
        for i, spec in enumerate(layers):
            l = &self.layers[i]
            slots[0], slots[1], slots[2], slots[3] = &l.wq, &l.wk, &l.wv, &l.wo
            slots[4], slots[5], slots[6] = &l.wgate, &l.wup, &l.wdown
            for j, (name, rows, cols) in enumerate((("wq", D, D), ("wk", D, D), ("wv", D, D), ("wo", D, D),
                                                    ("wgate", I, D), ("wup", I, D), ("wdown", D, I))):
                c, ncols, scale = spec[name][:3]
                fmt = spec[name][3] if len(spec[name]) > 3 else BT_FMT_T2
                if fmt not in (BT_FMT_T2, BT_FMT_T1):
                    raise ValueError(f"Decoder: layer {i} {name} has an unknown format {fmt}")
                codes = c
                if codes.shape[0] != rows or ncols != cols or codes.shape[1] != bt_fmt_stride(fmt, cols):
                    raise ValueError(f"Decoder: layer {i} {name} has the wrong shape")
                self.keep.append(c)
                _view(slots[j], codes, cols, scale, fmt)
            l.norm1 = _fptr(self.keep, spec["norm1"], D, "norm1")
            l.norm2 = _fptr(self.keep, spec["norm2"], D, "norm2")
            l.lr_w = _fptr(self.keep, spec["lr_w"], H * D, "lr_w")
            l.lr_b = _fptr(self.keep, spec["lr_b"], H, "lr_b")
            l.gamma = _fptr(self.keep, spec["gamma"], H * f, "gamma")
            l.beta = _fptr(self.keep, spec["beta"], H * f, "beta")
            l.tok = _fptr(self.keep, spec["tok"], K, "tok")
            l.post_w = _fptr(self.keep, spec["post_w"], D, "post_w")
            l.post_b = _fptr(self.keep, spec["post_b"], D, "post_b")
        cdef const int8_t[:, ::1] wq
        cdef const float[::1] ws
        cdef const float[:, ::1] wf
        self.hd.norm_w = _fptr(self.keep, head["norm_w"], D, "norm_w")
        self.hd.Wq, self.hd.wscale, self.hd.Wf = NULL, NULL, NULL
        if head.get("Wq") is not None:
            wq, ws = head["Wq"], head["wscale"]
            if wq.shape[1] != D or ws.shape[0] != wq.shape[0]:
                raise ValueError("Decoder: the int8 head does not match")
            self.keep += [head["Wq"], head["wscale"]]
            self.hd.Wq, self.hd.wscale, self.hd.V = &wq[0, 0], &ws[0], wq.shape[0]
        else:
            wf = head["Wf"]
            if wf.shape[1] != D:
                raise ValueError("Decoder: the head does not match")
            self.keep.append(head["Wf"])
            self.hd.Wf, self.hd.V = &wf[0, 0], wf.shape[0]
        n = bt_decode_scratch_floats(&self.dims) + 16
        self.scratch = np.empty(n, dtype=np.float32)

    def __dealloc__(self):
        free(self.layers)
        free(self.states)

    cdef float *_scr(self) noexcept:
        cdef uintptr_t p = <uintptr_t>&self.scratch[0]
        return <float *>((p + 63) & ~(<uintptr_t>63))

    def step(self, float[::1] x, float[:, :, :, ::1] W0, float[:, :, ::1] b0, float[:, :, :, ::1] Kb,
             float[:, :, :, ::1] Gb, float[:, :, ::1] Sb, int64_t pos, float[::1] logits):
        """x [D] in place through every layer at mini-batch position pos, then logits [V] from
        the head; the state arrays ([L, H, f, f], [L, H, f], [L, H, K, f] twice, [L, H, f]) are
        updated in place."""
        cdef int64_t L = self.L, H = self.dims.H, f = self.dims.f, K = self.dims.K
        if x.shape[0] != self.dims.D or not 0 <= pos < K or logits.shape[0] != self.hd.V:
            raise ValueError("Decoder.step: bad x, pos or logits")
        if W0.shape[0] != L or W0.shape[1] != H or W0.shape[2] != f or W0.shape[3] != f or b0.shape[0] != L \
                or b0.shape[1] != H or b0.shape[2] != f or Sb.shape[0] != L or Sb.shape[1] != H or Sb.shape[2] != f \
                or Kb.shape[0] != L or Kb.shape[1] != H or Kb.shape[2] != K or Kb.shape[3] != f \
                or Gb.shape[0] != L or Gb.shape[1] != H or Gb.shape[2] != K or Gb.shape[3] != f:
            raise ValueError("Decoder.step: the state does not match the model")
        cdef int err = 0
        cdef int64_t li
        cdef float *scr = self._scr()
        for li in range(L):
            self.states[li].W0 = &W0[li, 0, 0, 0]
            self.states[li].b0 = &b0[li, 0, 0]
            self.states[li].Kb = &Kb[li, 0, 0, 0]
            self.states[li].Gb = &Gb[li, 0, 0, 0]
            self.states[li].Sb = &Sb[li, 0, 0]
        with nogil:
            err = bt_decode_token(&self.dims, self.layers, self.states, L, pos, &x[0], &self.hd, &logits[0], scr)
        _check(err)


# -- causal GQA attention (src_c/attention.c) ---------------------------------------------------
cdef extern from "bt_attention.h":
    ctypedef struct bt_attn_dims:
        int64_t B, H, Hkv, T, f, tile
        float scale
    int BT_KV_F32, BT_KV_F16, BT_KV_I8
    int bt_attn_forward(const bt_attn_dims *d, const float *q, const float *k, const float *v, float *out,
                        float *lse) nogil
    int bt_attn_backward(const bt_attn_dims *d, const float *q, const float *k, const float *v, const float *out,
                         const float *lse, const float *dout, float *dq, float *dk, float *dv) nogil
    int bt_attn_cached(int64_t T, int64_t H, int64_t Hkv, int64_t f, int64_t cap, int64_t start, float scale,
                       int kv_type, const float *q, const void *kc, const void *vc, const float *ks, const float *vs,
                       float *out) nogil


cdef bint _eq(Py_ssize_t *a, Py_ssize_t *b, int n) noexcept:
    cdef int i
    for i in range(n):
        if a[i] != b[i]:
            return False
    return True


cdef bt_attn_dims _attn_dims(const float[:, :, :, ::1] q, const float[:, :, :, ::1] k, float scale,
                             int64_t tile) except *:
    cdef bt_attn_dims d
    d.B, d.H, d.T, d.f = q.shape[0], q.shape[1], q.shape[2], q.shape[3]
    d.Hkv, d.tile, d.scale = k.shape[1], tile, scale
    if k.shape[0] != d.B or k.shape[2] != d.T or k.shape[3] != d.f or d.Hkv < 1 or d.H % d.Hkv or tile < 1:
        raise ValueError(f"attention: q [{q.shape[0]}, {q.shape[1]}, {q.shape[2]}, {q.shape[3]}] and k "
                         f"[{k.shape[0]}, {k.shape[1]}, {k.shape[2]}, {k.shape[3]}] do not fit (B, H, T, f) / "
                         f"(B, Hkv, T, f) with Hkv dividing H, tile {tile}")
    return d


def attn_forward(const float[:, :, :, ::1] q, const float[:, :, :, ::1] k, const float[:, :, :, ::1] v,
                 float scale, int64_t tile, float[:, :, :, ::1] out, float[:, :, ::1] lse):
    """Causal GQA attention in tiles (bt_attn_forward): q, out [B, H, T, f], k, v [B, Hkv, T, f],
    lse [B, H, T]."""
    cdef bt_attn_dims d = _attn_dims(q, k, scale, tile)
    if not _eq(v.shape, k.shape, 4) or not _eq(out.shape, q.shape, 4) \
            or lse.shape[0] != d.B or lse.shape[1] != d.H or lse.shape[2] != d.T:
        raise ValueError("attn_forward: v, out or lse has the wrong shape")
    cdef int err
    with nogil:
        err = bt_attn_forward(&d, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], &out[0, 0, 0, 0], &lse[0, 0, 0])
    _check(err)


def attn_backward(const float[:, :, :, ::1] q, const float[:, :, :, ::1] k, const float[:, :, :, ::1] v,
                  const float[:, :, :, ::1] out, const float[:, :, ::1] lse, const float[:, :, :, ::1] dout,
                  float scale, int64_t tile, float[:, :, :, ::1] dq, float[:, :, :, ::1] dk,
                  float[:, :, :, ::1] dv):
    """Backward of attn_forward (bt_attn_backward): dq like q, dk and dv like k (overwritten)."""
    cdef bt_attn_dims d = _attn_dims(q, k, scale, tile)
    if not _eq(v.shape, k.shape, 4) or not _eq(dk.shape, k.shape, 4) or not _eq(dv.shape, k.shape, 4) \
            or not _eq(out.shape, q.shape, 4) or not _eq(dout.shape, q.shape, 4) or not _eq(dq.shape, q.shape, 4) \
            or lse.shape[0] != d.B or lse.shape[1] != d.H or lse.shape[2] != d.T:
        raise ValueError("attn_backward: an array has the wrong shape")
    cdef int err
    with nogil:
        err = bt_attn_backward(&d, &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0], &out[0, 0, 0, 0],
                               &lse[0, 0, 0], &dout[0, 0, 0, 0], &dq[0, 0, 0, 0], &dk[0, 0, 0, 0], &dv[0, 0, 0, 0])
    _check(err)


def attn_cached(const float[:, :, ::1] q, object kc, object vc, object ks, object vs, int64_t start, float scale,
                float[:, :, ::1] out):
    """T queries q [T, H, f] against a KV cache kc, vc [Hkv, cap, f] (float32, float16 or int8
    with float32 scales ks, vs [Hkv, cap]; None for a float cache) -> out [T, H, f] (bt_attn_cached)."""
    cdef int64_t T = q.shape[0], H = q.shape[1], f = q.shape[2]
    if kc.dtype != vc.dtype or kc.shape != vc.shape or kc.ndim != 3 or not kc.flags.c_contiguous \
            or not vc.flags.c_contiguous:
        raise ValueError("attn_cached: kc and vc must be C-contiguous [Hkv, cap, f] arrays of one dtype")
    cdef int64_t Hkv = kc.shape[0], cap = kc.shape[1]
    cdef int kind
    cdef str code = kc.dtype.char
    if code == "f":
        kind = BT_KV_F32
    elif code == "e":
        kind = BT_KV_F16
    elif code == "b":
        kind = BT_KV_I8
    else:
        raise TypeError(f"attn_cached: a KV cache of {kc.dtype} (float32, float16 or int8)")
    if kc.shape[2] != f or Hkv < 1 or H % Hkv or start < 0 or start + T > cap or not _eq(out.shape, q.shape, 3):
        raise ValueError("attn_cached: q, out and the cache do not fit")
    cdef const float[:, ::1] ksv
    cdef const float[:, ::1] vsv
    cdef const float *ksp = NULL
    cdef const float *vsp = NULL
    if kind == BT_KV_I8:
        if ks is None or vs is None or ks.shape != (Hkv, cap) or vs.shape != (Hkv, cap):
            raise ValueError("attn_cached: an int8 cache needs scales ks, vs [Hkv, cap]")
        ksv = ks
        vsv = vs
        ksp = &ksv[0, 0]
        vsp = &vsv[0, 0]
    cdef const void *kp = <const void *><uintptr_t>kc.ctypes.data
    cdef const void *vp = <const void *><uintptr_t>vc.ctypes.data
    cdef int err
    with nogil:
        err = bt_attn_cached(T, H, Hkv, f, cap, start, scale, kind, &q[0, 0, 0], kp, vp, ksp, vsp, &out[0, 0, 0])
    _check(err)
