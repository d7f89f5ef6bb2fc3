"""Checkpoint files: round trip, corruption, truncation, config mismatch, crash mid-write."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig
from bitttt.formats import CheckpointError, load_checkpoint, read_safetensors, save_checkpoint
from bitttt.optim import AdamW

CFG = BitLlamaConfig(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48,
                     mini_batch_size=4)


def _save(path, cfg=CFG, step=7):
    model = BitLlama(cfg)
    model.init_weights(3)
    opt = AdamW(model.params)
    rng = np.random.default_rng(0)
    opt.step({k: rng.normal(size=v.shape).astype(np.float32) for k, v in model.params.items()}, 1e-3)
    save_checkpoint(path, params=model.params, optim=opt.state_tensors(), config=cfg, train={"lr": 1e-3},
                    state={"step": step, "optim_t": opt.t}, tokenizer=b"\x00tok\xff")
    return model, opt


def test_round_trip(tmp_path):
    p = tmp_path / "c.safetensors"
    model, opt = _save(p)
    ck = load_checkpoint(p, CFG)
    assert ck.config == CFG and ck.state == {"step": 7, "optim_t": 1} and ck.train == {"lr": 1e-3}
    assert ck.tokenizer == b"\x00tok\xff"
    for k, v in model.params.items():
        assert ck.params[k].dtype == np.float32 and np.array_equal(ck.params[k], v)
        assert np.array_equal(ck.optim["optim.m." + k], opt.m[k])
        assert np.array_equal(ck.optim["optim.v." + k], opt.v[k])
    # it is a standard safetensors file
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(str(p))["embed.weight"], model.params["embed.weight"])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".part")]


def test_truncated_and_corrupted(tmp_path):
    p = tmp_path / "c.safetensors"
    _save(p)
    raw = p.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="t.safetensors.*truncated"):
        load_checkpoint(tmp_path / "t.safetensors")
    bad = bytearray(raw)
    bad[-100] ^= 0xFF
    (tmp_path / "x.safetensors").write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="x.safetensors.*corrupted"):
        load_checkpoint(tmp_path / "x.safetensors")
    (tmp_path / "e.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="e.safetensors.*too short"):
        load_checkpoint(tmp_path / "e.safetensors")
    (tmp_path / "j.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="j.safetensors.*header"):
        load_checkpoint(tmp_path / "j.safetensors")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_config_mismatch(tmp_path):
    p = tmp_path / "c.safetensors"
    _save(p)
    other = BitLlamaConfig(**{**CFG.to_dict(), "hidden_size": 64})
    with pytest.raises(CheckpointError, match="hidden_size: checkpoint 32 vs 64"):
        load_checkpoint(p, other)


def test_foreign_file(tmp_path):
    from bitttt.formats import write_safetensors

    p = tmp_path / "f.safetensors"
    write_safetensors(p, {"a": np.zeros(3, np.float32)}, {"format": "other"})
    with pytest.raises(CheckpointError, match="not a bitttt training checkpoint"):
        load_checkpoint(p)
    t, meta = read_safetensors(p)
    assert np.array_equal(t["a"], np.zeros(3, np.float32)) and meta["format"] == "other"


def test_sigkill_mid_write_keeps_previous(tmp_path):
    """A writer killed half way through leaves the previous file intact and loadable."""
    p = tmp_path / "c.safetensors"
    _save(p, step=1)
    before = p.read_bytes()
    here = os.path.dirname(__file__)
    code = f"import sys; sys.path.insert(0, {here!r}); import test_checkpoint as t; t._save({str(p)!r}, step=2)"
    env = dict(os.environ, BITTTT_TEST_CKPT_PAUSE="30")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            parts = [f for f in os.listdir(tmp_path) if f.endswith(".part")]
            if parts and os.path.getsize(tmp_path / parts[0]) > 0:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the writer never started its temporary file")
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert p.read_bytes() == before
    assert load_checkpoint(p).state["step"] == 1
