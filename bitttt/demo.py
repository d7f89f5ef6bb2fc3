"""Kernel demo, the default job until training and inference land:

    python -m bitttt.demo [--size 4096] [--tokens 64] [--threads N] [--kernel auto]

Quantizes a random [size, size] float32 matrix to packed ternary weights, checks the
int8 and float kernels against NumPy on it, and prints their throughput next to
NumPy float32 matmul on the same weights.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import kernels, runtime
from .ternary import PackedTernary


def _best_of(fn, seconds: float = 0.5) -> float:
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=4096, help="K = N of the weight matrix (default 4096)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens in the GEMM (default 64)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    ap.add_argument("--kernel", default="auto", help="scalar | avx2 | avx512 | auto")
    args = ap.parse_args(argv)
    if args.size < 1 or args.tokens < 1:
        ap.error("--size and --tokens must be at least 1")
    try:
        runtime.set_kernel(args.kernel)
        if args.threads is not None:
            runtime.set_num_threads(args.threads)
    except (ValueError, TypeError) as e:
        ap.error(str(e))

    n, m = args.size, args.tokens
    info = runtime.cpu_info()
    print(f"bitttt kernel demo: kernel={info['kernel']} (available: {', '.join(info['available_kernels'])}), "
          f"threads={info['threads']}")
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    t0 = time.perf_counter()
    p = PackedTernary.quantize(w)
    print(f"quantized W {n}x{n}: {p.nbytes / 2**20:.2f} MiB packed ({p.bits_per_weight:.3f} bits/weight) "
          f"vs {w.nbytes / 2**20:.1f} MiB float32, in {time.perf_counter() - t0:.2f} s")
    del w
    wf = p.dequantize()
    x = rng.standard_normal((m, n), dtype=np.float32)
    xq, a = kernels.quantize_activations(x)

    # correctness against NumPy on these very weights
    ref = xq[:8].astype(np.int64) @ p.ternary().astype(np.int64).T
    exact = np.array_equal(kernels.dot_i8(p, xq[:8]), ref)
    err = np.abs(kernels.matmul(p, x[:8]) - x[:8].astype(np.float64) @ wf.T.astype(np.float64)).max()
    print(f"int8 kernel equals the NumPy integer reference: {exact}; float kernel max abs error {err:.2e}")

    t_gemv = _best_of(lambda: kernels.gemm_i8(p, xq[0], a[:1]))
    t_np_gemv = _best_of(lambda: wf @ x[0])
    t_gemm = _best_of(lambda: kernels.gemm_i8(p, xq, a))
    t_np_gemm = _best_of(lambda: x @ wf.T)
    t_bl = _best_of(lambda: kernels.bitlinear(p, x))
    gw = n * n / 1e9
    print(f"GEMV  1 token : {t_gemv * 1e6:9.1f} us  {gw / t_gemv:7.1f} G weights/s   "
          f"NumPy float32 {t_np_gemv * 1e6:9.1f} us  ({t_np_gemv / t_gemv:.1f}x)")
    print(f"GEMM {m:2d} tokens: {t_gemm * 1e3:9.2f} ms  {gw * m / t_gemm:7.1f} G MAC/s       "
          f"NumPy float32 {t_np_gemm * 1e3:9.2f} ms  ({t_np_gemm / t_gemm:.1f}x)")
    print(f"BitLinear {m} tokens (quantize + GEMM): {t_bl * 1e3:.2f} ms")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
