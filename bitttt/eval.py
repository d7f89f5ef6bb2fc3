"""Evaluate a model on text: `python -m bitttt.eval -m MODEL --data FILE|DIR [--reset-every N] [--by-position]`.

--data is a UTF-8 text file (documents separated by <|endoftext|> as in training data) or a
folder made by `prepare` (its validation split; `--split train` for the other).  The tokens go
through the model as one stream, the TTT state carried from token to token and reset every N
tokens.  N defaults to the training sequence length stored in the model (checkpoints and model
files exported from them record it), so that the loss on a prepared folder's validation split
is the trainer's validation loss; `--reset-every 0` never resets (the memory keeps growing).
Prints the settings used, then the mean next-token loss in nats, the perplexity and the bits
per byte of the text.  The text is read in pieces (64 KiB blocks cut at newlines), so memory
does not grow with its length.

--by-position reads the text twice, continuously and reset every N tokens, and prints the loss
of each position bucket of the text (0-256, 256-1k, 1k-4k, 4k-16k, ... growing by 4; --buckets
256,1k,8k for others) for both reads, their difference, and the whole-text figures.  A TTT
model that learns while it reads has a continuous loss at or below the reset loss in every
bucket.  --plot FILE.png draws both loss-by-position curves (needs matplotlib: pip install
'bitttt[plot]'); --json prints everything as one JSON object instead.  --buckets and --plot
imply --by-position.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Iterator

from .diskerrors import describe
from .formats import CheckpointError
from .positions import loss_by_position, parse_buckets

__all__ = ["build_parser", "loss_by_position", "main", "train_seq_len"]

# shipped models made before model files recorded seq_len (bitttt/models/MODEL_CARD.md)
SHIPPED_SEQ_LEN = {"tinystories-ternary.safetensors": 256}


def train_seq_len(path: str) -> int | None:
    """The training sequence length a model file or checkpoint records (None when it does not)."""
    from .generation import SHIPPED_MODELS

    path = SHIPPED_MODELS.get(path, path) if not os.path.exists(path) else path
    n = _recorded_seq_len(path)
    if n is None and os.path.dirname(os.path.abspath(path)) == os.path.dirname(SHIPPED_MODELS["tinystories"]):
        n = SHIPPED_SEQ_LEN.get(os.path.basename(path))
    return n


def _recorded_seq_len(path: str) -> int | None:
    from .formats.runs import resolve
    from .formats.safetensors import read_metadata

    try:
        meta = read_metadata(resolve(path))
    except (ValueError, OSError):
        return None
    v = meta.get("seq_len")
    if not v and "train" in meta:
        try:
            v = json.loads(meta["train"]).get("seq_len")
        except (ValueError, AttributeError):
            v = None
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None
    return n if n > 0 else None


def _source(data: str, split: str, tok) -> tuple[Callable[[], Iterator], str, int]:
    """(a function giving the token stream of a text file or a prepared folder's split in pieces, a
    description, its size: tokens of a folder, bytes of a text).  Errors (ValueError) before any reading."""
    from .tokenstream import array_pieces, check_text_file, text_pieces

    if os.path.isdir(data):
        from .data import TokenData

        if not os.path.exists(os.path.join(data, "manifest.json")):
            raise ValueError(f"{data}: a folder, but not one made by `bitttt prepare` (no manifest.json); "
                             "pass a text file or a prepared folder")
        td = TokenData(data, split)
        if td.tokenizer_sha256 != tok.sha256:
            raise ValueError(f"{data}: prepared with another tokenizer than the model's; prepare the text again "
                             "with the model's tokenizer (bitttt prepare --tokenizer ...)")
        note = ", the loss mask is ignored (every token is scored)" if td.mask is not None else ""
        return (lambda: array_pieces(td.tokens), f"{data} ({split} split, {td.n_tokens:,} tokens{note})",
                td.n_tokens)
    nbytes = check_text_file(data)
    return lambda: text_pieces(data, tok), f"{data} (text, {nbytes:,} bytes)", nbytes + 1


def _counting_bytes(pieces, tok, counter: list[int]) -> Iterator:
    """`pieces` unchanged, adding to counter[0] the UTF-8 bytes of every token but the first (those scored)."""
    first = True
    for p in pieces:
        counter[0] += len(tok.decode_bytes(p[1:] if first else p))
        first = False
        yield p


def build_parser(prog: str = "python -m bitttt.eval") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("-m", "--model", default="tinystories",
                    help="model file, checkpoint, run directory or shipped model name (default: tinystories)")
    ap.add_argument("--data", required=True, help="UTF-8 text file, or a prepared data folder (its validation split)")
    ap.add_argument("--split", choices=("val", "train"), default="val", help="split of a prepared folder (val)")
    ap.add_argument("--reset-every", type=int, default=None,
                    help="reset the TTT state every N tokens; 0 = never (default: the training seq_len of the model)")
    ap.add_argument("--max-tokens", type=int, default=0, help="score at most N tokens (0: all)")
    ap.add_argument("--by-position", action="store_true",
                    help="loss per position bucket, read continuously and reset every N tokens (two reads)")
    ap.add_argument("--buckets", default=None, metavar="E1,E2,...",
                    help="bucket boundaries in tokens, e.g. 256,1k,4k,16k (default: 256 x 4^k up to the text's "
                         "length); implies --by-position")
    ap.add_argument("--plot", default=None, metavar="FILE.png",
                    help="write the loss-by-position curves as a PNG (needs matplotlib); implies --by-position")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object (settings included)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the GPU backend (falls back to the CPU with a warning when unavailable)")
    return ap


def _figures(r: dict, nbytes: int) -> dict:
    """A loss_by_position result with perplexity and bits/byte (nbytes: UTF-8 bytes of the scored tokens)."""
    loss = r["loss"]
    return {"reset_every": r["reset_every"], "tokens": r["tokens"], "total_nats": r["total_nats"], "loss": loss,
            "perplexity": math.exp(min(loss, 700)), "bits_per_byte": r["total_nats"] / math.log(2) / max(nbytes, 1),
            "buckets": r["buckets"], "curve": r["curve"]}


def _read_name(reset: int) -> str:
    return f"reset every {reset} tokens" if reset else "never reset"


def format_table(runs: dict[str, dict]) -> str:
    """The bucket table of `runs` ({"continuous": figures, "reset": figures}, either may be absent)."""
    names = list(runs)
    cols = {"continuous": "continuous"}
    if "reset" in runs:
        cols["reset"] = f"reset/{runs['reset']['reset_every']}"
    both = len(names) == 2
    head = f"{'position':<12}{'tokens':>10}" + "".join(f"{cols[n]:>13}" for n in names)
    head += f"{'difference':>13}" if both else ""
    lines = [head]
    first = runs[names[0]]
    for i, b in enumerate(first["buckets"]):
        row = f"{b['label']:<12}{b['tokens']:>10,}" + "".join(f"{runs[n]['buckets'][i]['loss']:>13.4f}" for n in names)
        if both:
            row += f"{runs['continuous']['buckets'][i]['loss'] - runs['reset']['buckets'][i]['loss']:>+13.4f}"
        lines.append(row)
    row = f"{'whole':<12}{first['tokens']:>10,}" + "".join(f"{runs[n]['loss']:>13.4f}" for n in names)
    if both:
        d = runs["continuous"]["loss"] - runs["reset"]["loss"]
        row += f"{d:>+13.4f} ({100 * d / runs['reset']['loss']:+.1f} %)"
    lines.append(row)
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str = "python -m bitttt.eval") -> int:
    args = build_parser(prog).parse_args(argv)
    from . import runtime
    from .backend import cuda as cuda_backend
    from .generation import load
    from .tokenstream import take

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            runtime.set_num_threads(args.threads)
        if (args.reset_every is not None and args.reset_every < 0) or args.max_tokens < 0:
            raise ValueError("--reset-every and --max-tokens must be >= 0")
        edges = parse_buckets(args.buckets) if args.buckets is not None else None
        by_position = args.by_position or edges is not None or args.plot is not None
        if args.plot is not None:
            from .plotting import check_plot_path, require_matplotlib

            check_plot_path(args.plot)
            require_matplotlib()
        gpu, why = cuda_backend.for_device(args.device)
        if why:
            print(f"warning: {why}; running on the CPU", file=sys.stderr)
        model = load(args.model)
        if gpu is not None:
            gpu.adopt(model.im.model)
        tok = model.tokenizer
        pieces, what, size = _source(args.data, args.split, tok)
        if size < 2:
            raise ValueError(f"{args.data}: no text to evaluate")
        if args.reset_every is None:
            n = train_seq_len(args.model)
            reset = n or 0
            why = "the training seq_len of the model" if n else \
                "the model does not record its training seq_len; --reset-every N sets it"
        else:
            reset = args.reset_every
            why = "--reset-every"
        reads = {"continuous": 0, "reset": reset} if by_position and reset else \
            {("reset" if reset else "continuous"): reset}
        say = ", and ".join(_read_name(model.im.reset_interval(r)) for r in reads.values())
        say = f"read twice: {say}" if len(reads) == 2 else say
        attn = " (a model with attention layers resets at least every max_position_embeddings tokens)" \
            if model.im.reset_interval(0) else ""
        limit = f"; at most {args.max_tokens:,} tokens" if args.max_tokens else ""
        print(f"model {args.model}: {model.num_params():,} parameters; data {what}{limit}; "
              f"state {say} ({why}){attn}; "
              f"{runtime.get_num_threads()} thread(s)", file=sys.stderr, flush=True)
        runs = {}
        nbytes = [0]
        for name, r in reads.items():
            stream = take(pieces(), args.max_tokens + 1 if args.max_tokens else None)
            if not runs:
                stream = _counting_bytes(stream, tok, nbytes)
            res = loss_by_position(model, stream, r, edges)
            if res["tokens"] == 0:
                raise ValueError(f"{args.data}: no text to evaluate")
            runs[name] = _figures(res, nbytes[0])
        if args.plot is not None:
            from .plotting import plot_positions

            plot_positions({("continuous" if k == "continuous" else f"reset every {v['reset_every']}"): v
                            for k, v in runs.items()}, args.plot,
                           title=f"{os.path.basename(str(args.model))} on {os.path.basename(args.data)}, "
                                 f"{runs[next(iter(runs))]['tokens']:,} tokens")
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    first = runs[next(iter(runs))]
    if args.json:
        print(json.dumps({"model": str(args.model), "parameters": model.num_params(), "data": str(args.data),
                          "source": what, "split": args.split if os.path.isdir(args.data) else None,
                          "max_tokens": args.max_tokens, "threads": runtime.get_num_threads(),
                          "tokens": first["tokens"], "bytes": nbytes[0], "reset_source": why,
                          "plot": args.plot, "runs": runs}))
        return 0
    if by_position:
        print(f"tokens {first['tokens']}, bytes {nbytes[0]}; loss by position in the text (nats/token):")
        print(format_table(runs))
    for name, r in runs.items():
        head = f"{name} ({_read_name(r['reset_every'])}): " if by_position else ""
        print(f"{head}tokens {r['tokens']}, bytes {nbytes[0]}: loss {r['loss']:.4f} nats/token, "
              f"perplexity {r['perplexity']:.3f}, {r['bits_per_byte']:.4f} bits/byte")
    if args.plot is not None:
        print(f"plot written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
