"""Model benchmark: forward + backward tokens/s and peak memory, bitttt against PyTorch.

    python bench/bench_model.py [--threads 1 2] [--steps 3] [--rounds 1] [--batch 8] [--seq 256] [--no-append]
                                [--arch ttt|attention|hybrid] [--kv-heads N]

Shape (issue default): D = 512, 8 layers, H = 8, I = 1376, V = 4096, batch 8 x 256 tokens,
ternary weights.  bitttt runs BitLlama.loss_and_grads (our forward and backward, float32);
PyTorch runs the same architecture (bench/torch_bitllama.py) with autograd, float32, on the
same weights and tokens.  Each (implementation, threads) pair runs in its own process so
that thread pools and peak RSS are its own; PyTorch is skipped when it is not installed.
--rounds R runs the whole sequence of processes R times, alternating the implementations,
and reports per pair the median step time over the rounds (on a shared machine a burst of
load then hits both sides alike instead of one of them).
--arch attention (or hybrid: TTT and attention alternating) benchmarks the attention model
against PyTorch's scaled_dot_product_attention in the same architecture (--kv-heads: GQA).
Figures are appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _rss() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(args) -> None:
    import numpy as np

    from bitttt import BitLlama, BitLlamaConfig, set_num_threads

    arch = {} if args.arch == "ttt" else {"arch": "attention", "num_kv_heads": args.kv_heads or args.heads,
                                          "max_position_embeddings": max(args.seq, 4096)}
    if args.arch == "hybrid":
        arch["layer_types"] = (["ttt", "attention"] * args.layers)[:args.layers]
    cfg = BitLlamaConfig(vocab_size=args.vocab, hidden_size=args.dim, num_layers=args.layers, num_heads=args.heads,
                         intermediate_size=args.inter, ternary=True, **arch)
    model = BitLlama(cfg)
    model.init_weights(0)
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.vocab_size, (args.batch, args.seq + 1))
    tokens, targets = data[:, :-1], data[:, 1:]
    if args.impl == "bitttt":
        set_num_threads(args.threads)

        def step():
            return model.loss_and_grads(tokens, targets)[0]
    else:
        import torch
        from torch_bitllama import TorchBitLlama

        torch.set_num_threads(args.threads)
        tm = TorchBitLlama(cfg, model.params)
        tt, tg = torch.from_numpy(tokens), torch.from_numpy(targets)

        def step():
            for p in tm.parameters():
                p.grad = None
            loss = tm.loss(tt, tg)
            loss.backward()
            return float(loss)

    base = _rss()
    times, losses = [], []
    for _ in range(args.steps + 1):  # the first step warms up
        t0 = time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"impl": args.impl, "threads": args.threads, "step_s": times[len(times) // 2],
                      "tok_s": args.batch * args.seq / times[len(times) // 2], "peak_mib": peak,
                      "step_mib": peak - base, "loss": losses[0]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--inter", type=int, default=1376)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--arch", default="ttt", choices=("ttt", "attention", "hybrid"))
    ap.add_argument("--kv-heads", type=int, default=0, help="key/value heads of attention layers (0: --heads)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--worker", choices=["bitttt", "torch"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.impl = args.worker
        args.threads = args.threads[0]
        worker(args)
        return
    try:
        import torch

        impls = ["bitttt", "torch"]
        torch_version = torch.__version__
    except ImportError:
        impls, torch_version = ["bitttt"], None
        print("PyTorch is not installed: the baseline is skipped (pip install torch)")
    if args.rounds < 1 or args.steps < 1:
        sys.exit("--rounds and --steps must be at least 1")
    runs: dict[tuple[str, int], list[dict]] = {}
    for rnd in range(args.rounds):
        for t in args.threads:
            for impl in (impls if rnd % 2 == 0 else impls[::-1]):
                env = dict(os.environ, OMP_NUM_THREADS=str(t), OPENBLAS_NUM_THREADS=str(t), MKL_NUM_THREADS=str(t))
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", impl, "--threads", str(t)]
                for k in ("steps", "batch", "seq", "dim", "layers", "heads", "inter", "vocab", "arch", "kv_heads"):
                    cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
                r = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"{impl} worker failed:\n{r.stderr}")
                runs.setdefault((impl, t), []).append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(f"round {rnd + 1}/{args.rounds}:", runs[(impl, t)][-1], flush=True)
    rows = []
    for t in args.threads:
        for impl in impls:
            rs = sorted(runs[(impl, t)], key=lambda x: x["step_s"])
            row = dict(rs[len(rs) // 2])  # the median round
            row["steps_all"] = [round(x["step_s"], 2) for x in runs[(impl, t)]]
            row["peak_mib"] = max(x["peak_mib"] for x in rs)
            rows.append(row)
    from bench_kernels import append_results, machine

    import bitttt

    lines = ["| threads | impl | step s | tokens/s | vs PyTorch | peak RSS MiB | step RSS growth MiB | first loss "
             "| step s per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "torch" and x["threads"] == r["threads"]), None)
        ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref else "n/a"
        lines.append(f"| {r['threads']} | {r['impl']} | {r['step_s']:.2f} | {r['tok_s']:.0f} | {ratio} | "
                     f"{r['peak_mib']:.0f} | {r['step_mib']:.0f} | {r['loss']:.4f} | "
                     f"{' '.join(f'{x:.2f}' for x in r['steps_all'])} |")
    cmdline = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    text = "\n".join([
        f"## bench_model -- {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
        f"- machine: {machine()}",
        f"- bitttt {bitttt.__version__} (kernel {bitttt.get_kernel()}), PyTorch {torch_version}, "
        f"python {platform.python_version()}",
        f"- command: `{cmdline}`",
        f"- model: {args.arch}, D={args.dim}, {args.layers} layers, H={args.heads}, I={args.inter}, V={args.vocab}, "
        "ternary, "
        f"batch {args.batch} x {args.seq} tokens, float32; forward + backward per step, median of {args.steps} "
        f"steps after one warm-up, then the median of {args.rounds} round(s) of fresh processes (implementations "
        "alternating); peak RSS of the process (ru_maxrss, the largest over the rounds)", "",
        *lines, ""])
    print(text)
    if not args.no_append:
        append_results(text)


if __name__ == "__main__":
    main()
