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

Data parallel on N processes (pip install 'bitttt[mpi]'): each rank takes grad_accum micro-batches
of every step, rank 0 alone writes; a run resumes on any number of ranks that divides its batch.

    mpiexec -n 2 python -m mpi4py -m bitttt.train grad_accum=1 ...   # = one process with grad_accum=2
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .diskerrors import describe
from .dist import DistributedError, World, world
from .formats import CheckpointError
from .layers.common import NonFiniteError
from .runtime import get_num_threads
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
    ap.add_argument("--threads", type=int,
                    help="kernel threads per rank (default: physical cores / ranks on this machine)")
    ap.add_argument("--check-every", type=int, default=50, metavar="N",
                    help="on several ranks: compare a hash of the parameters across ranks every N steps "
                         "(default 50; also before every checkpoint)")
    ap.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    args = ap.parse_args(argv)
    progress = False if args.no_progress else None
    w: World | None = None
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.insert(0, args.resume)  # `--resume key=value`: the run comes from the config
        args.resume = ""
    try:
        w = world()
        say = (lambda *a, **k: print(*a, **k)) if w.is_main else (lambda *a, **k: None)
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
            trainer = Trainer.resume(run, ov, progress=progress, world=w, check_every=args.check_every)
            say(f"resuming {trainer.run_dir} at step {trainer.step}", file=sys.stderr)
        else:
            cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
            cfg = cfg.with_overrides(ov)
            run_dir = os.path.join(cfg.out_dir, cfg.name)
            ck = os.path.join(run_dir, "checkpoints")
            if os.path.isdir(ck) and any(p.endswith(".safetensors") for p in os.listdir(ck)):
                raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                 f"or pick another name=...")
            trainer = Trainer(cfg, progress=progress, world=w, check_every=args.check_every)
            m = trainer.model_config
            say(f"model: D={m.hidden_size}, {m.num_layers} layers, H={m.num_heads}, I={m.intermediate_size}, "
                  f"V={m.vocab_size}, {'ternary' if m.ternary else 'float'}; {trainer.model.num_params():,} "
                  f"parameters; {trainer.train_data.n_tokens:,} training tokens; run dir {trainer.run_dir}",
                  file=sys.stderr)
        if w.size > 1:
            c = trainer.cfg
            say(f"data parallel: {w.size} ranks ({w.local_size} on this machine), {get_num_threads()} thread(s) "
                f"each; a step learns from {c.batch_size} x {c.grad_accum} x {w.size} = "
                f"{c.batch_size * c.grad_accum * w.size} sequences of {c.seq_len} tokens", file=sys.stderr)
        trainer.fit()
    except (ValueError, TypeError, CheckpointError, NonFiniteError, FileNotFoundError, DistributedError) as e:
        code = 2 if not isinstance(e, (NonFiniteError, DistributedError)) else 1
        return _fail(w, f"error: {e}", code, collective=getattr(e, "collective", False))
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        return _fail(w, f"error: {msg}", 2)
    except KeyboardInterrupt:
        return _fail(w, "interrupted", 130)
    except Exception:
        if w is not None and w.size > 1:  # a bug on one rank: end all of them, not only this one
            import traceback

            traceback.print_exc()
            w.abort(1)
        raise
    return 0


def _fail(w: World | None, msg: str, code: int, collective: bool = False) -> int:
    """Print `msg` and return `code`.  On several ranks an error that only this rank met ends every rank
    (MPI_Abort), so that none waits for it; an error every rank raised together is printed by rank 0."""
    if w is None or w.size == 1:
        print(msg, file=sys.stderr)
        return code
    if w.is_main or not collective:
        print(msg if w.is_main else f"rank {w.rank}: {msg}", file=sys.stderr, flush=True)
    if not collective:
        w.abort(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
