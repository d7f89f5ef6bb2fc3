"""On a real GPU (pycuda and an NVIDIA device; skipped elsewhere): every kernel test of
test_cuda_emu.py again on the GPU against the cpu backend, a 20-step training run of
`python -m bitttt.train --device cuda` against the same run on the CPU (losses within 1e-3
relative), and the round trips: trained on the GPU, run on the CPU; trained on the CPU, resumed
on the GPU.  bench/gpu_check.sh runs this file."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bitttt.backend import cuda as cb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cuda_emu import *  # noqa: E402,F401,F403  (every kernel and model test, on this file's `dev`)
from test_cuda_emu import close  # noqa: E402

del test_divergent_barrier_is_reported_not_hung  # noqa: F821  (the emulation's own tests)
del test_train_cli_on_cuda_then_run_on_cpu  # noqa: F821  (this file runs the commands on the GPU itself)

GPU_OK, GPU_WHY = cb.available()
pytestmark = pytest.mark.skipif(not GPU_OK, reason=f"no GPU: {GPU_WHY}")


@pytest.fixture(scope="module")
def dev():
    d = cb.device()
    if getattr(d, "name", "") != "cuda":  # another test module installed the emulation: open the GPU
        d = cb.PyCudaDevice()
    old = cb.use_device(d)
    yield d
    cb.use_device(old)


def _run(*args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    r = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
    assert r.returncode == 0, f"{' '.join(args)}\n{r.stdout}\n{r.stderr}"
    return r


def _losses(run: Path) -> dict[int, float]:
    out = {}
    with open(run / "log.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            if "loss" in rec and "step" in rec:
                out[rec["step"]] = rec["loss"]
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu_train")
    rnd = random.Random(0)
    words = "the cat dog sat on a mat and ran to see big red ball sun was hot day night".split()
    text = "\n".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(5, 15))) + "." for _ in range(3000))
    (root / "corpus.txt").write_text(text)
    _run("bitttt.data", "prepare", "corpus.txt", "--vocab-size", "128", "--out", "data", "--no-progress", cwd=root)
    return root


TRAIN = ["name={name}", "data=data", "out_dir=runs", "max_steps={steps}", "max_time=0", "log_interval=1",
         "eval_interval=1000", "ckpt_interval=10", "warmup_steps=5", "batch_size=4", "seq_len=64", "sample_tokens=0",
         "model.hidden_size=128", "model.num_layers=2", "model.num_heads=4", "model.intermediate_size=256",
         "--no-progress"]


def _train(root, name, steps, *extra):
    _run("bitttt.train", *[a.format(name=name, steps=steps) for a in TRAIN], *extra, cwd=root)
    return _losses(root / "runs" / name)


def test_training_on_the_gpu_follows_the_cpu(data):
    cpu_l = _train(data, "cpu", 20)
    gpu_l = _train(data, "gpu", 20, "--device", "cuda")
    assert sorted(cpu_l) == sorted(gpu_l) and len(cpu_l) == 20
    for step in cpu_l:
        assert abs(gpu_l[step] - cpu_l[step]) <= 1e-3 * abs(cpu_l[step]), (step, gpu_l[step], cpu_l[step])


def test_trained_on_gpu_runs_on_cpu_and_back(data, dev):
    import bitttt

    run = data / "runs" / "gpu"
    if not run.exists():
        _train(data, "gpu", 20, "--device", "cuda")
    on_cpu = bitttt.load(run)
    on_gpu = bitttt.load(run)
    cb.adopt(on_gpu.im.model)
    ids = on_cpu.tokenizer.encode("the cat sat on a mat")
    mc, mg = on_cpu.im.model, on_gpu.im.model
    sc, sg = mc.new_state(), mg.new_state()
    close(mg.prefill(sg, ids), mc.prefill(sc, ids), 1e-3, 1e-3)
    for t in ids[:3]:
        close(mg.step(sg, t), mc.step(sc, t), 1e-3, 1e-3)
    # trained on the CPU, resumed on the GPU: the same losses as resuming on the CPU
    if not (data / "runs" / "cpu").exists():
        _train(data, "cpu", 20)
    _run("bitttt.train", "--resume", "runs/cpu", "max_steps=25", "--no-progress", cwd=data)
    cpu_l = _losses(data / "runs" / "cpu")
    os.rename(data / "runs" / "cpu", data / "runs" / "cpu_done")
    _train(data, "cpu", 20)  # the same 20 steps again, then resumed on the GPU
    _run("bitttt.train", "--resume", "runs/cpu", "max_steps=25", "--device", "cuda", "--no-progress", cwd=data)
    gpu_l = _losses(data / "runs" / "cpu")
    for step in range(21, 26):
        assert abs(gpu_l[step] - cpu_l[step]) <= 1e-3 * abs(cpu_l[step]), (step, gpu_l[step], cpu_l[step])
    assert np.isfinite(list(gpu_l.values())).all()


def test_decoder_replays_cuda_graphs(dev):
    """On a GPU the decode step is captured once per mini-batch position and replayed."""
    import warnings

    from bitttt import BitLlama

    cfg = tiny_config()  # noqa: F405
    host = BitLlama(cfg)
    host.init_weights(5)
    gpu = BitLlama.for_inference(cfg, host.state_dict(), backend="cuda")
    cpum = BitLlama.for_inference(cfg, host.state_dict(), backend="cpu")
    sg, sc = gpu.new_state(), cpum.new_state()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a capture failure warns: fail here instead
        for tok in range(1, 11):  # more than one mini-batch: every position captured, then replayed
            close(gpu.step(sg, tok), cpum.step(sc, tok), 1e-4, 1e-4)
    dec = gpu._fused_decoder()
    assert dec._use_graphs and sorted(dec._graphs) == list(range(cfg.mini_batch_size))
