"""Long memory: the loss by position of a continuous read against a read reset every 256 tokens (issue 13).

    python bench/bench_memory.py [--models A.safetensors B.safetensors ...] [--tokens 65536]
                                 [--reset-every 256] [--data ../shared/data] [--threads N]
                                 [--texts tinystories_valid_sample.txt war_and_peace.txt]
                                 [--plot DIR] [--no-append]

For each model (default: the shipped bitttt/models/tinystories-ternary.safetensors) and text,
the first --tokens tokens of the text (after <|endoftext|>, read in 64 KiB blocks as
`python -m bitttt.eval` reads it) are scored twice in the same run: with the TTT state reset
every --reset-every tokens (the baseline: the training window of the shipped model) and
continuously (never reset).  Printed per text: the loss of each position bucket (0-256, 256-1k,
1k-4k, 4k-16k, 16k-64k, ...) for both reads, continuous - reset, and the relative difference
over all the tokens.  The issue's targets: every bucket continuous <= reset, and the whole read
at least 3 % lower continuously on war_and_peace.txt (the model learns the book as it reads).
--plot DIR writes one PNG per model and text (matplotlib).  Figures, machine and command are
appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
SHIPPED = os.path.join(REPO, "bitttt", "models", "tinystories-ternary.safetensors")
TEXTS = ("tinystories_valid_sample.txt", "war_and_peace.txt")
TARGET_TEXT, TARGET_PCT = "war_and_peace.txt", -3.0  # whole-read relative difference at most this


def measure(model, path: str, tokens: int, reset: int) -> dict:
    """{"continuous", "reset": loss_by_position results, "seconds": {read: wall s}} for one model and text."""
    from bitttt.positions import loss_by_position
    from bitttt.tokenstream import take, text_pieces

    out: dict = {"seconds": {}}
    for name, r in (("reset", reset), ("continuous", 0)):
        t0 = time.perf_counter()
        out[name] = loss_by_position(model, take(text_pieces(path, model.tokenizer), tokens + 1), r)
        out["seconds"][name] = time.perf_counter() - t0
    return out


def table(m: dict, reset: int) -> tuple[list[str], dict]:
    """Markdown rows of one model and text, and the verdicts {"buckets_ok", "whole_pct"}."""
    rows = [f"| position | tokens | continuous | reset every {reset} | difference |", "|---|---|---|---|---|"]
    ok = True
    for c, r in zip(m["continuous"]["buckets"], m["reset"]["buckets"]):
        d = c["loss"] - r["loss"]
        ok &= d <= 0
        rows.append(f"| {c['label']} | {c['tokens']:,} | {c['loss']:.4f} | {r['loss']:.4f} | {d:+.4f} |")
    c, r = m["continuous"]["loss"], m["reset"]["loss"]
    pct = 100 * (c - r) / r
    rows.append(f"| whole | {m['continuous']['tokens']:,} | {c:.4f} | {r:.4f} | {c - r:+.4f} ({pct:+.1f} %) |")
    return rows, {"buckets_ok": ok, "whole_pct": pct}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=[SHIPPED], help="model files (default: the shipped model)")
    ap.add_argument("--tokens", type=int, default=65536, help="tokens scored per text (65536)")
    ap.add_argument("--reset-every", type=int, default=256, help="the baseline's reset interval (256)")
    ap.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data"), help="folder of the texts")
    ap.add_argument("--texts", nargs="+", default=list(TEXTS), help="text files in --data")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--plot", default=None, metavar="DIR", help="write a PNG per model and text into DIR")
    ap.add_argument("--no-append", action="store_true", help="print only, leave RESULTS.md alone")
    args = ap.parse_args()
    import bitttt
    from bitttt import runtime

    try:
        if args.tokens < 1 or args.reset_every < 1:
            raise ValueError("--tokens and --reset-every must be >= 1")
        if args.threads is not None:
            runtime.set_num_threads(args.threads)
        paths = [os.path.join(args.data, t) for t in args.texts]
        for p in paths:
            if not os.path.isfile(p):
                raise ValueError(f"{p}: no such file (--data names the folder of the texts)")
        if args.plot is not None:
            from bitttt.plotting import require_matplotlib

            require_matplotlib()
            os.makedirs(args.plot, exist_ok=True)
        from bitttt.generation import SHIPPED_MODELS

        models = [(SHIPPED_MODELS.get(m, m), bitttt.load(m)) for m in args.models]
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    threads = runtime.get_num_threads()
    reports = []
    for mpath, model in models:
        for p in paths:
            text = os.path.basename(p)
            print(f"{os.path.basename(mpath)} on {text}: {args.tokens:,} tokens, reset every {args.reset_every} "
                  f"and continuous, {threads} thread(s) ...", flush=True)
            m = measure(model, p, args.tokens, args.reset_every)
            rows, verdict = table(m, args.reset_every)
            print("\n".join(rows), flush=True)
            if args.plot is not None:
                from bitttt.plotting import plot_positions

                png = os.path.join(args.plot, f"{os.path.splitext(os.path.basename(mpath))[0]}-"
                                              f"{os.path.splitext(text)[0]}.png")
                plot_positions({"continuous": m["continuous"], f"reset every {args.reset_every}": m["reset"]}, png,
                               title=f"{os.path.basename(mpath)} on {text}, {m['continuous']['tokens']:,} tokens")
                print(f"plot written to {png}")
            reports.append((mpath, model, text, m, rows, verdict))
    if args.no_append:
        return 0
    from bench_kernels import append_results, machine

    out = [f"## bench_memory -- {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}", "",
           f"- machine: {machine()}, kernel {bitttt.cpu_info()['kernel']}, {threads} thread(s) (shared with other "
           "jobs: the times are noisy, the losses are not)",
           f"- command: `python bench/{os.path.basename(__file__)} {' '.join(sys.argv[1:])}`".rstrip(),
           f"- per model and text: the first {args.tokens:,} tokens after <|endoftext|> (read as `python -m "
           f"bitttt.eval` reads a text), scored with the TTT state reset every {args.reset_every} tokens (the "
           "baseline) and continuously; loss in nats/token by position in the text; difference = continuous - "
           "reset (negative: reading on helps)",
           f"- targets (issue 13): every bucket continuous <= reset; whole {TARGET_PCT:+.0f} % or lower on "
           f"{TARGET_TEXT}", ""]
    for mpath, model, text, m, rows, v in reports:
        secs = ", ".join(f"{k} {s:.0f} s" for k, s in m["seconds"].items())
        whole = f"; whole {v['whole_pct']:+.1f} %" + (
            (" (target met)" if v["whole_pct"] <= TARGET_PCT else " (target missed)") if text == TARGET_TEXT else "")
        out += [f"**{os.path.basename(mpath)}** ({model.num_params():,} parameters, "
                f"{os.path.getsize(mpath) / 2**20:.1f} MiB) on `{text}` ({secs}): every bucket continuous <= reset: "
                f"{'yes' if v['buckets_ok'] else 'no'}{whole}", "", *rows, ""]
    append_results("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
