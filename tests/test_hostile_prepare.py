"""A killed `prepare` (issue 21, point 5): a prepare holds its output's lock, so a second prepare
of the same output is refused and leaves the first's temp folder alone; the `<out>.tmp-*` folder
of a SIGKILLed prepare is removed by the next prepare of that output."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bitttt import locks
from bitttt.data import TokenData, prepare
from bitttt.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
_WORDS = ["Tom", "Anna", "saw", "liked", "a", "ball", "cat", "tree", "The", "end."]


def _corpus(path: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(_WORDS, 12)) for _ in range(min(n, 2000))]
    path.write_text("\n<|endoftext|>\n".join(docs * (n // len(docs))), encoding="utf-8")
    return path


def _tmp_folders(parent: Path, out: str = "out") -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.name.startswith(out + ".tmp-"))


def test_a_killed_prepare_is_cleaned_up_by_the_next(tmp_path):
    small = _corpus(tmp_path / "small.txt", 300)
    tok = Tokenizer.train_from_iterator([small.read_text()], 300)
    tok.save(tmp_path / "tok.model")
    big = _corpus(tmp_path / "big.txt", 200_000)  # about 9 MB: seconds of tokenizing
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "bitttt.data", "prepare", str(big), "--out", str(out),
                              "--tokenizer", str(tmp_path / "tok.model"), "--no-progress"], env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not any((p / "tokenizer.model").exists() for p in _tmp_folders(tmp_path)):
            assert child.poll() is None, child.stderr.read()
            time.sleep(0.01)
        (running,) = _tmp_folders(tmp_path)
        assert locks.is_locked(out, beside=True)
        # a second prepare of the same output while the first works: refused, the first's folder untouched
        before = sorted(p.name for p in running.iterdir())
        with pytest.raises(locks.LockedError, match=f"this output folder is in use by pid {child.pid}"):
            prepare([str(small)], str(out), tokenizer=tok, progress=False)
        assert running.is_dir() and sorted(p.name for p in running.iterdir())[:len(before)] == before
        assert child.poll() is None  # still working
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    # what a SIGKILL leaves: the temp folder with its partial files, the output not there, no lock held
    assert _tmp_folders(tmp_path) == [running] and (running / "tokenizer.model").exists()
    assert not out.exists() and not locks.is_locked(out, beside=True)
    # the next prepare of that output removes it; another output's temp folder stays
    other = tmp_path / "other.tmp-abc123"
    other.mkdir()
    manifest = prepare([str(small)], str(out), tokenizer=tok, progress=False)
    assert _tmp_folders(tmp_path) == [] and other.is_dir()
    assert TokenData(str(out), "train").n_tokens == manifest["splits"]["train"]["tokens"] > 0
    assert ".lock" not in os.listdir(out)


def test_the_cli_refuses_a_second_prepare_in_one_line(tmp_path):
    small = _corpus(tmp_path / "small.txt", 300)
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from bitttt import locks; "
                               f"locks.hold_for_process({str(out)!r}, 'output folder', beside=True); "
                               "print('locked', flush=True); time.sleep(120)"], env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = subprocess.run([sys.executable, "-m", "bitttt.data", "prepare", str(small), "--out", str(out),
                            "--vocab-size", "300", "--no-progress"], env=ENV, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert r.stderr.strip() == (f"error: {out}: this output folder is in use by pid {holder.pid}: wait for it "
                                    "to finish, or use another one")
        assert not out.exists() and _tmp_folders(tmp_path) == []
    finally:
        holder.kill()
        holder.wait()
