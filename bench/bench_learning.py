"""Learning benchmark: validation loss against wall time for ternary and float BitLlama-TTT.

    python bench/bench_learning.py [--minutes 20] [--threads 2] [--data ../shared/data] [--no-append]

Trains a 4096-token unigram tokenizer on tinystories_train_sample.txt, prepares the train and
validation samples with it, then runs `python -m bitttt.train` twice (ternary true, then
false) for the same wall time each, D = 256, 6 layers, 4 heads, I = 688, batch 8 x 256.
Prints the validation loss curve of each run against wall time next to the entropy of a
unigram model of the same tokens (fit on the training tokens, scored on the validation
tokens), and appends the figures and commands to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run(cmd: list[str], **kw) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def unigram_entropy(train: np.ndarray, val: np.ndarray, vocab: int) -> tuple[float, float]:
    """(entropy of the training unigram distribution, its cross-entropy on the validation tokens),
    in nats/token; add-one smoothing for tokens unseen in training."""
    c = np.bincount(train, minlength=vocab).astype(np.float64)
    p = c / c.sum()
    nz = p[p > 0]
    h = float(-(nz * np.log(nz)).sum())
    ps = (c + 1) / (c.sum() + vocab)
    xent = float(-np.log(ps[val]).mean())
    return h, xent


def tokens_per_s(log_path: str) -> float:
    recs = [json.loads(x) for x in open(log_path)]
    s = [r for r in recs if "summary" in r][-1]["summary"]
    return s["train_tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "runs", "bench_learning"))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    train_txt = os.path.join(args.data, "tinystories_train_sample.txt")
    valid_txt = os.path.join(args.data, "tinystories_valid_sample.txt")
    for p in (train_txt, valid_txt):
        if not os.path.exists(p):
            sys.exit(f"missing {p}: pass --data with the folder holding the TinyStories samples")
    os.makedirs(args.out, exist_ok=True)
    dtrain, dval = os.path.join(args.out, "data_train"), os.path.join(args.out, "data_val")
    py = sys.executable
    if not os.path.exists(os.path.join(dtrain, "manifest.json")):
        run([py, "-m", "bitttt.data", "prepare", train_txt, "--vocab-size", "4096", "--model-type", "unigram",
             "--val-fraction", "0", "--out", dtrain, "--no-progress"])
    if not os.path.exists(os.path.join(dval, "manifest.json")):
        run([py, "-m", "bitttt.data", "prepare", valid_txt, "--tokenizer", os.path.join(dtrain, "tokenizer.model"),
             "--val-fraction", "0", "--out", dval, "--no-progress"])
    from bitttt.data import TokenData

    tr, va = TokenData(dtrain, "train"), TokenData(dval, "train")
    h, xent = unigram_entropy(np.asarray(tr.tokens, dtype=np.int64), np.asarray(va.tokens, dtype=np.int64),
                              tr.vocab_size)
    print(f"unigram entropy of the training tokens {h:.4f} nats; its cross-entropy on validation {xent:.4f}")
    seconds = args.minutes * 60
    model = ["model.hidden_size=256", "model.num_layers=6", "model.num_heads=4", "model.intermediate_size=688"]
    runs = {}
    for ternary in (True, False):
        name = "ternary" if ternary else "float"
        run_dir = os.path.join(args.out, name)
        if os.path.exists(run_dir):
            import shutil

            shutil.rmtree(run_dir)
        # a short probe sets max_steps so that the cosine schedule ends with the time budget
        probe = os.path.join(args.out, name + "_probe")
        common = [py, "-m", "bitttt.train", "--no-progress", f"data={dtrain}", f"val_data={dval}",
                  f"out_dir={args.out}", "batch_size=8", "seq_len=256", f"threads={args.threads}",
                  f"model.ternary={'true' if ternary else 'false'}", *model, "sample_tokens=0"]
        if os.path.exists(probe):
            import shutil

            shutil.rmtree(probe)
        run(common + [f"name={name}_probe", "max_steps=12", "warmup_steps=1", "eval_interval=1000",
                      "ckpt_interval=1000", "max_time=0"], stdout=subprocess.DEVNULL)
        tps = tokens_per_s(os.path.join(probe, "log.jsonl"))
        steps = int(0.9 * seconds * tps / (8 * 256))
        t0 = time.time()
        run(common + [f"name={name}", f"max_steps={steps}", f"max_time={seconds}", f"lr={args.lr}",
                      f"min_lr={args.lr / 10}", "warmup_steps=50", "eval_interval=40", "eval_batches=6",
                      "ckpt_interval=100000", "log_interval=10"])
        recs = [json.loads(x) for x in open(os.path.join(run_dir, "log.jsonl"))]
        curve = [(r["elapsed_s"], r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        summary = [r for r in recs if "summary" in r][-1]["summary"]
        runs[name] = {"curve": curve, "summary": summary, "wall": time.time() - t0, "probe_tps": tps}
    lines = []
    for name, r in runs.items():
        s = r["summary"]
        lines.append(f"{name}: {s['step']} steps, {s['tokens']:,} tokens, {s['train_tokens_per_s']:,.0f} tokens/s "
                     f"in steps, final val loss {s['val_loss']:.4f} ({s['val_bpb']:.3f} bits/byte), "
                     f"{xent - s['val_loss']:.2f} nats below the unigram cross-entropy")
    print("\n".join(lines))
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    import bitttt

    cpu = machine()
    out = [f"\n## bench_learning -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
           f"- machine: {cpu}, kernel {bitttt.cpu_info()['kernel']}, "
           f"{args.threads} threads",
           f"- command: `python bench/bench_learning.py --minutes {args.minutes:g} --threads {args.threads}`",
           "- data: tinystories_train_sample.txt (train), tinystories_valid_sample.txt (validation), 4096-token "
           f"unigram tokenizer; {tr.n_tokens:,} train tokens, {va.n_tokens:,} validation tokens",
           "- model: D=256, 6 layers, H=4, I=688, K=16, batch 8 x 256, AdamW lr "
           f"{args.lr:g} -> {args.lr / 10:g} cosine, warmup 50, wd 0.1, clip 1.0; "
           "validation loss on the first 6 x 8 x 256 validation tokens",
           f"- unigram model of the same tokens: entropy {h:.4f} nats/token (train), cross-entropy "
           f"{xent:.4f} on validation",
           ""]
    out += [f"- {x}" for x in lines]
    out += ["", "| ternary: wall s | step | val loss | float: wall s | step | val loss |", "|---|---|---|---|---|---|"]
    ct, cf = runs["ternary"]["curve"], runs["float"]["curve"]

    def cells(c, i):
        return f"{c[i][0]:.0f} | {c[i][1]} | {c[i][2]:.4f}" if i < len(c) else " | | "

    for i in range(max(len(ct), len(cf))):
        out.append(f"| {cells(ct, i)} | {cells(cf, i)} |")
    append_results("\n".join(out))


if __name__ == "__main__":
    main()
