"""Export a packed model file: `python -m bitttt.export RUN_OR_CHECKPOINT --out MODEL.safetensors`.

The file (for inference only, no optimizer state: 2-bit packed BitLinear weights, a float16
embedding, an int8 LM head by default) is described in bitttt.formats.model_file, which writes it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError
from .formats.model_file import HEAD_FORMATS, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("src", help="run directory (its best checkpoint) or checkpoint file")
    ap.add_argument("--out", required=True, help="the model file to write")
    ap.add_argument("--head", choices=HEAD_FORMATS, default="int8", help="LM head format (default int8)")
    args = ap.parse_args(argv)
    try:
        meta = export_checkpoint(args.src, args.out, args.head)
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
    out = meta.get("path", args.out)
    print(f"wrote {out}: {os.path.getsize(out) / 2**20:.2f} MiB, D={cfg['hidden_size']}, "
          f"{cfg['num_layers']} layers, V={cfg['vocab_size']}, head {meta['head']}, from {meta['source']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
