"""Evaluate a model on text: `python -m bitttt.eval -m MODEL --data FILE [--reset-every N]`.

Reads FILE (UTF-8 text; documents separated by <|endoftext|> as in training data) through the
model as one stream, the TTT state carried from token to token (reset every N tokens when
asked, e.g. to the training sequence length), and prints the mean next-token loss in nats,
the perplexity and the bits per byte of the text.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, help="model file, checkpoint or run directory")
    ap.add_argument("--data", required=True, help="UTF-8 text file")
    ap.add_argument("--reset-every", type=int, default=0, help="reset the TTT state every N tokens (0: never)")
    ap.add_argument("--max-tokens", type=int, default=0, help="score at most N tokens (0: all)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    args = ap.parse_args(argv)
    from . import runtime
    from .generation import load

    try:
        if args.threads:
            runtime.set_num_threads(args.threads)
        if args.reset_every < 0 or args.max_tokens < 0:
            raise ValueError("--reset-every and --max-tokens must be >= 0")
        try:
            if os.path.exists(args.data) and not os.path.isfile(args.data):  # a directory, /dev/zero, a FIFO
                raise ValueError(f"{args.data}: not a regular file")
            with open(args.data, "rb") as f:
                raw = f.read()
            text = raw.decode("utf-8")
        except FileNotFoundError:
            raise ValueError(f"{args.data}: no such file") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"{args.data}: not UTF-8 text (invalid byte at offset {e.start})") from None
        model = load(args.model)
        tok = model.tokenizer
        ids = [tok.eos_id] + tok.encode(text)
        if args.max_tokens:
            ids = ids[: args.max_tokens + 1]
        if len(ids) < 2:
            raise ValueError(f"{args.data}: no text to evaluate")
        nbytes = len(tok.decode_bytes(ids[1:]))
        total, n = model.im.score(ids, args.reset_every)
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
