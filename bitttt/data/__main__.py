"""Data preparation: text files -> token files, masks and a manifest.

    python -m bitttt.data prepare INPUT... --out DIR [--tokenizer PATH] [--vocab-size N] ...

The command line only (arguments and printing); the work is `bitttt.data.prepare`.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence

from .pipeline import prepare


def _n(k: int, what: str) -> str:
    return f"{k:,} {what}{'' if k == 1 else 's'}"


def describe_split(manifest: dict) -> str:
    """The split in words: tokens and documents of each side, and how a single document was cut."""
    s = manifest["splits"]
    tr, va = s["train"], s["val"]
    n_files = len(manifest.get("sources", [])) or None
    docs = manifest.get("documents", tr["documents"] + va["documents"])
    head = _n(docs, "document") + (f" from {_n(n_files, 'file')}" if n_files else "")
    if manifest.get("single_document_val_tokens"):
        split = (f"train {tr['tokens']:,} tokens, val {va['tokens']:,} tokens (one document: its last "
                 f"{manifest['single_document_val_tokens']:,} tokens are the validation split)")
    else:
        split = (f"train {tr['tokens']:,} tokens in {_n(tr['documents'], 'document')}, val {va['tokens']:,} tokens "
                 f"in {_n(va['documents'], 'document')}")
    return (f"{head}; {split}; vocab {manifest['tokenizer']['vocab_size']}, {manifest['dtype']}"
            + (", with masks" if manifest["has_mask"] else ""))


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `prepare` (shared with the `bitttt` command's completion)."""
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help=".txt, .md or .jsonl files (optionally .gz), or folders: their files, recursively")
    p.add_argument("--include", action="append", metavar="GLOB",
                   help="in folders, take the files matching GLOB (repeatable; default: *.txt *.md *.jsonl and .gz)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (must not exist or be empty)")
    p.add_argument("--tokenizer", metavar="PATH", help="use this tokenizer.model instead of training one")
    p.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size of a trained tokenizer (4096)")
    p.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="tokenizer model (unigram)")
    p.add_argument("--val-fraction", type=float, default=0.01, help="fraction of documents for validation (0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of tokenizer training (0)")
    p.add_argument("--text-field", default="text", help="JSON field holding a document's text (text)")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="invalid UTF-8: refuse (strict) or replace with U+FFFD (replace)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="replace DIR if it holds an earlier prepare's output")


def main(argv: Sequence[str] | None = None, prog: str = "python -m bitttt.data") -> int:
    """`python -m bitttt.data prepare ...`; returns the exit status (2 on any error)."""
    parser = argparse.ArgumentParser(prog=prog, description="Prepare token files for training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("prepare", help="tokenize text files into DIR (train.bin, val.bin, manifest.json)",
                       description=__doc__.split("\n\n")[0] if __doc__ else None)
    add_prepare_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":  # inputs may come before and after the options
        args = p.parse_intermixed_args(argv[1:])
        args.command = "prepare"
    else:
        args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            manifest = prepare(
                args.inputs, args.out, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                model_type=args.model_type, val_fraction=args.val_fraction, seed=args.seed,
                text_field=args.text_field, errors=args.errors, progress=not args.no_progress, force=args.force,
                include=args.include,
            )
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"wrote {args.out}: {describe_split(manifest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
