"""Train a BitLlama: `python -m bitttt.train [--config FILE] [--resume [RUN]] [key=value ...]`.

With no argument it trains the default configuration (data/sample_config/config.json in the
source tree; the same values are built in) on the docstrings of the Python standard library
for three minutes, into runs/default/.  Keys are TrainConfig fields (bitttt/trainer.py);
`model.<field>` sets a model field, e.g. `model.hidden_size=256`.  Values are JSON
(`lr=1e-3`, `corpus='["a.txt"]'`, `data=prepared/`; text that is not JSON is taken as a string).

    python -m bitttt.train --config my.json max_steps=2000 --threads 2
    python -m bitttt.train --resume runs/default max_steps=6000      # continue, bit-identically

Ctrl+C, SIGTERM or a file named STOP in the run directory save a checkpoint and exit; a
second Ctrl+C stops at once (the last checkpoint stays intact).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError
from .layers.common import NonFiniteError
from .trainer import TrainConfig, Trainer


def parse_overrides(items: list[str]) -> dict:
    """['lr=1e-3', 'model.ternary=false', 'name=run1'] -> {'lr': 0.001, 'model.ternary': False, 'name': 'run1'}."""
    out = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"expected key=value, got {it!r}")
        k, v = it.split("=", 1)
        k = k.strip()
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.train", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--config", help="training config JSON (default: the built-in defaults)")
    ap.add_argument("--resume", nargs="?", const="", metavar="RUN",
                    help="continue a run directory (default: the run named by the config) or a checkpoint file")
    ap.add_argument("--threads", type=int, help="kernel threads (default: physical cores)")
    ap.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    progress = False if args.no_progress else None
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.insert(0, args.resume)  # `--resume key=value`: the run comes from the config
        args.resume = ""
    try:
        ov = parse_overrides(args.overrides)
        if args.threads is not None:
            ov["threads"] = args.threads
        if args.resume is not None:
            run = args.resume
            if not run:
                base = TrainConfig.from_json(args.config) if args.config else TrainConfig()
                base = base.with_overrides({k: v for k, v in ov.items() if k in ("name", "out_dir")})
                run = os.path.join(base.out_dir, base.name)
            ov = {k: v for k, v in ov.items() if k not in ("name", "out_dir")}
            trainer = Trainer.resume(run, ov, progress=progress)
            print(f"resuming {trainer.run_dir} at step {trainer.step}", file=sys.stderr)
        else:
            cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
            cfg = cfg.with_overrides(ov)
            run_dir = os.path.join(cfg.out_dir, cfg.name)
            ck = os.path.join(run_dir, "checkpoints")
            if os.path.isdir(ck) and any(p.endswith(".safetensors") for p in os.listdir(ck)):
                raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                 f"or pick another name=...")
            trainer = Trainer(cfg, progress=progress)
            m = trainer.model_config
            print(f"model: D={m.hidden_size}, {m.num_layers} layers, H={m.num_heads}, I={m.intermediate_size}, "
                  f"V={m.vocab_size}, {'ternary' if m.ternary else 'float'}; {trainer.model.num_params():,} "
                  f"parameters; {trainer.train_data.n_tokens:,} training tokens; run dir {trainer.run_dir}",
                  file=sys.stderr)
        trainer.fit()
    except (ValueError, TypeError, CheckpointError, NonFiniteError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if not isinstance(e, NonFiniteError) else 1
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
