"""Prepared token folders of a project (`data/NAME/`, made by `bitttt.data.prepare` with one of the
project's tokenizers), prepared in a background job whose progress the page shows."""
from __future__ import annotations

import glob
import math
import os

from ..data import DataError, prepare
from .jobs import Job, Jobs
from .projects import Project, StudioError, check_name


def _progress(tmp_glob: str, itemsize: int, total_bytes: int, bytes_per_token: float) -> float | None:
    """How far prepare is, from the tokens it has written into its temporary folder so far."""
    done = 0
    for d in glob.glob(tmp_glob):
        for f in ("train.bin", "val.bin"):
            try:
                done += os.path.getsize(os.path.join(d, f))
            except OSError:
                pass
    if total_bytes <= 0:
        return None
    return min(0.99, done / itemsize * bytes_per_token / total_bytes)


def start_prepare(project: Project, jobs: Jobs, name: object, files: object, tokenizer: object,
                  val_fraction: object = 0.05, seed: object = 0) -> Job:
    """Check everything, then prepare raw `files` into data/`name` with `tokenizer` in a job."""
    from .tokenizers import load_stats

    name = check_name(name, "dataset name")
    out = project.dataset_path(name, must_exist=False)
    if os.path.exists(out):
        raise StudioError(f"dataset {name!r} already exists in project {project.name}: pick another name", 409)
    if jobs.busy(project.name, "prepare:" + name):
        raise StudioError(f"dataset {name!r} is being prepared already", 409)
    if not isinstance(files, list) or not files:
        raise StudioError("choose at least one text file to prepare")
    paths = [project.raw_path(f) for f in files]
    if not isinstance(tokenizer, str):
        raise StudioError("choose a tokenizer (train one first)")
    tok_path = project.tokenizer_path(tokenizer)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not math.isfinite(val_fraction) \
            or not 0 < val_fraction < 1:
        raise StudioError(f"validation fraction must be a number between 0 and 1 (exclusive), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise StudioError(f"seed must be an integer >= 0, got {seed!r}")
    stats = load_stats(project, tokenizer)
    total = sum(os.path.getsize(p) for p in paths)
    bpt = float(stats.get("bytes_per_token") or 3.0)
    itemsize = 2 if int(stats.get("vocab_size", 0)) <= 65536 else 4

    def work(job: Job) -> dict:
        import threading

        done = threading.Event()

        def watch():
            while not done.wait(0.2):
                p = _progress(out + ".tmp-*", itemsize, total, bpt)
                if p is not None:
                    job.progress = p
        job.message = f"tokenizing {total:,} bytes with {tokenizer}"
        w = threading.Thread(target=watch, daemon=True)
        w.start()
        try:
            m = prepare(paths, out, tokenizer=tok_path, val_fraction=float(val_fraction), seed=seed, progress=False)
        except DataError as e:
            raise StudioError(str(e)) from None
        finally:
            done.set()
        sp = m["splits"]
        job.message = (f"{name}: {sp['train']['tokens']:,} training tokens, {sp['val']['tokens']:,} validation tokens")
        return {"name": name, "train_tokens": sp["train"]["tokens"], "val_tokens": sp["val"]["tokens"],
                "vocab_size": m["tokenizer"]["vocab_size"]}

    return jobs.submit("prepare:" + name, project.name, work)
