"""The README's commands run as written: every ```bash and ```python block, in order, in a fresh
folder holding what a clone gives them (README.md and bitttt/models/MODEL_CARD.md), with `bitttt`
on the PATH.  Blocks marked `<!-- readme-test: skip (why) -->` (installing, downloading, an
interactive chat) are left out, and there must be few of them.  One change keeps the suite fast:
training commands run 3 steps (their max_steps is replaced, or added; a resumed run 3 more) and
evaluate on 2 batches."""
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:[ \t]*<!-- readme-test: skip \(([^)]*)\) -->\n)?[ \t]*```(bash|python)\n(.*?)```", re.S)


def blocks():
    """(kind, code, skip reason or None) of every bash/python block of README.md, in order."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(m.group(2), m.group(3), m.group(1)) for m in BLOCK.finditer(text)]


def shorten(line: str) -> str:
    """A training command with max_steps=3 (a resume: 3 more than the run holds: 6)."""
    if not re.match(r"\s*bitttt train\b", line) or "--help" in line or "--print-config" in line:
        return line
    n = "6" if "--resume" in line else "3"
    line = line.split("#")[0].rstrip() + " eval_batches=2"
    if re.search(r"(--)?max_steps=\d+", line):
        return re.sub(r"(--)?max_steps=\d+", f"max_steps={n}", line)
    return line + f" max_steps={n}"


def commands(code: str) -> list[str]:
    out = []
    for line in code.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        out.append(shorten(line))
    return out


def test_readme_blocks_are_skipped_only_for_a_reason():
    """A block is left out only when it installs, downloads, starts a server, needs a cluster or a
    person at the keyboard, or is a benchmark: everything else runs."""
    bl = blocks()
    skipped = [b[2] for b in bl if b[2]]
    assert len(bl) - len(skipped) >= 9
    kinds = ("install", "download", "server", "cluster", "interactive", "benchmark")
    for why in skipped:
        assert any(k in why for k in kinds), f"skipped for an unlisted reason: {why!r}"


@pytest.mark.skipif(sys.platform == "win32", reason="the README's shell is bash")
def test_readme_commands_run_as_written(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    work = tmp_path / "clone"
    (work / "bitttt" / "models").mkdir(parents=True)
    shutil.copy(REPO / "README.md", work / "README.md")
    shutil.copy(REPO / "bitttt" / "models" / "MODEL_CARD.md", work / "bitttt" / "models" / "MODEL_CARD.md")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    shim = bindir / "bitttt"  # the console script pip installs, pointing at this checkout
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m bitttt "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", BITTTT_NUM_THREADS="2",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), HOME=str(tmp_path),
               XDG_DATA_HOME=str(tmp_path / "share"))
    ran = 0
    for kind, code, skip in blocks():
        if skip:
            continue
        if kind == "bash":
            for cmd in commands(code):
                r = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=work, env=env, capture_output=True,
                                   text=True, timeout=300)
                assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
                assert "Traceback" not in r.stderr, cmd
                ran += 1
        else:
            r = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                               timeout=300)
            assert r.returncode == 0, f"{code}\n{r.stderr[-3000:]}"
            ran += 1
    assert ran >= 15
    assert (work / "runs" / "default" / "checkpoints" / "best.safetensors").exists()
    assert (work / "runs" / "readme" / "model.safetensors").exists()
