"""Learning benchmark: validation loss against wall time for ternary and float BitLlama-TTT.

    python bench/bench_learning.py [--minutes 20] [--threads 2] [--data ../shared/data] [--no-append]

Trains a 4096-token unigram tokenizer on tinystories_train_sample.txt, prepares the train and
validation samples with it, then runs `python -m bitttt.train` twice (ternary true, then
false) for the same wall time each, D = 256, 6 layers, 4 heads, I = 688, batch 8 x 256.
Prints the validation loss curve of each run against wall time next to the entropy of a
unigram model of the same tokens (fit on the training tokens, scored on the validation
tokens), and appends the figures and commands to bench/RESULTS.md.

    python bench/bench_learning.py --arch ttt attention hybrid [--minutes 3] [--hidden 128 --layers 4]

Architectures instead of ternary/float: a TTT, an attention (plain multi-head: num_kv_heads =
num_heads, so the parameter counts match to within the TTT layer's small inner parameters) and
a hybrid model (TTT and attention layers alternating), all ternary, trained on the same tokens
(the same number of steps: the slowest architecture's probe speed sets it so that it fits in
--minutes) with the same schedule.  Prints and appends each one's validation loss against wall
time, its loss at the wall time of the fastest run (interpolated), and the validation loss by
position in the sequence (mean over validation windows of the training length, the best
checkpoint, in 8 buckets) -- what TTT's memory buys late in a sequence, if anything.
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


def loss_at(curve: list, t: float) -> float:
    """Validation loss of a curve [(wall s, step, loss)] at wall time t (linear between points)."""
    ts = [c[0] for c in curve]
    ls = [c[2] for c in curve]
    return float(np.interp(t, ts, ls))


def loss_by_position(ckpt: str, val_tokens: np.ndarray, seq_len: int, windows: int = 16) -> np.ndarray:
    """Mean next-token loss at every position 0 .. seq_len-1 over `windows` validation windows."""
    from bitttt import BitLlama
    from bitttt.formats import load_checkpoint

    ck = load_checkpoint(ckpt)
    m = BitLlama(ck.config)
    m.load_state_dict(ck.params)
    n = min(windows, (len(val_tokens) - 1) // seq_len)
    tot = np.zeros(seq_len)
    for w in range(0, n, 4):
        idx = [np.arange(i * seq_len, (i + 1) * seq_len + 1) for i in range(w, min(w + 4, n))]
        x = np.stack([val_tokens[i[:-1]] for i in idx])
        y = np.stack([val_tokens[i[1:]] for i in idx])
        lg = m.forward(x).astype(np.float64)
        mx = lg.max(-1, keepdims=True)
        lse = (mx[..., 0] + np.log(np.exp(lg - mx).sum(-1)))
        tot += (lse - np.take_along_axis(lg, y[..., None], -1)[..., 0]).sum(0)
    return tot / n


def kv_cost(ckpt: str, val_tokens: np.ndarray, seq_len: int, n_tokens: int = 8192) -> dict[str, float]:
    """Validation loss (nats/token, windows of seq_len) of a checkpoint read through the KV cache
    in float32, float16 and int8: what the cache's precision costs."""
    from bitttt.session import InferenceModel

    im = InferenceModel.from_checkpoint(ckpt)
    ids = [int(t) for t in val_tokens[:n_tokens + 1]]
    out = {}
    for kv in ("float32", "float16", "int8"):
        im.kv_dtype = kv
        total, n = im.score(ids, reset_every=seq_len, chunk=seq_len)
        out[kv] = total / n
    return out


def arch_main(args, dtrain: str, dval: str, xent: float, tr, va) -> None:
    py = sys.executable
    seconds = args.minutes * 60
    bsz, seq = 8, args.seq_len
    L = args.layers
    model = [f"model.hidden_size={args.hidden}", f"model.num_layers={L}", f"model.num_heads={args.heads}",
             f"model.intermediate_size={args.intermediate}", "model.ternary=true"]
    extra = {"ttt": [],
             "attention": ["model.arch=attention", f"model.max_position_embeddings={seq}"],
             "hybrid": ["model.arch=attention", f"model.max_position_embeddings={seq}",
                        "model.layer_types=" + json.dumps((["ttt", "attention"] * L)[:L])]}
    common = [py, "-m", "bitttt.train", "--no-progress", f"data={dtrain}", f"val_data={dval}",
              f"out_dir={args.out}", f"batch_size={bsz}", f"seq_len={seq}", f"threads={args.threads}", *model,
              "sample_tokens=0"]
    import shutil

    tps = {}
    for arch in args.arch:  # probes: the slowest architecture sets the steps everyone trains
        probe = os.path.join(args.out, f"arch_{arch}_probe")
        if os.path.exists(probe):
            shutil.rmtree(probe)
        run(common + extra[arch] + [f"name=arch_{arch}_probe", "max_steps=8", "warmup_steps=1",
                                    "eval_interval=1000", "ckpt_interval=1000", "max_time=0"],
            stdout=subprocess.DEVNULL)
        tps[arch] = tokens_per_s(os.path.join(probe, "log.jsonl"))
    steps = args.steps or int(0.85 * seconds * min(tps.values()) / (bsz * seq))
    runs = {}
    val = np.asarray(va.tokens, dtype=np.int64)
    for arch in args.arch:
        name = f"arch_{arch}"
        run_dir = os.path.join(args.out, name)
        if os.path.exists(run_dir):
            shutil.rmtree(run_dir)
        cap = 0 if args.steps else 2 * seconds  # --steps: the same tokens for everyone, however long it takes
        run(common + extra[arch] + [f"name={name}", f"max_steps={steps}", f"max_time={cap}",
                                    f"lr={args.lr}", f"min_lr={args.lr / 10}", f"warmup_steps={min(50, steps // 10)}",
                                    f"eval_interval={max(steps // 8, 1)}", "eval_batches=6", "ckpt_interval=100000",
                                    "log_interval=10"])
        recs = [json.loads(x) for x in open(os.path.join(run_dir, "log.jsonl"))]
        curve = [(r["elapsed_s"], r["step"], r["val_loss"]) for r in recs if "val_loss" in r]
        summary = [r for r in recs if "summary" in r][-1]["summary"]
        ck = os.path.join(run_dir, "checkpoints", "best.safetensors")
        from bitttt.formats import load_checkpoint

        cfg = load_checkpoint(ck).config
        from bitttt.params import param_shapes

        n_params = int(sum(int(np.prod(s)) for s in param_shapes(cfg).values()))
        runs[arch] = {"curve": curve, "summary": summary, "params": n_params,
                      "by_pos": loss_by_position(ck, val, seq),
                      "kv": kv_cost(ck, val, seq) if arch != "ttt" else None}
    t_common = min(r["curve"][-1][0] for r in runs.values())
    lines = []
    for arch, r in runs.items():
        s = r["summary"]
        lines.append(f"{arch}: {r['params']:,} parameters, {s['step']} steps, {s['tokens']:,} tokens, "
                     f"{s['train_tokens_per_s']:,.0f} tokens/s in steps, {r['curve'][-1][0]:.0f} s; final val loss "
                     f"{s['val_loss']:.4f}; at {t_common:.0f} s (the fastest run's end): "
                     f"{loss_at(r['curve'], t_common):.4f}; {xent - s['val_loss']:.2f} nats below the unigram "
                     "cross-entropy")
    nb = 8
    edges = np.linspace(0, seq, nb + 1).astype(int)
    table = ["| arch | " + " | ".join(f"pos {edges[i]}-{edges[i + 1] - 1}" for i in range(nb)) + " |",
             "|---|" + "---|" * nb]
    for arch, r in runs.items():
        table.append(f"| {arch} | " + " | ".join(f"{r['by_pos'][edges[i]:edges[i + 1]].mean():.3f}"
                                                 for i in range(nb)) + " |")
    curves = ["| " + " | ".join(f"{a}: wall s | step | val loss" for a in runs) + " |",
              "|" + "---|---|---|" * len(runs)]
    for i in range(max(len(r["curve"]) for r in runs.values())):
        curves.append("| " + " | ".join(f"{r['curve'][i][0]:.0f} | {r['curve'][i][1]} | {r['curve'][i][2]:.4f}"
                                        if i < len(r["curve"]) else " | | " for r in runs.values()) + " |")
    for arch, r in runs.items():
        if r["kv"]:
            k = r["kv"]
            lines.append(f"{arch}: KV cache cost on 8,192 validation tokens (windows of {seq}): float32 "
                         f"{k['float32']:.5f}, float16 {k['float16']:.5f} ({k['float16'] - k['float32']:+.5f}), int8 "
                         f"{k['int8']:.5f} ({k['int8'] - k['float32']:+.5f} nats/token)")
    print("\n".join(lines + [""] + table + [""] + curves))
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    import bitttt

    out = [f"\n## bench_learning --arch -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
           f"- machine: {machine()}, kernel {bitttt.cpu_info()['kernel']}, {args.threads} threads (shared with "
           "other jobs: wall times are noisy)",
           f"- command: `python bench/bench_learning.py --arch {' '.join(args.arch)} --minutes {args.minutes:g} "
           f"--hidden {args.hidden} --layers {L} --heads {args.heads} --intermediate {args.intermediate} "
           f"--seq-len {seq} --threads {args.threads}" + (f" --steps {args.steps}" if args.steps else "") + "`",
           "- data: tinystories_train_sample.txt (train), tinystories_valid_sample.txt (validation), 4096-token "
           f"unigram tokenizer; {tr.n_tokens:,} train tokens, {va.n_tokens:,} validation tokens",
           f"- models: ternary, D={args.hidden}, {L} layers, H={args.heads}, I={args.intermediate}, K=16; attention "
           "layers plain multi-head (num_kv_heads = H), RoPE theta 10000; hybrid = TTT and attention alternating; "
           f"batch {bsz} x {seq}, {steps} steps each (the same tokens: the slowest probe sets it), AdamW lr "
           f"{args.lr:g} -> {args.lr / 10:g} cosine",
           f"- unigram cross-entropy on validation {xent:.4f} nats/token",
           "- loss by position: mean over 16 validation windows of the training length, best checkpoint", ""]
    out += [f"- {x}" for x in lines] + [""] + table + [""] + curves
    append_results("\n".join(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(REPO, "runs", "bench_learning"))
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--arch", nargs="+", choices=("ttt", "attention", "hybrid"),
                    help="compare architectures (ternary) instead of ternary against float")
    ap.add_argument("--hidden", type=int, default=128, help="D of --arch runs")
    ap.add_argument("--layers", type=int, default=4, help="layers of --arch runs")
    ap.add_argument("--heads", type=int, default=4, help="heads of --arch runs")
    ap.add_argument("--intermediate", type=int, default=344, help="MLP width of --arch runs")
    ap.add_argument("--seq-len", type=int, default=256, help="training length of --arch runs")
    ap.add_argument("--steps", type=int, default=0, help="steps of every --arch run (default: from the probes)")
    ap.add_argument("--kv-cost", nargs="+", metavar="CKPT",
                    help="only measure what float16 / int8 KV caches cost these checkpoints on the validation set")
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
    if args.kv_cost:
        val = np.asarray(va.tokens, dtype=np.int64)
        lines = []
        for ck in args.kv_cost:
            k = kv_cost(ck, val, args.seq_len)
            lines.append(f"{ck}: float32 {k['float32']:.5f}, float16 {k['float16']:.5f} "
                         f"({k['float16'] - k['float32']:+.5f}), int8 {k['int8']:.5f} "
                         f"({k['int8'] - k['float32']:+.5f}) nats/token")
        print("\n".join(lines))
        if not args.no_append:
            from bench_kernels import append_results

            append_results("\n".join([f"\n## bench_learning --kv-cost -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
                                       f"- command: `python bench/bench_learning.py --kv-cost {' '.join(args.kv_cost)} "
                                       f"--seq-len {args.seq_len}`",
                                       "- validation loss on the first 8,192 validation tokens in windows of "
                                       f"{args.seq_len}, read through the KV cache in each precision", ""]
                                      + [f"- {x}" for x in lines]))
        return
    if args.arch:
        arch_main(args, dtrain, dval, xent, tr, va)
        return
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
