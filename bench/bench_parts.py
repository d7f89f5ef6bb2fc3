"""The parts of one training step, each timed alone, against NumPy's BLAS on the same shapes.

    python bench/bench_parts.py [--threads 1] [--reps 5] [--no-append]

Shape: the issue's bench_model (D = 512, 8 layers, H = 8, I = 1376, V = 4096, batch 8 x 256 =
2048 tokens).  Per step, every BitLinear (q, k, v, o [D, D]; gate, up [I, D]; down [D, I]) runs
  * forward: the packed int8 GEMM from int8 activations (bitttt.gemm_i8);
  * dX = dY Qw(W): the float GEMM on unpacked ternary panels (bitttt.matmul_t);
  * dW = dY^T Qa(x): the float GEMM filled from the int8 codes (bitttt.kernels.sgemm_tn_q8);
the LM head runs three dense float GEMMs (logits, d head, d input; bitttt.sgemm), and the TTT
inner loop its forward and backward in C.  Each part is timed alone (median of --reps calls),
scaled to one step, in GMAC/s, and next to NumPy float32 matmul (its BLAS, same thread count)
on the same shape: the ratio is NumPy's time over ours.  Figures go to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _median(fn, reps: int) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2]


def _linear_parts(name: str, calls: int, rng, m: int, n: int, k: int, reps: int) -> list[tuple]:
    """Forward, dX and dW of one BitLinear W [n, k] over m tokens: rows of main's table."""
    import numpy as np

    import bitttt
    from bitttt import kernels

    w = bitttt.PackedTernary.quantize(rng.normal(0, 0.02, (n, k)).astype(np.float32))
    x = rng.normal(0, 1, (m, k)).astype(np.float32)
    dy = rng.normal(0, 1, (m, n)).astype(np.float32)
    xq, a = kernels.quantize_activations(x)
    wd = (w.ternary() * w.scale).astype(np.float32)  # Qw(W), for NumPy
    mac = m * n * k
    return [(f"{name} forward (int8)", calls, mac, _median(lambda: kernels.gemm_i8(w, xq, a), reps),
             _median(lambda: x @ wd.T, reps)),
            (f"{name} dX", calls, mac, _median(lambda: kernels.matmul_t(w, dy), reps), _median(lambda: dy @ wd, reps)),
            (f"{name} dW", calls, mac, _median(lambda: kernels.sgemm_tn_q8(dy, xq, a), reps),
             _median(lambda: dy.T @ x, reps))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var) != str(args.threads):  # BLAS reads these at import: start again with them
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
                       MKL_NUM_THREADS=str(args.threads))
            os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    import numpy as np
    from bench_kernels import append_results, machine

    import bitttt
    from bitttt import _core, kernels
    from bitttt.backend.numpy import rope_tables

    bitttt.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    M, D, INTER, V, L, H, K = 2048, 512, 1376, 4096, 8, 8, 16
    rows = []  # (part, calls per step, MAC per call, our s per call, numpy s per call)
    for name, n, k, calls in (("q k v o", D, D, 4), ("gate up", INTER, D, 2), ("down", D, INTER, 1)):
        rows += _linear_parts(name, calls * L, rng, M, n, k, args.reps)
    nf = rng.normal(0, 1, (M, D)).astype(np.float32)
    emb = rng.normal(0, 1, (V, D)).astype(np.float32)
    dl = rng.normal(0, 1, (M, V)).astype(np.float32)
    for name, ours, ref in (("head logits", lambda: kernels.sgemm(nf, emb, False, True), lambda: nf @ emb.T),
                            ("head d weight", lambda: kernels.sgemm(dl, nf, True, False), lambda: dl.T @ nf),
                            ("head d input", lambda: kernels.sgemm(dl, emb), lambda: dl @ emb)):
        rows.append((name, 1, M * V * D, _median(ours, args.reps), _median(ref, args.reps)))

    # TTT inner loop (C), forward and backward of one layer
    B, T, f = 8, 256, D // H
    q, k_, v = (rng.normal(0, 1, (B, T, D)).astype(np.float32) for _ in range(3))
    cos, sin = rope_tables(np.arange(K), f, 10000.0, np.float32)
    lr = (rng.uniform(0, 1, (B, H, T)) / f).astype(np.float32)
    tok = (1.0 / np.arange(1, K + 1)).astype(np.float32)
    W1 = rng.normal(0, 0.02, (H, f, f)).astype(np.float32)
    zeros, ones = np.zeros((H, f), np.float32), np.ones((H, f), np.float32)
    nch = T // K
    Ws = np.empty((B * H, nch, f, f), np.float32)
    saved = np.empty((B * H, nch, _core.ttt_saved_floats(K, f)), np.float32)
    out, dout = np.empty((B, T, D), np.float32), rng.normal(0, 1, (B, T, D)).astype(np.float32)
    cargs = (H, q, k_, v, cos, sin, lr, tok, W1, zeros, ones, zeros)
    grads = [np.empty((B, T, D), np.float32) for _ in range(3)] + [
        np.empty((B, H, T), np.float32), np.empty((B * H, K), np.float32), np.empty((B * H, f, f), np.float32)] + [
        np.empty((B * H, f), np.float32) for _ in range(3)]
    # inner-loop MACs per mini-batch of K rows (f x f products dominate): forward 3 K f^2, backward 6 K f^2
    ttt_mac = B * H * nch * K * f * f
    rows.append(("TTT forward", L, 3 * ttt_mac, _median(lambda: _core.ttt_forward(*cargs, out, Ws, saved), args.reps),
                 None))
    rows.append(("TTT backward", L, 6 * ttt_mac,
                 _median(lambda: _core.ttt_backward(*cargs, Ws, saved, dout, *grads), args.reps), None))

    lines = ["| part | calls per step | s per step | GMAC/s | NumPy float32 s per step | NumPy / ours |",
             "|---|---|---|---|---|---|"]
    tot = tot_np = 0.0
    for name, calls, mac, ours, ref in rows:
        tot += ours * calls
        ratio = "n/a" if ref is None else f"{ref / ours:.2f}x"
        if ref is not None:
            tot_np += ref * calls
        lines.append(f"| {name} | {calls} | {ours * calls:.3f} | {mac / ours / 1e9:.1f} | "
                     f"{'n/a' if ref is None else f'{ref * calls:.3f}'} | {ratio} |")
    lines.append(f"| all parts | | {tot:.3f} | | {tot_np:.3f} (GEMMs only) | |")
    cmdline = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    text = "\n".join([
        f"## bench_parts -- {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
        f"- machine: {machine()}",
        f"- bitttt {bitttt.__version__} (kernel {bitttt.get_kernel()}), NumPy {np.__version__}, "
        f"python {platform.python_version()}, {args.threads} thread(s)",
        f"- command: `{cmdline}`",
        "- shape: 2048 tokens, D=512, I=1376, V=4096, 8 layers, H=8, K=16; each part timed alone "
        f"(median of {args.reps}), times per training step", "", *lines, ""])
    print(text)
    if not args.no_append:
        append_results(text)


if __name__ == "__main__":
    main()
