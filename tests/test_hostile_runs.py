"""Runs and files are never clobbered (issue 21): the Trainer API refuses an existing run, a run
directory and a memory file are locked while a process uses them, export never writes over its
source or a training checkpoint, stale temp files are kept while a lock holds them, and the log of
a resumed run has no repeated steps."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_files import prepared_corpus, train_config  # noqa: E402

import bitttt
from bitttt import locks
from bitttt.formats import export_checkpoint, read_model_file
from bitttt.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
SHIPPED = Path(bitttt.__file__).parent / "models" / "tinystories-ternary.safetensors"
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(prepared, tmp_path, **kw):
    return train_config(prepared, tmp_path, kw.pop("max_steps", 4), **kw)


def _holder(path: str, what: str) -> subprocess.Popen:
    """Another process that takes the lock of `path` and keeps it until killed."""
    code = (f"import sys, time; from bitttt import locks; locks.hold_for_process({path!r}, {what!r}); "
            "print('locked', flush=True); time.sleep(120)")
    p = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_trainer_api_refuses_an_existing_run(prepared, tmp_path):
    Trainer(_cfg(prepared, tmp_path), progress=False).fit()
    run = tmp_path / "run"
    before = _files(run)
    with pytest.raises(ValueError, match="already holds a run.*resume"):
        Trainer(_cfg(prepared, tmp_path, seed=2), progress=False)
    assert _files(run) == before  # best.safetensors and every other file untouched


def test_two_trainers_on_one_run_directory(prepared, tmp_path):
    tr = Trainer(_cfg(prepared, tmp_path, max_steps=2), progress=False)
    tr.fit()
    run = tmp_path / "run"
    stale = run / "checkpoints" / ".tmp-abc.part"  # the in-progress write of the other trainer
    stale.write_bytes(b"half a checkpoint")
    other = _holder(str(run), "run directory")
    try:
        before = _files(run)
        b = Trainer.resume(str(run), {"max_steps": 4}, progress=False)
        with pytest.raises(locks.LockedError, match=f"run directory is in use by pid {other.pid}"):
            b.fit()
        assert _files(run) == before and stale.exists()  # nothing touched, the other's temp file kept
    finally:
        other.kill()
        other.wait()
    b.fit()  # the lock went with the process
    assert not stale.exists() and b.step == 4


def test_two_trainer_processes(prepared, tmp_path):
    """Two CLI trainers resuming one run: the second is refused in one line (exit 2) and leaves the
    first's in-progress checkpoint alone; the first completes with every checkpoint intact."""
    Trainer(_cfg(prepared, tmp_path, max_steps=2), progress=False).fit()
    run = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "bitttt.train", "--no-progress", "--resume", str(run),
                              "max_steps=4"], env=dict(ENV, BITTTT_TEST_CKPT_PAUSE="3"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob(".tmp-*.part")) and time.time() < deadline:
        time.sleep(0.05)  # the first trainer is writing a checkpoint (paused half way)
    second = subprocess.run([sys.executable, "-m", "bitttt.train", "--no-progress", "--resume", str(run)],
                            env=ENV, capture_output=True, text=True, timeout=120)
    assert list((run / "checkpoints").glob(".tmp-*.part"))  # still there: the first is writing it
    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert second.returncode == 2, second.stderr
    assert f"in use by pid {first.pid}" in second.stderr.strip().splitlines()[-1] and "Traceback" not in second.stderr
    from bitttt.formats import load_checkpoint

    assert load_checkpoint(run / "checkpoints" / "step_0000004.safetensors").state["step"] == 4
    steps = [r["step"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2, 3, 4]


def test_log_continues_without_repeated_steps_after_a_resume(prepared, tmp_path):
    tr = Trainer(_cfg(prepared, tmp_path, max_steps=4), progress=False)
    tr.fit()
    log = tmp_path / "run" / "log.jsonl"
    with open(log, "a") as f:  # what a run killed after step 4's checkpoint left: steps 5 and 6, logged
        for s in (5, 6):
            f.write(json.dumps({"step": s, "loss": 1.0}) + "\n")
    b = Trainer.resume(str(tmp_path / "run"), {"max_steps": 8}, progress=False)
    b.fit()
    recs = [json.loads(x) for x in log.read_text().splitlines()]
    train_steps = [r["step"] for r in recs if "loss" in r]
    assert train_steps == list(range(1, 9))
    assert not [r for r in recs if r.get("loss") == 1.0]


def test_export_never_overwrites_its_source_or_a_checkpoint(prepared, tmp_path):
    Trainer(_cfg(prepared, tmp_path), progress=False).fit()
    run = tmp_path / "run"
    before = _files(run)
    for out in (run / "checkpoints" / "best.safetensors", run / "checkpoints" / "step_0000004.safetensors",
                run / "checkpoints" / "step_0000099.safetensors"):
        with pytest.raises(ValueError, match="choose another --out"):
            export_checkpoint(run, out)
    elsewhere = tmp_path / "copy.safetensors"
    elsewhere.write_bytes((run / "checkpoints" / "best.safetensors").read_bytes())
    with pytest.raises(ValueError, match="training checkpoint"):
        export_checkpoint(run, elsewhere)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(ValueError, match="not a bitttt model file"):
        export_checkpoint(run, notes)
    assert notes.read_text() == "mine" and _files(run) == before
    r = subprocess.run([sys.executable, "-m", "bitttt.export", str(run), "--out",
                        str(run / "checkpoints" / "best.safetensors")], env=ENV, capture_output=True, text=True)
    assert r.returncode == 2 and "choose another --out" in r.stderr and _files(run) == before
    # a directory as out; a model file may be replaced by a new export
    out_dir = tmp_path / "models"
    out_dir.mkdir()
    meta = export_checkpoint(run, out_dir)
    assert meta["path"] == str(out_dir / "run.safetensors")
    read_model_file(out_dir / "run.safetensors")
    export_checkpoint(run, out_dir / "run.safetensors", head="float16")
    assert read_model_file(out_dir / "run.safetensors").metadata["head"] == "float16"


def test_two_memory_writers(tmp_path, monkeypatch):
    from bitttt.formats import memory as memory_format
    from bitttt.generation import load

    m = load(str(SHIPPED))
    s = m.session()
    s.feed("Tom had a red ball.")
    mem = tmp_path / "tom.mem"
    s.save_memory(str(mem))
    before = mem.read_bytes()
    other = _holder(str(mem), "memory file")
    try:
        monkeypatch.setattr(memory_format, "WRITE_WAIT", 0.3)
        s.feed(" He lost it.")
        t = time.perf_counter()
        with pytest.raises(locks.LockedError, match=f"memory file is in use by pid {other.pid}"):
            s.save_memory(str(mem))
        assert time.perf_counter() - t >= 0.3  # it waited briefly
        assert mem.read_bytes() == before
        r = subprocess.run([sys.executable, "-m", "bitttt.infer", "-m", str(SHIPPED), "-p", "Tom", "-n", "2",
                            "--memory", str(mem)], env=ENV, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and "in use by pid" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and mem.read_bytes() == before
    finally:
        other.kill()
        other.wait()
    s.save_memory(str(mem))  # the lock went with the other process
    assert mem.read_bytes() != before


_FEED = r"""
import resource, sys
import numpy as np
import bitttt.session as S
from bitttt.generation import load
S.FEED_CHUNK = int(sys.argv[2])
m = load(sys.argv[1])
s = m.session()
rng = np.random.default_rng(0)
s.feed_ids(rng.integers(0, m.config.vocab_size, 600).tolist())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ids = rng.integers(0, m.config.vocab_size, 100_000).tolist()
s.feed_ids(ids)
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, s.state.n_tokens)
"""


def _feed_peak(chunk: int) -> tuple[int, int]:
    r = subprocess.run([sys.executable, "-c", _FEED, str(SHIPPED), str(chunk)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    base, peak, n = map(int, r.stdout.split())
    assert n == 100_600
    return base, peak


def test_a_100k_token_prompt_in_constant_memory():
    """One feed of 100,000 tokens (Session.feed_ids -> InferenceModel.feed) raises the peak RSS
    (ru_maxrss, in a fresh process) by less than 40 MiB over a 600-token feed; the input list of
    ids itself is about 4 MiB."""
    base, peak = _feed_peak(512)
    assert (peak - base) * 1024 < 40 * 2**20, (base, peak)


@pytest.mark.parametrize("change,match", [({"model": {"num_heads": 3}}, "divisible"),
                                          ({"batch_size": 10**9}, "GiB to train"),
                                          ({"model": {"hidden_size": 2**16, "num_heads": 256}}, "GiB to train")])
def test_bad_values_are_refused_before_any_data_preparation(tmp_path, change, match):
    corpus = tmp_path / "c.txt"
    corpus.write_text("Tom saw a ball. " * 2000)
    cfg = TrainConfig(out_dir=str(tmp_path / "runs"), corpus=[str(corpus)], **change)
    t = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        Trainer(cfg, progress=False)
    assert time.perf_counter() - t < 2 and not (tmp_path / "runs").exists()
