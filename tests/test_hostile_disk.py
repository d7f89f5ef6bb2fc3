"""Expected failures of the commands are one line on stderr and exit code 2, with every file
written before intact: a full disk (a small tmpfs) and a read-only file system.  Needs permission
to mount a tmpfs (root); skipped otherwise."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hostile_files import prepared_corpus, train_config  # noqa: E402

from bitttt.formats import load_checkpoint
from bitttt.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _mount(where: Path, size: str, *opts: str) -> None:
    where.mkdir(parents=True, exist_ok=True)
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root on Linux")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join((f"size={size}", *opts)), "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()})")


@pytest.fixture
def mounts():
    done = []

    def mount(where: Path, size: str = "4m", *opts: str) -> Path:
        _mount(where, size, *opts)
        done.append(where)
        return where
    yield mount
    for w in reversed(done):
        subprocess.run(["umount", "-l", str(w)], capture_output=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("corpus"))


def _cfg(prepared, out_dir, **kw):
    return train_config(prepared, out_dir, kw.pop("max_steps", 2), **kw)


def _run(module, *args, stdin=None, env=None):
    return subprocess.run([sys.executable, "-m", module, *args], env=env or ENV, capture_output=True, text=True,
                          input=stdin, timeout=300)


def _one_line_error(r, what):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and what in last, r.stderr


def test_full_disk_during_training(prepared, tmp_path, mounts):
    disk = mounts(tmp_path / "disk", "1200k")
    cfg = _cfg(prepared, disk, max_steps=20, keep_last=20)
    (tmp_path / "c.json").write_text(__import__("json").dumps(cfg.to_dict()))
    r = _run("bitttt.train", "--no-progress", "--config", str(tmp_path / "c.json"))
    _one_line_error(r, "no space left")
    ck = sorted((disk / "run" / "checkpoints").glob("*.safetensors"))
    assert ck, "the disk filled before the first checkpoint: make the tmpfs larger"
    for p in ck:
        load_checkpoint(p)  # every checkpoint written before is intact
    assert not list((disk / "run" / "checkpoints").glob(".tmp-*"))  # no half-written file left


def test_full_disk_during_export_and_memory_save(prepared, tmp_path, mounts):
    Trainer(_cfg(prepared, tmp_path), progress=False).fit()
    disk = mounts(tmp_path / "disk", "64k")
    r = _run("bitttt.export", str(tmp_path / "run"), "--out", str(disk / "m.safetensors"))
    _one_line_error(r, "no space left")
    assert not os.listdir(disk)


def test_read_only_file_system(prepared, tmp_path, mounts):
    Trainer(_cfg(prepared, tmp_path), progress=False).fit()
    ro = mounts(tmp_path / "ro", "8m")
    shutil.copytree(tmp_path / "run", ro / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    run = ro / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    _one_line_error(_run("bitttt.train", "--no-progress", "--resume", str(run), "max_steps=4"), "read-only")
    _one_line_error(_run("bitttt.export", str(run), "--out", str(ro / "m.safetensors")), "read-only")
    _one_line_error(_run("bitttt.infer", "-m", str(run), "-p", "Tom", "-n", "2", "--memory", str(ro / "m.mem")),
                    "read-only")
    # the chat works without a writable run folder: its log and memory go to the user's data folder
    data_home = tmp_path / "xdg"
    r = _run("bitttt.infer", "-m", str(run), "-i", "-n", "3", stdin="Tom saw a ball\n/quit\n",
             env=dict(ENV, XDG_DATA_HOME=str(data_home)))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert (data_home / "bitttt" / "memory" / "conversations.jsonl").exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    # and when no folder at all can be written, the chat goes on without a log (a warning) and
    # ends saying in one line that its memory could not be written
    r = _run("bitttt.infer", "-m", str(run), "-i", "-n", "3", stdin="Tom saw a ball\n/quit\n",
             env=dict(ENV, XDG_DATA_HOME=str(ro / "nowhere")))
    assert "warning: the conversation is not logged" in r.stderr
    _one_line_error(r, "read-only")


@pytest.mark.parametrize("cmd", [["bitttt.infer", "-f"], ["bitttt.eval", "--data"]])
@pytest.mark.parametrize("path", ["/dev/zero", "."])
def test_prompt_or_data_that_is_not_a_regular_file(cmd, path):
    shipped = Path(__file__).resolve().parents[1] / "bitttt" / "models" / "tinystories-ternary.safetensors"
    r = _run(cmd[0], "-m", str(shipped), cmd[1], path, *(["-n", "1"] if cmd[0] == "bitttt.infer" else []))
    _one_line_error(r, "not a regular file" if path == "/dev/zero" else "folder")  # a folder: said what it is
