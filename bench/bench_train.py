"""Trainer throughput against the model benchmark: does `python -m bitttt.train` keep up with a
bare forward + backward?

    python bench/bench_train.py [--threads 2] [--steps 40] [--rounds 2] [--no-append]

Shape (the learning benchmark's): D = 256, 6 layers, H = 4, I = 688, V = 4096, batch 8 x 256,
ternary.  Each round runs, in fresh processes, bench_model.py's bitttt worker (median
forward + backward step) and `python -m bitttt.train` for --steps steps with evaluation and
checkpoints off; the trainer's tokens/s is taken from its log between step 10 and the last
step, so it includes data loading, AdamW, clipping, logging and the monitor.  Data: the
TinyStories sample in ../shared/data when present, else the built-in Python docs corpus.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHAPE = ["--dim", "256", "--layers", "6", "--heads", "4", "--inter", "688", "--vocab", "4096", "--batch", "8",
         "--seq", "256"]


def prepared_data(cache: str) -> str:
    d = os.path.join(cache, "train_data")
    if os.path.exists(os.path.join(d, "manifest.json")):
        return d
    src = os.path.join(REPO, "..", "shared", "data", "tinystories_train_sample.txt")
    if not os.path.exists(src):
        from bitttt.data import write_builtin

        os.makedirs(cache, exist_ok=True)
        src = write_builtin("builtin:python-docs", os.path.join(cache, "python-docs.txt"))
    subprocess.run([sys.executable, "-m", "bitttt.data", "prepare", src, "--vocab-size", "4096", "--out", d,
                    "--no-progress"], check=True)
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    cache = os.path.join(HERE, ".cache")
    data = prepared_data(cache)
    bench, train = [], []
    for _ in range(args.rounds):
        r = subprocess.run([sys.executable, os.path.join(HERE, "bench_model.py"), "--worker", "bitttt", "--threads",
                            str(args.threads), "--steps", "6", *SHAPE], capture_output=True, text=True, check=True)
        bench.append(json.loads(r.stdout.strip().splitlines()[-1])["tok_s"])
        out = os.path.join(cache, "train_runs")
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "bitttt.train", "--no-progress", f"data={data}", f"out_dir={out}",
                        "name=tp", "batch_size=8", "seq_len=256", f"threads={args.threads}", "model.hidden_size=256",
                        "model.num_layers=6", "model.num_heads=4", "model.intermediate_size=688",
                        f"max_steps={args.steps}", "max_time=0", "eval_interval=100000", "ckpt_interval=100000",
                        "log_interval=10", "warmup_steps=5", "sample_tokens=0"],
                       check=True, capture_output=True, text=True)
        recs = [json.loads(x) for x in open(os.path.join(out, "tp", "log.jsonl")) if '"loss"' in x]
        a = next(x for x in recs if x["step"] == 10)
        b = recs[-1]
        train.append((b["tokens"] - a["tokens"]) / (b["elapsed_s"] - a["elapsed_s"]))
        print(f"round: bench {bench[-1]:.0f} tokens/s, trainer {train[-1]:.0f} tokens/s", flush=True)
    bmed, tmed = sorted(bench)[len(bench) // 2], sorted(train)[len(train) // 2]
    line = (f"| {args.threads} | {' / '.join(f'{x:.0f}' for x in bench)} | {' / '.join(f'{x:.0f}' for x in train)} | "
            f"{tmed / bmed:.0%} |")
    print(f"trainer / forward+backward = {tmed / bmed:.0%}")
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    text = "\n".join([f"## bench_train -- {datetime.datetime.now():%Y-%m-%d %H:%M}", "",
                      f"- machine: {machine()}",
                      f"- command: `python bench/bench_train.py --threads {args.threads} --steps {args.steps} "
                      f"--rounds {args.rounds}`",
                      "- shape: D=256, 6 layers, H=4, I=688, V=4096, batch 8 x 256, ternary; trainer tokens/s from its "
                      "log between step 10 and the last step (data, AdamW, clipping, logging included)", "",
                      "| threads | fwd+bwd tokens/s (bench_model, per round) | python -m bitttt.train tokens/s | "
                      "trainer / bench (medians) |", "|---|---|---|---|", line, ""])
    append_results(text)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
