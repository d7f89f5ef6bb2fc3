"""The trainer: Python API, CLI, resume bit-identity across a SIGKILL, clean stops, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bitttt.formats import load_checkpoint, read_safetensors
from bitttt.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "mini_batch_size": 8}


def _text(n_docs=400, seed=0):
    rng = np.random.default_rng(seed)
    names = ["Tom", "Anna", "Ben", "Lily", "Max", "Sue"]
    things = ["ball", "cat", "tree", "cake", "boat", "kite", "dog"]
    verbs = ["saw", "liked", "found", "lost", "made", "wanted"]
    docs = []
    for _ in range(n_docs):
        s = []
        for _ in range(rng.integers(3, 7)):
            s.append(f"{rng.choice(names)} {rng.choice(verbs)} a {rng.choice(things)}.")
        docs.append(" ".join(s) + " The end.")
    return "\n<|endoftext|>\n".join(docs)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from bitttt.data import prepare

    d = tmp_path_factory.mktemp("corpus")
    (d / "stories.txt").write_text(_text())
    prepare([str(d / "stories.txt")], str(d / "data"), vocab_size=300, val_fraction=0.1, seed=0, progress=False)
    return str(d / "data")


def _cfg(prepared, tmp_path, **kw):
    base = dict(data=prepared, out_dir=str(tmp_path), name="run", model=dict(TINY), batch_size=4, seq_len=32,
                max_steps=40, max_time=0.0, warmup_steps=5, lr=3e-3, min_lr=3e-4, eval_interval=20,
                eval_batches=2, ckpt_interval=20, log_interval=5, seed=1, sample_tokens=0)
    base.update(kw)
    return TrainConfig(**base)


def _cli(args, cwd, timeout=240, **popen):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "bitttt.train", "--no-progress", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _state_of(path):
    t, meta = read_safetensors(path)
    return t, json.loads(meta["state"])


def test_default_config_file_matches_builtin_defaults():
    with open(REPO / "data" / "sample_config" / "config.json") as f:
        assert json.load(f) == TrainConfig().to_dict()


def test_api_learns_and_evaluates(prepared, tmp_path):
    tr = Trainer(_cfg(prepared, tmp_path), progress=False)
    ev0 = tr.evaluate()
    losses = [tr.train_step() for _ in range(30)]
    ev1 = tr.evaluate()
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5
    assert ev1["val_loss"] < ev0["val_loss"] - 0.5
    assert ev1["val_ppl"] == pytest.approx(np.exp(ev1["val_loss"]))
    assert 0 < ev1["val_bpb"] < ev0["val_bpb"]
    x, y, m = tr.batches.next()
    assert x.shape == (4, 32) and np.array_equal(x[:, 1:], y[:, :-1])
    loss = tr.train_step((x, y))
    assert np.isfinite(loss) and tr.step == 31


def test_save_and_resume_in_process(prepared, tmp_path):
    cfg = _cfg(prepared, tmp_path)
    a = Trainer(cfg, progress=False)
    for _ in range(6):
        a.train_step()
    path = a.save()
    assert os.path.basename(path) == "step_0000006.safetensors"
    b = Trainer.resume(a.run_dir, progress=False)
    assert b.step == 6 and b.batches.state() == a.batches.state()
    for _ in range(4):
        la, lb = a.train_step(), b.train_step()
        assert la == lb
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k])
        assert np.array_equal(a.opt.m[k], b.opt.m[k]) and np.array_equal(a.opt.v[k], b.opt.v[k])


def test_resume_after_sigkill_is_bit_identical(prepared, tmp_path):
    """40 steps straight == 20 steps, SIGKILL, --resume for 20 more: same weights and moments."""
    common = [f"data={prepared}", "max_steps=40", "ckpt_interval=20", "eval_interval=20", "eval_batches=2",
              "batch_size=8", "seq_len=64", "log_interval=1", "max_time=0", "sample_tokens=0", "seed=3",
              "model.hidden_size=64", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=128",
              "model.mini_batch_size=16", "warmup_steps=5", f"out_dir={tmp_path}"]
    p = _cli(common + ["name=straight"], tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    straight = tmp_path / "straight" / "checkpoints" / "step_0000040.safetensors"

    p = _cli(common + ["name=killed"], tmp_path)
    ck20 = tmp_path / "killed" / "checkpoints" / "step_0000020.safetensors"
    deadline = time.time() + 240
    while not ck20.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    assert ck20.exists(), "the run never wrote its step-20 checkpoint"
    assert not (tmp_path / "killed" / "checkpoints" / "step_0000040.safetensors").exists(), \
        "the run finished before the kill: the test would prove nothing"
    p = _cli(["--resume", str(tmp_path / "killed"), "--threads", "1"], tmp_path)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert "resuming" in err and "at step 20" in err
    ta, sa = _state_of(straight)
    tb, sb = _state_of(tmp_path / "killed" / "checkpoints" / "step_0000040.safetensors")
    assert set(ta) == set(tb) and any(k.startswith("optim.m.") for k in ta)
    for k in ta:
        assert np.array_equal(ta[k], tb[k]), k
    assert sa["data"] == sb["data"] and sa["optim_t"] == sb["optim_t"] == 40
    # the log of the resumed run continues where the checkpoint was
    steps = [json.loads(x)["step"] for x in open(tmp_path / "killed" / "log.jsonl") if '"loss"' in x]
    assert steps[-1] == 40


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "STOP"])
def test_clean_stop_saves_a_checkpoint(prepared, tmp_path, how):
    p = _cli([f"data={prepared}", f"out_dir={tmp_path}", "name=r", "max_steps=100000", "max_time=0",
              "batch_size=4", "seq_len=32", "log_interval=1", "eval_interval=100000", "ckpt_interval=100000",
              "sample_tokens=0", "warmup_steps=1", "model.hidden_size=32", "model.num_layers=1",
              "model.num_heads=2", "model.intermediate_size=64", "model.mini_batch_size=8"], tmp_path)
    log = tmp_path / "r" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if log.exists() and sum(1 for _ in open(log)) >= 3:
            break
        time.sleep(0.02)
    if how == "STOP":
        (tmp_path / "r" / "STOP").write_text("")
    else:
        p.send_signal(getattr(signal, how))
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    reason = {"STOP": "STOP file"}.get(how, how)
    assert f"stopped by {reason}" in out
    ck = sorted((tmp_path / "r" / "checkpoints").glob("step_*.safetensors"))
    assert len(ck) == 1
    c = load_checkpoint(ck[0])
    assert c.state["step"] >= 3 and ck[0].name == f"step_{c.state['step']:07d}.safetensors"
    assert not (tmp_path / "r" / "STOP").exists()


def test_keep_last_and_best(prepared, tmp_path):
    tr = Trainer(_cfg(prepared, tmp_path, max_steps=12, ckpt_interval=2, eval_interval=4, keep_last=2),
                 progress=False)
    s = tr.fit()
    names = sorted(os.listdir(tr.ckpt_dir))
    assert names == ["best.safetensors", "step_0000010.safetensors", "step_0000012.safetensors"]
    assert s["step"] == 12 and s["stopped_by"] == "max_steps"
    best = load_checkpoint(os.path.join(tr.ckpt_dir, "best.safetensors"))
    assert best.state["best_val"] == pytest.approx(s["best_val_loss"])
    recs = [json.loads(x) for x in open(os.path.join(tr.run_dir, "log.jsonl"))]
    assert [r["step"] for r in recs if "val_loss" in r] == [4, 8, 12]
    assert all("rss_mb" in r and "tokens_per_s" in r for r in recs if "loss" in r)


def test_damaged_latest_checkpoint_falls_back(prepared, tmp_path, capsys):
    tr = Trainer(_cfg(prepared, tmp_path, max_steps=4, ckpt_interval=2, eval_interval=100), progress=False)
    tr.fit()
    newest = Path(tr.ckpt_dir) / "step_0000004.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    b = Trainer.resume(tr.run_dir, progress=False)
    assert b.step == 2
    err = capsys.readouterr().err
    assert "skipping damaged checkpoint" in err and "step_0000004" in err


def test_bad_inputs(prepared, tmp_path):
    def run(*args):
        p = _cli(list(args), tmp_path)
        out, err = p.communicate(timeout=120)
        return p.returncode, err

    rc, err = run(f"data={prepared}", "bogus_key=1")
    assert rc == 2 and "unknown training config key(s): bogus_key" in err
    rc, err = run(f"data={prepared}", "model.bogus=1")
    assert rc == 2 and "unknown model config key(s): bogus" in err
    rc, err = run(f"data={prepared}", "lr=-1")
    assert rc == 2 and "train.lr must be > 0" in err
    rc, err = run(f"data={prepared}", "model.hidden_size=30", "model.num_heads=4")
    assert rc == 2 and "divisible" in err
    rc, err = run(f"data={tmp_path / 'nowhere'}")
    assert rc == 2 and "nowhere" in err
    rc, err = run("--config", str(tmp_path / "missing.json"))
    assert rc == 2 and "no such config file" in err
    (tmp_path / "bad.json").write_text("{not json")
    rc, err = run("--config", str(tmp_path / "bad.json"))
    assert rc == 2 and "not valid JSON" in err
    rc, err = run("--resume", str(tmp_path / "norun"))
    assert rc == 2 and "no such run directory" in err
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_model_changes(prepared, tmp_path):
    tr = Trainer(_cfg(prepared, tmp_path, max_steps=2, ckpt_interval=2, eval_interval=100), progress=False)
    tr.fit()
    with pytest.raises(ValueError, match="cannot change model.hidden_size when resuming"):
        Trainer.resume(tr.run_dir, {"model.hidden_size": 64})
    # a fresh run into an existing run dir is refused by the CLI
    p = _cli([f"data={prepared}", f"out_dir={tmp_path}", "name=run"], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "already holds a run" in err


def test_tokenizer_mismatch_is_refused(prepared, tmp_path):
    from bitttt.data import prepare

    (tmp_path / "other.txt").write_text(_text(200, seed=5).replace("a", "o"))
    other = tmp_path / "other"
    prepare([str(tmp_path / "other.txt")], str(other), vocab_size=295, val_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match="tokenizer"):
        Trainer(_cfg(prepared, tmp_path, val_data=str(other)), progress=False)
