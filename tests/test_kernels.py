"""CPU kernels: exact int8 results, float results, every ISA path, threads, edge shapes."""
import numpy as np
import pytest
import refimpl

import bitttt
from bitttt import PackedTernary

# (N, K): 1x1, 1xN, K below / at / above the 256-weight block, odd sizes, and row counts
# that exercise the 4-row tiles and their tails
SHAPES = [(1, 1), (1, 1000), (1000, 1), (3, 5), (4, 256), (5, 255), (6, 257), (9, 513), (31, 777), (64, 1024)]
TOKENS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 14, 15, 17, 70]  # AVX2 takes 12+ tokens in 4-token panels, 64 at a time


def _packed(rng, n, k):
    return PackedTernary.quantize(rng.standard_normal((n, k)).astype(np.float32))


@pytest.mark.parametrize("n,k", SHAPES)
def test_int8_paths_equal_integer_reference(kernel, n, k, rng):
    p = _packed(rng, n, k)
    t = p.ternary()
    for m in TOKENS:
        x = rng.standard_normal((m, k)).astype(np.float32) * rng.uniform(0.1, 10)
        xq, a = bitttt.quantize_activations(x)
        rq, ra = refimpl.quantize_act(x)
        assert np.array_equal(xq, rq) and np.array_equal(a, ra)
        ref = refimpl.dot_i8(t, xq)
        assert np.array_equal(bitttt.dot_i8(p, xq), ref)
        yref = refimpl.gemm_i8(t, p.scale, xq, a)
        assert np.array_equal(bitttt.gemm_i8(p, xq, a), yref)
        assert np.array_equal(bitttt.bitlinear(p, x), yref)


@pytest.mark.parametrize("n,k", SHAPES)
def test_gemv_equals_gemm_rows(kernel, n, k, rng):
    p = _packed(rng, n, k)
    x = rng.standard_normal((5, k)).astype(np.float32)
    xq, a = bitttt.quantize_activations(x)
    full = bitttt.gemm_i8(p, xq, a)
    for i in range(5):
        xi, ai = bitttt.quantize_activations(x[i])
        assert ai.shape == () and np.array_equal(xi, xq[i])
        assert np.array_equal(bitttt.gemm_i8(p, xi, ai), full[i])
        assert np.array_equal(bitttt.bitlinear(p, x[i]), full[i])
        assert np.array_equal(bitttt.dot_i8(p, xq[i]), refimpl.dot_i8(p.ternary(), xq[i])[0])


def test_extreme_values_do_not_overflow(kernel):
    # every product at its extreme: codes 2 (w=+1) or 0 (w=-1) against -128, over a long row
    # (3 tokens take the per-token kernels, 13 the AVX2 panels with their int16 pair sums)
    k = 16384 + 77
    for m in (3, 13):
        for sign in (1, -1):
            p = PackedTernary.from_ternary(np.full((5, k), sign))
            xq = np.full((m, k), -128, dtype=np.int8)
            assert np.array_equal(bitttt.dot_i8(p, xq), np.full((m, 5), -128 * k * sign))
            xq[:] = 127
            assert np.array_equal(bitttt.dot_i8(p, xq), np.full((m, 5), 127 * k * sign))


def test_all_zero_weights_and_activations(kernel, rng):
    p = PackedTernary.quantize(np.zeros((7, 300), np.float32))
    x = rng.standard_normal((3, 300)).astype(np.float32)
    assert not bitttt.bitlinear(p, x).any()
    assert not bitttt.matmul(p, x).any()
    q = _packed(rng, 7, 300)
    zx = np.zeros((2, 300), np.float32)
    xq, a = bitttt.quantize_activations(zx)
    assert not xq.any() and np.all(a == np.float32(127) / np.float32(1e-5))
    assert not bitttt.bitlinear(q, zx).any()


@pytest.mark.parametrize("n,k", SHAPES)
def test_float_paths_match_float64_reference(kernel, n, k, rng):
    p = _packed(rng, n, k)
    w64 = p.ternary().astype(np.float64) * np.float64(np.float32(p.scale))
    for m in (1, 3, 8, 9, 20):
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = bitttt.matmul(p, x)
        ref = x.astype(np.float64) @ w64.T
        tol = 1e-6 * k * (np.abs(x).max() * p.scale + 1e-30)
        assert y.dtype == np.float32 and np.abs(y - ref).max() <= tol
        dy = rng.standard_normal((m, n)).astype(np.float32)
        dx = bitttt.matmul_t(p, dy)
        ref = dy.astype(np.float64) @ w64
        tol = 1e-6 * n * (np.abs(dy).max() * p.scale + 1e-30)
        assert dx.dtype == np.float32 and np.abs(dx - ref).max() <= tol
    assert np.array_equal(bitttt.matmul(p, x[0]), bitttt.matmul(p, x[:1])[0])
    assert np.array_equal(bitttt.matmul_t(p, dy[0]), bitttt.matmul_t(p, dy[:1])[0])


def test_float_paths_sum_sequentially(rng):
    # the documented order: one float32 accumulator per output, k ascending, then * s
    p = _packed(rng, 5, 300)
    t = p.ternary().astype(np.float32)
    x = rng.standard_normal((2, 300)).astype(np.float32)
    ref = np.zeros((2, 5), np.float32)
    for kk in range(300):
        ref = ref + x[:, kk : kk + 1] * t[:, kk][None, :]
    assert np.array_equal(bitttt.matmul(p, x), ref * np.float32(p.scale))


def _all_paths(fn):
    before = bitttt.get_kernel()
    try:
        outs = []
        for name in bitttt.available_kernels():
            bitttt.set_kernel(name)
            outs.append((name, fn()))
        return outs
    finally:
        bitttt.set_kernel(before)


@pytest.mark.parametrize("n,k", [(1, 1), (9, 513), (64, 1024), (130, 2000)])
def test_every_path_is_bit_identical(n, k, rng):
    p = _packed(rng, n, k)
    x = rng.standard_normal((13, k)).astype(np.float32) * 3
    dy = rng.standard_normal((13, n)).astype(np.float32)

    a_dense = rng.standard_normal((11, k)).astype(np.float32)
    b_dense = rng.standard_normal((k, 37)).astype(np.float32)

    def run():
        xq, a = bitttt.quantize_activations(x)
        return [xq, a, bitttt.dot_i8(p, xq), bitttt.bitlinear(p, x), bitttt.matmul(p, x),
                bitttt.matmul_t(p, dy), bitttt.sgemm(a_dense, b_dense), bitttt.sgemm(a_dense.T.copy(), b_dense, True),
                bitttt.sgemm(a_dense, b_dense.T.copy(), False, True)]

    outs = _all_paths(run)
    for name, got in outs[1:]:
        for ref, val in zip(outs[0][1], got):
            assert ref.dtype == val.dtype and np.array_equal(ref.view(np.uint8), val.view(np.uint8)), name


def test_threads_give_identical_results(kernel, threads, rng):
    p = _packed(rng, 515, 1300)  # large enough to run on several threads
    x = rng.standard_normal((37, 1300)).astype(np.float32)
    dy = rng.standard_normal((37, 515)).astype(np.float32)
    outs = []
    for t in (1, 2, 3, 8):
        bitttt.set_num_threads(t)
        xq, a = bitttt.quantize_activations(x)
        outs.append([bitttt.dot_i8(p, xq), bitttt.bitlinear(p, x), bitttt.bitlinear(p, x[0]),
                     bitttt.matmul(p, x), bitttt.matmul_t(p, dy)])
    for other in outs[1:]:
        for ref, val in zip(outs[0], other):
            assert np.array_equal(ref.view(np.uint8), val.view(np.uint8))


def test_kernels_release_the_gil(threads, rng):
    import threading

    bitttt.set_num_threads(1)
    p = _packed(rng, 1024, 4096)
    x = rng.standard_normal((64, 4096)).astype(np.float32)
    ref = bitttt.bitlinear(p, x)
    results = [None] * 4

    def work(i):
        results[i] = bitttt.bitlinear(p, x)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert all(np.array_equal(r, ref) for r in results)


@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (3, 33, 5), (9, 64, 300), (70, 65, 17)])
def test_sgemm_all_layouts(kernel, m, n, p, rng):
    a = rng.standard_normal((m, p)).astype(np.float32)
    b = rng.standard_normal((p, n)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-6 * p * np.abs(a).max() * np.abs(b).max()
    for ta in (False, True):
        for tb in (False, True):
            c = bitttt.sgemm(a.T.copy() if ta else a, b.T.copy() if tb else b, ta, tb)
            assert c.shape == (m, n) and np.abs(c - ref).max() <= tol


def test_sgemm_sums_sequentially_with_fma(rng):
    # the documented order: c = fma(a[i, p], b[p, j], c) for p ascending, from 0
    a = rng.standard_normal((2, 40)).astype(np.float32)
    b = rng.standard_normal((40, 3)).astype(np.float32)
    ref = np.zeros((2, 3), np.float64)
    for p in range(40):  # float64 product of float32 values is exact; round the sum once per term
        ref = (ref + a[:, p : p + 1].astype(np.float64) * b[p][None, :]).astype(np.float32).astype(np.float64)
    assert np.array_equal(bitttt.sgemm(a, b), ref.astype(np.float32))


def test_sgemm_threads_and_errors(threads, rng):
    a = rng.standard_normal((130, 300)).astype(np.float32)
    b = rng.standard_normal((300, 200)).astype(np.float32)
    outs = []
    for t in (1, 2, 3):
        bitttt.set_num_threads(t)
        outs.append(bitttt.sgemm(a, b))
    assert all(np.array_equal(outs[0], o) for o in outs[1:])
    with pytest.raises(ValueError, match="op\\(a\\) is 130x300 but op\\(b\\) is 200x300"):
        bitttt.sgemm(a, b, trans_b=True)
    with pytest.raises(TypeError, match="float32"):
        bitttt.sgemm(a.astype(np.float64), b)


@pytest.mark.parametrize("n,k", [(50, 5000), (37, 20000)])
def test_many_tokens_over_several_row_chunks(kernel, threads, n, k, rng):
    # from 16 tokens the AVX-512 path unpacks rows to bytes, 256 KiB of rows at a time:
    # these shapes take several chunks, with tails of rows and of tokens
    p = _packed(rng, n, k)
    x = rng.standard_normal((21, k)).astype(np.float32)
    xq, a = bitttt.quantize_activations(x)
    ref = refimpl.dot_i8(p.ternary(), xq)
    for t in (1, 2):
        bitttt.set_num_threads(t)
        assert np.array_equal(bitttt.dot_i8(p, xq), ref)


@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (2, 31, 127), (4, 33, 128), (5, 70, 129), (13, 97, 257),
                                   (200, 600, 40), (385, 64, 300), (14, 40, 1100)])
def test_float_panel_blocking_edges_bit_identical(threads, m, n, p, rng):
    # the SIMD panels cut rows in tiles (3 on AVX2, tails of 1 and 2), depth in blocks
    # (sums parked in C between them), rows in blocks and panels in groups, with partial
    # panels (n not a multiple of 32): every path and thread count gives the scalar bits
    a = rng.standard_normal((m, p)).astype(np.float32)
    b = rng.standard_normal((p, n)).astype(np.float32)
    w = _packed(rng, n, p)
    dy = rng.standard_normal((m, n)).astype(np.float32)

    def run():
        outs = []
        for t in (1, 2):
            bitttt.set_num_threads(t)
            outs += [bitttt.sgemm(a, b), bitttt.sgemm(a.T.copy(), b, True), bitttt.sgemm(a, b.T.copy(), False, True),
                     bitttt.matmul(w, a), bitttt.matmul_t(w, dy)]
        return outs

    outs = _all_paths(run)
    assert outs[0][0] == "scalar"
    for name, got in outs[1:]:
        for ref, val in zip(outs[0][1], got):
            assert np.array_equal(ref.view(np.uint32), val.view(np.uint32)), name


def _gemm_s8_runs(w, ws, xq, a):
    """The exact int64 product times ws / a, and gemm_s8's output on 1 and 2 threads."""
    from bitttt import _core

    exact = xq.astype(np.int64) @ w.astype(np.int64).T
    want = exact.astype(np.float32) * (ws[None, :] / a[:, None])
    outs = []
    for t in (1, 2):
        bitttt.set_num_threads(t)
        y = np.empty((xq.shape[0], w.shape[0]), np.float32)
        _core.gemm_s8(w, ws, xq, a, y)
        outs.append((t, y))
    return want, outs


@pytest.mark.parametrize("m, n, k", [(1, 1, 1), (1, 300, 31), (1, 130, 200), (1, 33, 2048), (3, 257, 64), (5, 64, 2048),
                                     (4, 1000, 95)])
def test_int8_head_gemm_exact(kernel, threads, m, n, k, rng):
    """int8 x int8 head product: exact int32 sums times wscale / a, the same bits on every path."""
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    w[0, : min(k, 3)] = 127
    ws = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    xq = rng.integers(-127, 128, (m, k), dtype=np.int8)
    xq[0, : min(k, 3)] = -127  # the extremes: |w x| = 127 * 127 must not saturate
    a = rng.uniform(1.0, 50.0, m).astype(np.float32)
    want, outs = _gemm_s8_runs(w, ws, xq, a)
    for _, y in outs:
        assert np.array_equal(y, want)


@pytest.mark.parametrize("p,m,n", [(1, 1, 1), (7, 5, 33), (300, 40, 31), (1100, 14, 257)])
def test_weight_gradient_from_codes_equals_dequantized_gemm(kernel, threads, p, m, n, rng):
    # dW = dY^T Qa(x) filled from the int8 codes: the same bits as the float GEMM on Qa(x)
    from bitttt import _core

    dy = rng.standard_normal((p, m)).astype(np.float32)
    xq, a = bitttt.quantize_activations(rng.standard_normal((p, n)).astype(np.float32) * 3)
    deq = np.empty((p, n), dtype=np.float32)
    _core.dequant_act(xq, a, deq)
    want = bitttt.sgemm(dy, deq, trans_a=True)
    for t in (1, 2):
        bitttt.set_num_threads(t)
        got = bitttt.kernels.sgemm_tn_q8(dy, xq, a)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    assert np.allclose(want, dy.astype(np.float64).T @ (xq / a[:, None].astype(np.float64)), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="first axes must agree"):
        bitttt.kernels.sgemm_tn_q8(dy, xq[:-1] if p > 1 else np.zeros((2, n), np.int8), a)


@pytest.mark.parametrize("m,n,p", [(11, 33, 257), (12, 32, 256), (13, 65, 513), (25, 1, 255), (241, 97, 300),
                                   (1, 64, 1), (37, 160, 2), (250, 545, 300)])
def test_float_gemm_register_tiles_and_blocks_bit_identical(threads, m, n, p, rng):
    # AVX-512 cuts rows in 12-row tiles (tails 1..11) and blocks of 240, depth in blocks of 256,
    # packs A^T per block (a power-of-two leading dimension included); every path and thread
    # count gives the scalar bits, for every float product of the training step
    a = rng.standard_normal((m, p)).astype(np.float32)
    b = rng.standard_normal((p, n)).astype(np.float32)
    wide = np.zeros((p, 256), np.float32)  # A^T with lda = 256
    wide[:, :m] = a.T
    w = _packed(rng, n, p)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    g = rng.standard_normal((p, m)).astype(np.float32)
    xq, xa = bitttt.quantize_activations(rng.standard_normal((p, n)).astype(np.float32))

    def run():
        outs = []
        for t in (1, 2):
            bitttt.set_num_threads(t)
            outs += [bitttt.sgemm(a, b), bitttt.sgemm(a.T.copy(), b, True), bitttt.sgemm(a, b.T.copy(), False, True),
                     bitttt.sgemm(wide, b, True)[:m], bitttt.matmul_t(w, dy), bitttt.kernels.sgemm_tn_q8(g, xq, xa)]
        return outs

    outs = _all_paths(run)
    assert outs[0][0] == "scalar"
    for name, got in outs[1:]:
        for i, (ref, val) in enumerate(zip(outs[0][1], got)):
            assert np.array_equal(ref.view(np.uint32), val.view(np.uint32)), (name, i)


def test_stacked_weight_gradients_equal_separate_calls(kernel, threads, rng):
    # q/k/v (or gate/up) share Qa(x): one sgemm_tn_q8 over [dq | dk | dv] side by side fills B once
    # and gives, row block by row block, the bits of three separate calls (each output is the same
    # chain over the tokens), also when a row block of the stack straddles two of the products
    p, n, widths = 300, 70, (29, 64, 37)
    gs = [rng.standard_normal((p, w)).astype(np.float32) for w in widths]
    xq, xa = bitttt.quantize_activations(rng.standard_normal((p, n)).astype(np.float32))
    stacked = bitttt.kernels.sgemm_tn_q8(np.concatenate(gs, axis=1), xq, xa)
    row = 0
    for g in gs:
        want = bitttt.kernels.sgemm_tn_q8(g, xq, xa)
        assert np.array_equal(stacked[row:row + g.shape[1]].view(np.uint32), want.view(np.uint32))
        row += g.shape[1]


@pytest.mark.parametrize("m, n, k", [(2, 5, 1), (4, 4, 64), (6, 9, 63), (7, 13, 65), (9, 1030, 300), (17, 7, 4097),
                                     (5, 2, 12000)])
def test_int8_head_tiles_and_chunks_exact(kernel, threads, m, n, k, rng):
    """gemm_s8 on shapes that cut the VNNI path's 4x4 tiles, K tails and row chunks: exact sums."""
    from bitttt import _core

    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    xq = rng.integers(-127, 128, (m, k), dtype=np.int8)
    w[-1], xq[-1] = -127, -127  # the extremes in the last row and token: the largest offset sums
    ws = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    a = rng.uniform(1.0, 50.0, m).astype(np.float32)
    exact = xq.astype(np.int64) @ w.astype(np.int64).T
    want = exact.astype(np.float32) * (ws[None, :] / a[:, None])
    for t in (1, 2):
        bitttt.set_num_threads(t)
        for rows in (slice(None), slice(0, 1)):  # many tokens, and one (the decoding path)
            y = np.empty((len(xq[rows]), n), np.float32)
            _core.gemm_s8(w, ws, np.ascontiguousarray(xq[rows]), np.ascontiguousarray(a[rows]), y)
            assert np.array_equal(y, want[rows])


# the AVX-512 panels of many tokens (16+): 48-row panels of three 16-row vectors and 8-token tiles;
# these shapes cut the panels (rows mod 48 and mod 16), the token tiles (1..7 left over), the
# panel chunks (several per call for the long rows) and the threads' row ranges
PANEL_SHAPES = [(1, 256), (15, 300), (16, 1000), (17, 257), (47, 512), (49, 2048), (100, 100), (250, 1536),
                (600, 3000)]


@pytest.mark.parametrize("n,k", PANEL_SHAPES)
def test_int8_panels_tiles_and_tails_exact(kernel, threads, n, k, rng):
    """dot_i8 / gemm_i8 / bitlinear of 16 to 71 tokens on both formats: the exact integer sums."""
    p = _packed(rng, n, k)
    t = p.ternary()
    for m in (16, 23, 31, 71):
        x = rng.standard_normal((m, k)).astype(np.float32)
        x[-1] = np.where(t[0] > 0, -1.0, 1.0)  # the last token at the extremes against the first row
        xq, a = bitttt.quantize_activations(x)
        ref = refimpl.dot_i8(t, xq)
        yref = refimpl.gemm_i8(t, p.scale, xq, a)
        for fmt in ("t2", "t1"):
            q = p.to_format(fmt)
            for th in (1, 2):
                bitttt.set_num_threads(th)
                assert np.array_equal(bitttt.dot_i8(q, xq), ref), (fmt, m, th)
                assert np.array_equal(bitttt.gemm_i8(q, xq, a), yref), (fmt, m, th)
                assert np.array_equal(bitttt.bitlinear(q, x), yref), (fmt, m, th)


@pytest.mark.parametrize("m, n, k", [(16, 1, 4), (16, 49, 64), (23, 17, 68), (31, 100, 1000), (40, 47, 2048),
                                     (71, 250, 300), (16, 3000, 200)])
def test_int8_head_panels_exact(kernel, threads, m, n, k, rng):
    """gemm_s8 of 16+ tokens, K a multiple of 4 (the AVX-512 panels: offset weights, masked K chunks,
    row and token tails): exact sums times wscale / a."""
    w = rng.integers(-127, 128, (n, k), dtype=np.int8)
    xq = rng.integers(-127, 128, (m, k), dtype=np.int8)
    w[-1], xq[-1] = -127, -127  # the largest offset sums
    w[0], xq[0] = 127, -127
    ws = rng.uniform(1e-3, 1e-1, n).astype(np.float32)
    a = rng.uniform(1.0, 50.0, m).astype(np.float32)
    want, outs = _gemm_s8_runs(w, ws, xq, a)
    for t, y in outs:
        assert np.array_equal(y.view(np.uint32), want.view(np.uint32)), t
