"""Data-parallel training: tokens/s of 1 process x T threads against N MPI ranks x T/N threads.

    python bench/bench_mpi.py [--ranks 2] [--threads 2] [--steps 3] [--rounds 1] [--no-append]

Shape (bench_model.py's): D = 512, 8 layers, H = 8, I = 1376, V = 4096, batch 8 x 256, ternary.
Both sides run `Trainer.train_step` on the same global batch (batch x N micro-batches): one
process with grad_accum = N on --threads threads, and `mpiexec -n N python -m mpi4py` with
grad_accum = 1 on --threads / N threads per rank.  Reported per side: the median step time
over --steps steps after one warm-up, tokens/s, and for the ranks the time inside the
fixed-order gradient sum (bitttt.dist.MPIWorld.ordered_sum: the chain and the broadcast, not
the wait for the slowest rank) per step.  The losses of both sides must be equal bit for bit
(the script says whether they are).  Data: bench_train.py's (the TinyStories sample in
../shared/data when present, else the built-in Python docs corpus), cached in bench/.cache.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
MODEL = {"hidden_size": 512, "num_layers": 8, "num_heads": 8, "intermediate_size": 1376, "ternary": True}


def worker(args) -> None:
    import numpy as np

    from bitttt.trainer import TrainConfig, Trainer

    out = tempfile.mkdtemp(prefix="bench_mpi_")
    try:
        cfg = TrainConfig(data=args.data, out_dir=out, name="bench", model=dict(MODEL), batch_size=8, seq_len=256,
                          grad_accum=args.grad_accum, max_steps=1000, max_time=0.0, warmup_steps=10,
                          threads=args.threads, sample_tokens=0)
        tr = Trainer(cfg, progress=False)
        w = tr.world
        losses, times, reduce = [], [], []
        for _ in range(args.steps + 1):  # the first step warms up
            r0 = w.reduce_s
            t0 = time.perf_counter()
            losses.append(tr.train_step())
            times.append(time.perf_counter() - t0)
            reduce.append(w.reduce_s - r0)
        step = float(np.median(times[1:]))
        if w.is_main:
            print(json.dumps({"ranks": w.size, "threads": tr.cfg.threads, "grad_accum": args.grad_accum,
                              "step_s": step, "tok_s": 8 * 256 * args.grad_accum * w.size / step,
                              "reduce_s": float(np.median(reduce[1:])), "params": tr.model.num_params(),
                              "losses": losses}), flush=True)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _mpiexec() -> str:
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    exe = exe if os.path.exists(exe) else shutil.which("mpiexec")
    if exe is None:
        sys.exit("mpiexec not found: pip install 'bitttt[mpi]' (mpi4py and the mpich wheel)")
    return exe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="threads of the one process (ranks get threads / ranks)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-append", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--grad-accum", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    if args.ranks < 2 or args.threads % args.ranks or args.steps < 1 or args.rounds < 1:
        sys.exit("--ranks must be >= 2 and divide --threads; --steps and --rounds >= 1")
    from bench_train import prepared_data

    data = prepared_data(os.path.join(HERE, ".cache"))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("BITTTT_NUM_THREADS", None)
    me = [os.path.abspath(__file__), "--worker", "--data", data, "--steps", str(args.steps)]
    sides = {
        "1 process": [sys.executable, *me, "--grad-accum", str(args.ranks), "--threads", str(args.threads)],
        f"{args.ranks} ranks": [_mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "mpi4py", *me,
                                "--grad-accum", "1", "--threads", str(args.threads // args.ranks)],
    }
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    load0 = os.getloadavg()[0]
    for rnd in range(args.rounds):
        for name in (list(sides) if rnd % 2 == 0 else list(sides)[::-1]):
            r = subprocess.run(sides[name], env=env, capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"{name} failed:\n{r.stdout}\n{r.stderr}")
            runs[name].append(json.loads(r.stdout.strip().splitlines()[-1]))
            x = runs[name][-1]
            print(f"round {rnd + 1}/{args.rounds} {name}: {x['step_s']:.2f} s/step, {x['tok_s']:.0f} tokens/s, "
                  f"reduction {x['reduce_s'] * 1e3:.1f} ms", flush=True)
    rows = {}
    for name, rs in runs.items():
        rs = sorted(rs, key=lambda x: x["step_s"])
        rows[name] = dict(rs[(len(rs) - 1) // 2], steps_all=[round(x["step_s"], 2) for x in runs[name]])
    one, many = rows["1 process"], rows[f"{args.ranks} ranks"]
    same = all(a["losses"] == b["losses"] for a, b in zip(runs["1 process"], runs[f"{args.ranks} ranks"]))
    from bench_kernels import append_results, machine

    import bitttt

    mb = one["params"] * 4 / 2**20
    lines = ["| side | threads each | grad_accum | step s | tokens/s | vs 1 process | reduction ms/step | "
             "reduction share | step s per round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        red = f"{r['reduce_s'] * 1e3:.1f} | {r['reduce_s'] / r['step_s']:.1%}" if r["ranks"] > 1 else "n/a | n/a"
        lines.append(f"| {name} | {r['threads']} | {r['grad_accum']} | {r['step_s']:.2f} | {r['tok_s']:.0f} | "
                     f"{r['tok_s'] / one['tok_s']:.2f}x | {red} | {' '.join(f'{x:.2f}' for x in r['steps_all'])} |")
    cmdline = "python " + " ".join([os.path.relpath(os.path.abspath(__file__))] + sys.argv[1:])
    text = "\n".join([
        f"## bench_mpi -- {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
        f"- machine: {machine()}",
        f"- bitttt {bitttt.__version__} (kernel {bitttt.get_kernel()}), python {platform.python_version()}, "
        f"{_mpi_version()}",
        f"- command: `{cmdline}`; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"({os.cpu_count()} CPUs: other programs share them when it exceeds the threads used)",
        f"- model: D=512, 8 layers, H=8, I=1376, V=4096, ternary ({one['params']:,} parameters: a {mb:.0f} MiB "
        f"float32 gradient per reduction); global batch {args.ranks} x 8 x 256 tokens; Trainer.train_step, median "
        f"of {args.steps} steps after one warm-up, median of {args.rounds} round(s) (the lower for an even count)",
        f"- losses of the two sides bit-identical: {'yes' if same else 'NO'} "
        f"(first step {one['losses'][0]:.6f} / {many['losses'][0]:.6f})", "",
        *lines, ""])
    print(text)
    if not args.no_append:
        append_results(text)


def _mpi_version() -> str:
    try:
        import mpi4py

        mpi4py.rc.initialize = False  # the version is a library query: no MPI_Init in this process
        from mpi4py import MPI

        return f"mpi4py {mpi4py.__version__}, {' '.join(MPI.Get_library_version().splitlines()[0].split())}"
    except Exception as e:  # a report without the version is still a report
        return f"MPI version unknown ({e})"


if __name__ == "__main__":
    main()
