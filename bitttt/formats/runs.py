"""Run directories: which checkpoint a path means.

A run directory holds checkpoints/step_NNNNNNN.safetensors (the last few) and
checkpoints/best.safetensors (lowest validation loss).  resolve() takes a file as is, and a run
directory to its best checkpoint, else to its newest step checkpoint that reads back intact
(damaged ones are skipped with a warning on stderr).
"""
from __future__ import annotations

import os
import re
import sys

from .checkpoint import load_checkpoint
from .errors import CheckpointError

_STEP = re.compile(r"step_(\d+)\.safetensors")


def checkpoint_step(path: str) -> int:
    """The step of a `step_NNNNNNN.safetensors` file name, -1 for any other name."""
    m = _STEP.fullmatch(os.path.basename(path))
    return int(m.group(1)) if m else -1


def step_checkpoints(run_dir: str) -> list[str]:
    """The paths of a run's step checkpoints, newest first ([] when it has none)."""
    cdir = os.path.join(run_dir, "checkpoints")
    names = os.listdir(cdir) if os.path.isdir(cdir) else []
    return [os.path.join(cdir, p) for p in sorted((p for p in names if checkpoint_step(p) >= 0),
                                                  key=checkpoint_step, reverse=True)]


def latest_checkpoint(run_dir: str) -> str:
    """The newest step checkpoint of a run that reads back intact (older ones are tried when
    the newest is damaged, with a warning).  CheckpointError when there is none."""
    if not os.path.isdir(run_dir):
        raise CheckpointError(f"{run_dir}: no such run directory")
    errors = []
    for path in step_checkpoints(run_dir):
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            print(f"warning: skipping damaged checkpoint: {e}", file=sys.stderr)
            continue
        return path
    raise CheckpointError(f"{run_dir}: no intact checkpoint to resume from"
                          + (f" ({'; '.join(errors)})" if errors else " (checkpoints/ is empty)"))


def resolve(path: str | os.PathLike) -> str:
    """A file as is; a run directory -> its checkpoints/best.safetensors, else its newest intact
    checkpoint.  FileNotFoundError when nothing is there; CheckpointError when no checkpoint is intact."""
    path = os.fspath(path)
    if os.path.isdir(path):
        best = os.path.join(path, "checkpoints", "best.safetensors")
        if os.path.isfile(best):
            return best
        return latest_checkpoint(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file or run directory")
    return path
