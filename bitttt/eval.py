"""Evaluate a model on text: `python -m bitttt.eval -m MODEL --data FILE|DIR [--reset-every N]`.

--data is a UTF-8 text file (documents separated by <|endoftext|> as in training data) or a
folder made by `prepare` (its validation split; `--split train` for the other).  The tokens go
through the model as one stream, the TTT state carried from token to token and reset every N
tokens.  N defaults to the training sequence length stored in the model (checkpoints and model
files exported from them record it), so that the loss on a prepared folder's validation split
is the trainer's validation loss; `--reset-every 0` never resets (the memory keeps growing).
Prints the settings used, then the mean next-token loss in nats, the perplexity and the bits
per byte of the text.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError

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


def _tokens(data: str, split: str, tok) -> tuple[list[int], str]:
    """(token ids, a description) of a text file or a prepared folder's split."""
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
        return [int(t) for t in td.tokens], f"{data} ({split} split, {td.n_tokens:,} tokens{note})"
    if os.path.exists(data) and not os.path.isfile(data):  # /dev/zero, a FIFO: never read whole
        raise ValueError(f"{data}: not a regular file")
    try:
        with open(data, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{data}: no such file or folder") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{data}: not UTF-8 text (invalid byte at offset {e.start})") from None
    ids = [tok.eos_id] + tok.encode(text)
    return ids, f"{data} (text, {len(raw):,} bytes, {len(ids) - 1:,} tokens)"


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
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the GPU backend (falls back to the CPU with a warning when unavailable)")
    return ap


def main(argv: list[str] | None = None, prog: str = "python -m bitttt.eval") -> int:
    args = build_parser(prog).parse_args(argv)
    from . import runtime
    from .backend import cuda as cuda_backend
    from .generation import load

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            runtime.set_num_threads(args.threads)
        if (args.reset_every is not None and args.reset_every < 0) or args.max_tokens < 0:
            raise ValueError("--reset-every and --max-tokens must be >= 0")
        gpu, why = cuda_backend.for_device(args.device)
        if why:
            print(f"warning: {why}; running on the CPU", file=sys.stderr)
        model = load(args.model)
        if gpu is not None:
            gpu.adopt(model.im.model)
        tok = model.tokenizer
        ids, what = _tokens(args.data, args.split, tok)
        if args.max_tokens:
            ids = ids[: args.max_tokens + 1]
        if len(ids) < 2:
            raise ValueError(f"{args.data}: no text to evaluate")
        if args.reset_every is None:
            n = train_seq_len(args.model)
            reset = n or 0
            why = "the training seq_len of the model" if n else \
                "the model does not record its training seq_len; --reset-every N sets it"
        else:
            reset = args.reset_every
            why = "--reset-every"
        every = f"reset every {reset} tokens" if reset else "never reset"
        print(f"model {args.model}: {model.num_params():,} parameters; data {what}; "
              f"state {every} ({why}); "
              f"{runtime.get_num_threads()} thread(s)", file=sys.stderr, flush=True)
        nbytes = len(tok.decode_bytes(ids[1:]))
        total, n = model.im.score(ids, reset)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    loss = total / n
    print(f"tokens {n}, bytes {nbytes}: loss {loss:.4f} nats/token, perplexity {math.exp(min(loss, 700)):.3f}, "
          f"{total / math.log(2) / max(nbytes, 1):.4f} bits/byte")
    return 0


if __name__ == "__main__":
    sys.exit(main())
