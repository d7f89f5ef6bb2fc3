"""Kernel benchmark: ternary GEMV / GEMM against the memory roofline and NumPy float32.

    python bench/bench_kernels.py [--sizes 1024 2048 4096 16384] [--threads 1 2] [--tokens 64]
                                  [--reps 15] [--formats t2 t1] [--no-append]

For each K = N, thread count and packed format (--formats: t2, 2 bits per weight, the default;
t1, 1.6 bits; both side by side, the same weights, timed alternately in one process), in one run:
  * our GEMV (1 token) and GEMM (--tokens tokens), int8 activations x packed ternary
    weights (bitttt.gemm_i8), in G weights/s = N*K / time (weights streamed per second);
  * NumPy float32 matmul on the same shapes (W @ x, X @ W.T) with the same thread count;
  * the read bandwidth of this machine from our own C probe, on a 1 GiB buffer (DRAM)
    and on a buffer the size of the packed matrix (the cache level that matrix lives in).
The roofline is bandwidth x weights per byte of the format (4 for t2; 5 for t1 when K is a
multiple of 80).  Each thread count runs
in its own process so that NumPy's BLAS thread pool can be sized to match.
Figures are appended to bench/RESULTS.md with the machine, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


STAT = "median"  # or "min" (--best): on a machine shared with other programs, the fastest sample


def _median_time(fn, reps: int, min_time: float = 0.2) -> float:
    fn()
    inner, t = 1, 0.0
    while True:  # batch calls so that one timed sample lasts >= 5 ms
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        t = time.perf_counter() - t0
        if t >= 5e-3 or inner >= 1 << 16:
            break
        inner *= 4
    samples = []
    deadline = time.perf_counter() + min_time
    while len(samples) < reps or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
        if len(samples) >= 4 * reps:
            break
    samples.sort()
    return samples[0] if STAT == "min" else samples[len(samples) // 2]


def worker(args) -> None:
    global STAT
    import numpy as np

    STAT = "min" if args.best else "median"
    import bitttt
    from bitttt import _core

    bitttt.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    out = {"threads": args.threads, "kernel": bitttt.get_kernel(),
           "dram_bw": _core.read_bandwidth(1 << 30, 5, args.threads), "rows": []}
    for n in args.sizes:
        w = rng.standard_normal((n, n), dtype=np.float32)
        p = bitttt.PackedTernary.quantize(w)
        wf = p.dequantize()  # the same weights for NumPy, float32
        del w
        bw = _core.read_bandwidth(max(p.nbytes, 1 << 16), 7, args.threads)
        x = rng.standard_normal(n, dtype=np.float32)
        xq, a = bitttt.quantize_activations(x)
        X = rng.standard_normal((args.tokens, n), dtype=np.float32)
        Xq, A = bitttt.quantize_activations(X)
        reps = args.reps if n < 16384 else max(5, args.reps // 3)
        row = {"n": n, "bytes": p.nbytes, "bw": bw}
        packs = {f: p.to_format(f) for f in args.formats}
        for q in packs.values():
            assert np.array_equal(bitttt.gemm_i8(q, xq, a), bitttt.gemm_i8(p, xq, a))  # the formats agree
        fmt_rows = {f: {"bytes": q.nbytes, "bw": _core.read_bandwidth(max(q.nbytes, 1 << 16), 7, args.threads),
                        "gemv": [], "gemm": []} for f, q in packs.items()}
        for _ in range(3):  # the formats alternate: noise from other programs falls on both
            for f, q in packs.items():
                fmt_rows[f]["gemv"].append(_median_time(lambda q=q, xq=xq, a=a: bitttt.gemm_i8(q, xq, a), reps))
                fmt_rows[f]["gemm"].append(_median_time(lambda q=q, xq=Xq, a=A: bitttt.gemm_i8(q, xq, a),
                                                        max(3, reps // 3)))
        for fr in fmt_rows.values():
            fr["gemv"], fr["gemm"] = sorted(fr["gemv"])[1], sorted(fr["gemm"])[1]
        row["formats"] = fmt_rows
        row["np_gemv"] = _median_time(lambda wf=wf, x=x: wf @ x, reps)
        row["np_gemm"] = _median_time(lambda wf=wf, x=X: x @ wf.T, reps)
        out["rows"].append(row)
    print(json.dumps(out))


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import psutil

    return (f"{model}, {psutil.cpu_count(logical=False)} cores / {os.cpu_count()} threads, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.system()} {platform.release()}")


def append_results(text: str) -> None:
    """Append one report (markdown text) to bench/RESULTS.md, creating it with its heading."""
    path = os.path.join(HERE, "RESULTS.md")
    new = not os.path.exists(path)
    with open(path, "a") as f:
        if new:
            f.write("# Benchmark results\n\nAppended by the scripts in bench/; newest last.\n\n")
        f.write(text.rstrip("\n") + "\n\n")  # one blank line after each report
    print(f"appended to {os.path.relpath(path)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 16384])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--formats", nargs="+", choices=["t2", "t1"], default=["t2"],
                    help="packed formats to time side by side (default t2)")
    ap.add_argument("--best", action="store_true",
                    help="time by the fastest sample instead of the median (a machine shared with other programs)")
    ap.add_argument("--no-append", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return

    import numpy as np

    import bitttt

    results = []
    for t in args.threads:
        env = dict(os.environ)
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "BITTTT_NUM_THREADS"):
            env[var] = str(t)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(t),
               "--tokens", str(args.tokens), "--reps", str(args.reps), "--sizes", *map(str, args.sizes),
               "--formats", *args.formats] + (["--best"] if args.best else [])
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"benchmark worker failed ({t} threads):\n{res.stderr}")
        results.append(json.loads(res.stdout.strip().splitlines()[-1]))

    lines = []
    head = ("| K=N | thr | format | MiB | GEMV Gw/s | vs roofline (DRAM) | vs same-size read | vs NumPy | "
            f"GEMM{args.tokens} Gw/s | GEMM G MAC/s | vs NumPy |")
    lines.append(head)
    lines.append("|---" * (head.count("|") - 1) + "|")
    for r in results:
        for row in r["rows"]:
            n = row["n"]
            w = n * n
            for f, fr in row["formats"].items():
                wpb = w / fr["bytes"]  # weights per byte of this format
                gv = w / fr["gemv"] / 1e9
                gm = w / fr["gemm"] / 1e9
                lines.append(
                    f"| {n} | {r['threads']} | {f} | {fr['bytes'] / 2**20:.1f} | {gv:.1f} | "
                    f"{gv * 1e9 / (r['dram_bw'] * wpb):.2f} | {gv * 1e9 / (fr['bw'] * wpb):.2f} | "
                    f"{row['np_gemv'] / fr['gemv']:.1f}x | {gm:.1f} | {gm * args.tokens:.0f} | "
                    f"{row['np_gemm'] / fr['gemm']:.2f}x |")
    bw_line = "; ".join(f"{r['threads']} thread(s): {r['dram_bw'] / 1e9:.1f} GB/s (roofline "
                        f"{r['dram_bw'] * 4 / 1e9:.0f} Gw/s)" for r in results)
    same = "; ".join(f"{row['n']}: " + "/".join(f"{rr['rows'][i]['bw'] / 1e9:.0f}" for rr in results)
                     for i, row in enumerate(results[0]["rows"]))
    cmdline = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    report = [
        f"## bench_kernels -- {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}",
        "",
        f"- machine: {machine()}",
        f"- bitttt {bitttt.__version__}, kernel {results[0]['kernel']}, numpy {np.__version__}, "
        f"python {platform.python_version()}",
        f"- command: `{cmdline}`",
        f"- read bandwidth, 1 GiB buffer: {bw_line}",
        f"- read bandwidth on a buffer the size of the packed matrix, GB/s per thread count: {same}",
        "- Gw/s = N*K / time (weights streamed per second); roofline = bandwidth x weights per byte of the "
        "format (t2: 4, t1: up to 5); formats timed alternately, the median of 3 rounds; "
        + ("each time the fastest sample of the timed calls (--best); " if args.best else "")
        + f"GEMM = {args.tokens} tokens, int8 activations; NumPy = float32 matmul, same threads; "
        + ("fastest" if args.best else "medians") + " of the timed calls.",
        "",
        *lines,
        "",
    ]
    text = "\n".join(report)
    print(text)
    if not args.no_append:
        append_results(text)


if __name__ == "__main__":
    main()
