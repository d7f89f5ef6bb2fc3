"""Train a BitLlama: `python -m bitttt.train [--config FILE] [--resume [RUN]] [key=value ...]`
(also `bitttt train ...`).

With no argument it trains the default configuration (data/sample_config/config.json in the
source tree; the same values are built in) on the docstrings of the Python standard library
for three minutes, into runs/default/.  Every setting below can be given as key=value or
--key=value (nanoGPT's habit); `model.<field>=value` sets one model field; values are JSON
(`lr=1e-3`, `corpus='["a.txt"]'`; text that is not JSON is taken as a string).

    bitttt train data=data/shakes name=shakes preset=small max_steps=2000
    bitttt train --max_steps=50 --eval_interval=25 --print-config   # show what would run, run nothing
    bitttt train --resume runs/default max_steps=6000                # continue, bit-identically

Before the first step the trainer prints the parameter count, the tokens per step, and the
seconds per step and peak RAM measured on a trial step, with the run's expected length.  Ctrl+C,
SIGTERM or a file named STOP in the run directory save a checkpoint and exit; a second Ctrl+C
stops at once (the last checkpoint stays intact).

Data parallel on N processes (pip install 'bitttt[mpi]'): each rank takes grad_accum micro-batches
of every step, rank 0 alone writes; a run resumes on any number of ranks that divides its batch.

    mpiexec -n 2 python -m mpi4py -m bitttt.train grad_accum=1 ...   # = one process with grad_accum=2
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap

from .backend import cuda as cuda_backend
from .diskerrors import describe
from .dist import DistributedError, World, world
from .formats import CheckpointError
from .layers.common import NonFiniteError
from .runtime import get_num_threads
from .trainer import DEFAULT_MODEL, PRESETS, RESUME_OVERRIDES, TrainConfig, Trainer, preset_params


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


def _keys() -> set[str]:
    from .config import BitLlamaConfig

    return {f.name for f in dataclasses.fields(TrainConfig)} | \
        {"model." + f.name for f in dataclasses.fields(BitLlamaConfig)}


def _bool_keys() -> set[str]:
    from .config import BitLlamaConfig

    return {("model." if cls is BitLlamaConfig else "") + f.name for cls in (TrainConfig, BitLlamaConfig)
            for f in dataclasses.fields(cls) if f.type in ("bool", bool)}


def normalize_argv(argv: list[str]) -> list[str]:
    """`--max_steps=10`, `--max-steps=10` and `--max_steps 10` -> `max_steps=10` for every config key
    (TrainConfig fields and model.<field>); the command's own options are left as they are."""
    keys = _keys()
    out, i = [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if a.startswith("--") and len(a) > 2:
            name, eq, val = a[2:].partition("=")
            key = name.replace("-", "_") if not name.startswith("model.") else "model." + name[6:].replace("-", "_")
            if key in keys:
                if eq:
                    out.append(f"{key}={val}")
                elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                    out.append(f"{key}={argv[i + 1]}")
                    i += 1
                elif key in _bool_keys():
                    out.append(f"{key}=true")  # a bare --flag sets a boolean
                else:
                    raise ValueError(f"--{name} needs a value: --{name}=VALUE (or {key}=VALUE)")
                i += 1
                continue
        out.append(a)
        i += 1
    return out


def _fmt(v) -> str:
    return json.dumps(v)


def settings_help(width: int = 100) -> str:
    """Every TrainConfig field with its default and meaning (from the dataclass), the model
    fields, and the presets with their parameter counts."""
    from .config import BitLlamaConfig

    rows = TrainConfig.field_docs()
    w = max(len(n) for n, _, _ in rows) + 2
    lines = ["settings (key=value or --key=value; default, then meaning):"]
    dw = 24
    for name, default, meaning in rows:
        d = _fmt(default) if name != "model" else "(below)"
        ind = " " * (2 + w + dw)
        if len(d) >= dw:
            lines.append(f"  {name:<{w}}{d}")
            lines += textwrap.wrap(meaning, width=width, initial_indent=ind, subsequent_indent=ind,
                                   break_on_hyphens=False)
        else:
            lines += textwrap.wrap(meaning, width=width, initial_indent=f"  {name:<{w}}{d:<{dw}}",
                                   subsequent_indent=ind, break_on_hyphens=False) or [f"  {name:<{w}}{d}"]
    mdefaults = {**{f.name: f.default for f in dataclasses.fields(BitLlamaConfig)}, **DEFAULT_MODEL}
    mdefaults.pop("vocab_size", None)
    lines += ["", "model fields (model.<field>=value; vocab_size comes from the tokenizer):",
              *textwrap.wrap(", ".join(f"{k}={json.dumps(v)}" for k, v in mdefaults.items()), width=width,
                             initial_indent="  ", subsequent_indent="  ")]
    lines += ["", "presets (preset=NAME; parameters at vocab_size 2048 / 4096):"]
    for name, shape in PRESETS.items():
        lines.append(f"  {name:<8} D={shape['hidden_size']}, {shape['num_layers']} layers, {shape['num_heads']} heads, "
                     f"I={shape['intermediate_size']}: {preset_params(name, 2048) / 1e6:.2f}M / "
                     f"{preset_params(name, 4096) / 1e6:.2f}M parameters")
    return "\n".join(lines)


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def print_estimate(trainer: Trainer, out=None) -> dict:
    """The pre-training lines: model, parameters, tokens per step, trial-step time, peak RAM, ETA."""
    out = out or sys.stderr
    cfg, m = trainer.cfg, trainer.model_config
    est = trainer.estimate()
    print(f"model: D={m.hidden_size}, {m.num_layers} layers, H={m.num_heads}, I={m.intermediate_size}, "
          f"V={m.vocab_size}, {'ternary' if m.ternary else 'float'}; {est['params']:,} parameters; "
          f"{trainer.train_data.n_tokens:,} training tokens; run dir {trainer.run_dir}", file=out)
    ranks = trainer.world.size
    print(f"step: {cfg.batch_size} x {cfg.seq_len} tokens x {cfg.grad_accum} accumulation"
          + (f" x {ranks} ranks" if ranks > 1 else "") + f" = {est['tokens_per_step']:,} tokens per step", file=out)
    end = f"{est['steps']:,} steps in about {_duration(est['eta_s'])}"
    if est["limited_by"] == "max_time":
        end += f" (max_time={cfg.max_time:g} s stops the run before max_steps={cfg.max_steps:,})"
    print(f"estimate from a trial step: {est['s_per_step']:.3f} s per step, peak RAM {est['peak_rss_mb']:,.0f} MiB "
          f"(process RSS); {end}", file=out, flush=True)
    return est


def build_parser(prog: str = "python -m bitttt.train") -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(prog=prog, description=doc[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(doc[1:]) + "\n" + settings_help())
    ap.add_argument("--config", help="training config JSON (default: the built-in defaults)")
    ap.add_argument("--resume", nargs="?", const="", metavar="RUN",
                    help="continue a run directory (default: the run named by the config) or a checkpoint file")
    ap.add_argument("--threads", type=int,
                    help="kernel threads per rank (default: physical cores / ranks on this machine)")
    ap.add_argument("--check-every", type=int, default=50, metavar="N",
                    help="on several ranks: compare a hash of the parameters across ranks every N steps "
                         "(default 50; also before every checkpoint)")
    ap.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: forward, backward and optimizer on the GPU backend (an error when unavailable)")
    ap.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    ap.add_argument("--no-estimate", action="store_true", help="skip the trial step before training")
    ap.add_argument("overrides", nargs="*", metavar="key=value")
    return ap


def main(argv: list[str] | None = None, prog: str = "python -m bitttt.train") -> int:
    try:
        argv = normalize_argv(list(sys.argv[1:] if argv is None else argv))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = build_parser(prog).parse_intermixed_args(argv)  # key=value before and after options
    progress = False if args.no_progress else None
    w: World | None = None
    if args.resume and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.insert(0, args.resume)  # `--resume key=value`: the run comes from the config
        args.resume = ""
    try:
        w = world()
        say = (lambda *a, **k: print(*a, **k)) if w.is_main else (lambda *a, **k: None)
        gpu, why = cuda_backend.for_device(args.device)
        if why:  # before anything is written
            raise ValueError(f"--device cuda: {why}")
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
            if args.print_config:
                from .formats import latest_checkpoint, load_checkpoint

                path = run if os.path.isfile(run) else latest_checkpoint(run)
                cfg = TrainConfig.from_dict(load_checkpoint(path).train)
                bad = sorted(set(ov) - RESUME_OVERRIDES)
                if bad:
                    raise ValueError(f"cannot change {', '.join(bad)} when resuming (it would change the run); "
                                     f"allowed: {', '.join(sorted(RESUME_OVERRIDES))}")
                if ov:
                    cfg = cfg.with_overrides(ov)
                say(json.dumps(cfg.to_dict(), indent=2))
                return 0
            trainer = Trainer.resume(run, ov, progress=progress, world=w, check_every=args.check_every)
            say(f"resuming {trainer.run_dir} at step {trainer.step}", file=sys.stderr)
        else:
            cfg = TrainConfig.from_json(args.config) if args.config else TrainConfig()
            cfg = cfg.with_overrides(ov)
            if args.print_config:
                say(json.dumps(cfg.to_dict(), indent=2))
                return 0
            run_dir = os.path.join(cfg.out_dir, cfg.name)
            ck = os.path.join(run_dir, "checkpoints")
            if os.path.isdir(ck) and any(p.endswith(".safetensors") for p in os.listdir(ck)):
                raise ValueError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                                 f"or pick another name=...")
            trainer = Trainer(cfg, progress=progress, world=w, check_every=args.check_every)
        if not args.no_estimate and w.is_main:
            print_estimate(trainer)
        if w.size > 1:
            c = trainer.cfg
            say(f"data parallel: {w.size} ranks ({w.local_size} on this machine), {get_num_threads()} thread(s) "
                f"each; a step learns from {c.batch_size} x {c.grad_accum} x {w.size} = "
                f"{c.batch_size * c.grad_accum * w.size} sequences of {c.seq_len} tokens", file=sys.stderr)
        if gpu is not None:
            gpu.adopt(trainer.model, trainer.opt)
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
