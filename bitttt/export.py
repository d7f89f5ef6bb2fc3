"""Export a packed model file: `python -m bitttt.export RUN_OR_CHECKPOINT [--out MODEL.safetensors]`.

The file (for inference only, no optimizer state: 2-bit packed BitLinear weights (1.6-bit with
--format t1), a float16
embedding, an int8 LM head by default) is described in bitttt.formats.model_file, which writes it.
Its metadata names the source checkpoint by file name only (no path of this machine) and keeps
the training sequence length, which `eval` takes as its default --reset-every.

    python -m bitttt.export runs/stories                 # -> runs/stories/model.safetensors
    python -m bitttt.export runs/stories/checkpoints/step_0002000.safetensors --out stories.safetensors
    python -m bitttt.export runs/stories --format t1   # 1.6 bits per weight: 5 ternary weights a byte
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError
from .formats.model_file import HEAD_FORMATS, PACKINGS, export_checkpoint


def default_out(src: str) -> str:
    """<run>/model.safetensors for a run directory or a checkpoint inside <run>/checkpoints/;
    <name>.model.safetensors next to any other checkpoint file."""
    src = os.path.normpath(src)
    if os.path.isdir(src):
        return os.path.join(src, "model.safetensors")
    folder = os.path.dirname(src)
    if os.path.basename(folder) == "checkpoints":
        return os.path.join(os.path.dirname(folder) or ".", "model.safetensors")
    stem = os.path.basename(src)
    stem = stem[: -len(".safetensors")] if stem.endswith(".safetensors") else stem
    return os.path.join(folder, stem + ".model.safetensors")


def build_parser(prog: str = "python -m bitttt.export") -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("src", help="run directory (its best checkpoint) or checkpoint file")
    ap.add_argument("--out", default=None,
                    help="the model file to write (default: <run>/model.safetensors)")
    ap.add_argument("--head", choices=HEAD_FORMATS, default="int8", help="LM head format (default int8)")
    ap.add_argument("--format", choices=PACKINGS, default="t2", dest="packing",
                    help="packed format of the BitLinear weights: t2, 2 bits per weight (default), or t1, "
                         "1.6 bits (5 per byte: a smaller file and faster decoding, the same results)")
    ap.add_argument("--force", action="store_true", help="replace --out even when it is not a bitttt model file")
    return ap


def main(argv: list[str] | None = None, prog: str = "python -m bitttt.export") -> int:
    args = build_parser(prog).parse_args(argv)
    out = args.out or default_out(args.src)
    try:
        if not os.path.exists(args.src):
            raise ValueError(f"{args.src}: no such run directory or checkpoint file")
        # refuses what it must not replace
        meta = export_checkpoint(args.src, out, args.head, force=args.force, packing=args.packing)
    except (ValueError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    cfg = json.loads(meta["config"])
    out = meta["path"]  # a folder as --out: the file written inside it
    print(f"wrote {out}: {os.path.getsize(out) / 2**20:.2f} MiB, D={cfg['hidden_size']}, "
          f"{cfg['num_layers']} layers, V={cfg['vocab_size']}, head {meta['head']}, weights {meta['packing']}, "
          f"from {meta['source']}"
          + (f" (step {meta['step']})" if meta.get("step") else "")
          + (f"; trained on sequences of {meta['seq_len']} tokens" if meta.get("seq_len") else ""))
    print(f"run it: bitttt run -m {out} -p \"...\"", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
