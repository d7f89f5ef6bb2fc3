"""Train a small model on your own text, from Python: prepare the text, train, sample, export.

    python examples/train_on_your_text.py my_notes.txt more_text/ --minutes 5
    python examples/train_on_your_text.py input.txt --preset small --minutes 30   # e.g. TinyShakespeare

Any .txt/.md/.jsonl files or folders of them.  TinyShakespeare (1 MB) is a good first corpus:
https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt
Without a file it trains on the docstrings of the Python standard library (on every machine).
The same from the shell: `bitttt prepare FILES --out DIR`, `bitttt train data=DIR`, `bitttt export RUN`.
"""
import argparse
import os

import bitttt
from bitttt.data import prepare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="*", help="text files or folders (default: the Python docstrings)")
    ap.add_argument("--out", default="runs", help="folder for the data and the run (default runs/)")
    ap.add_argument("--name", default="my_text", help="run name (default my_text)")
    ap.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium"])
    ap.add_argument("--minutes", type=float, default=3.0, help="training time (default 3)")
    ap.add_argument("--steps", type=int, default=100_000, help="at most this many steps")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    run_dir = os.path.join(args.out, args.name)
    cfg = dict(name=args.name, out_dir=args.out, preset=args.preset, max_steps=args.steps,
               max_time=args.minutes * 60, seq_len=args.seq_len, batch_size=args.batch_size,
               eval_interval=max(1, min(100, args.steps // 2)), ckpt_interval=max(1, args.steps),
               warmup_steps=min(50, max(1, args.steps // 10)), sample_tokens=32)
    if args.inputs:
        data = os.path.join(args.out, args.name + "-data")
        if not os.path.exists(os.path.join(data, "manifest.json")):
            m = prepare(args.inputs, data, vocab_size=args.vocab_size, val_fraction=0.05, progress=False)
            print(f"prepared {data}: {m['splits']['train']['tokens']:,} training tokens")
        cfg["data"] = data
    else:
        cfg["vocab_size"] = args.vocab_size  # the built-in corpus gets a tokenizer of this size

    trainer = bitttt.Trainer(cfg, progress=False)
    print(f"{trainer.model}; {trainer.estimate()['s_per_step']:.3f} s per step")
    summary = trainer.fit()  # prints evaluations, samples and a summary; Ctrl+C stops it cleanly
    print(f"validation loss {summary.get('val_loss', float('nan')):.3f} after {summary['step']} steps")

    out = os.path.join(run_dir, "model.safetensors")
    from bitttt.formats import export_checkpoint

    export_checkpoint(run_dir, out)
    model = bitttt.load(out)
    print(f"exported {out} ({os.path.getsize(out) / 2**20:.2f} MiB)")
    print(model.generate("The", max_tokens=40, temperature=0.8, seed=0))
    print(f"chat with it: bitttt chat -m {out}")


if __name__ == "__main__":
    main()
