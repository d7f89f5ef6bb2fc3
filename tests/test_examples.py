"""Each script in examples/ runs as its docstring says (with small settings) and does what it claims."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), BITTTT_NUM_THREADS="2")


def _run(script, *args, cwd):
    r = subprocess.run([sys.executable, str(REPO / "examples" / script), *map(str, args)], capture_output=True,
                       text=True, env=ENV, cwd=cwd, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_python_inference(tmp_path):
    r = _run("python_inference.py", "-n", "16", cwd=tmp_path)
    lines = r.stdout.splitlines()
    assert "5,907,320 parameters" in lines[0]
    assert "tokens/s" in r.stdout and "memory file" in r.stdout and "tokens read" in r.stdout
    assert len(r.stdout.split()) > 30


def test_chat_with_memory_continues_across_runs(tmp_path):
    r1 = _run("chat_with_memory.py", "-n", "8", "--memory", "me.mem", "Hello!", cwd=tmp_path)
    assert "[new memory" in r1.stdout and (tmp_path / "me.mem").exists()
    r2 = _run("chat_with_memory.py", "-n", "8", "--memory", "me.mem", "Again", cwd=tmp_path)
    import re

    before = int(re.search(r"memory me\.mem: (\d+) tokens read in earlier chats", r2.stdout).group(1))
    after = int(re.search(r"(\d+) tokens read in all", r2.stdout).group(1))
    assert before > 5 and after > before


def test_train_on_your_text(tmp_path):
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "red", "ball", "dog", "ran"]
    (tmp_path / "mine").mkdir()
    for i in range(3):
        docs = [" ".join(rng.choice(words, 30)) for _ in range(10)]
        (tmp_path / "mine" / f"{i}.txt").write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    r = _run("train_on_your_text.py", "mine", "--steps", "4", "--vocab-size", "280", "--seq-len", "32",
             "--batch-size", "2", cwd=tmp_path)
    assert "prepared runs/my_text-data" in r.stdout and "after 4 steps" in r.stdout
    assert (tmp_path / "runs" / "my_text" / "model.safetensors").exists()
    assert "bitttt chat -m runs/my_text/model.safetensors" in r.stdout
