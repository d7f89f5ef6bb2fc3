"""Data-parallel training (bitttt.dist, the trainer on several ranks).

The MPI tests launch real ranks on this machine with `mpiexec -n N python -m mpi4py ...` (the
mpich wheel's launcher) and skip without mpi4py or mpiexec.  The others run in this process."""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bitttt import dist
from bitttt.formats import latest_checkpoint, load_checkpoint, read_safetensors
from bitttt.runtime import physical_cores
from bitttt.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[1]
TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "mini_batch_size": 8}
# stream=False: the random-window recipe, the one a run on several ranks uses (streaming training, the
# default on one process, carries per-sequence TTT states that the ranks do not share yet)
BASE = dict(model=dict(TINY), batch_size=4, seq_len=32, max_time=0.0, warmup_steps=3, lr=3e-3, min_lr=3e-4,
            eval_batches=3, log_interval=1, seed=1, sample_tokens=0, stream=False)


def _mpiexec():
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return exe if os.path.exists(exe) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or _mpiexec() is None,
                               reason="needs mpi4py and mpiexec (pip install 'bitttt[mpi]')")


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("BITTTT_NUM_THREADS", "PMI_SIZE", "PMI_RANK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
    return env


def _args(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += [f"{k}.{kk}={json.dumps(vv)}" for kk, vv in v.items()]
        else:
            out.append(f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def _launch(n: int, argv: list[str], cwd, **popen) -> subprocess.Popen:
    cmd = [_mpiexec(), "-n", str(n), sys.executable, "-m", "mpi4py", *argv]
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def _run(cmd_proc: subprocess.Popen, timeout: float = 180) -> tuple[int, str, str]:
    try:
        out, err = cmd_proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(cmd_proc.pid, signal.SIGKILL)  # mpiexec and its ranks
        out, err = cmd_proc.communicate()
        raise AssertionError(f"timed out\n{out}\n{err}") from None
    return cmd_proc.returncode, out, err


def _docs(n=300, seed=0):
    rng = np.random.default_rng(seed)
    names, things = ["Tom", "Anna", "Ben", "Lily", "Max", "Sue"], ["ball", "cat", "tree", "cake", "boat", "kite"]
    verbs, adjs = ["saw", "liked", "found", "lost", "made", "wanted"], ["red", "big", "small", "happy", "old"]
    return [" ".join(f"{rng.choice(names)} {rng.choice(verbs)} a {rng.choice(adjs)} {rng.choice(things)}."
                     for _ in range(rng.integers(3, 7))) + " The end." for _ in range(n)]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two prepared folders: plain text, and instruction records (a loss mask that differs per batch)."""
    from bitttt.data import prepare

    d = tmp_path_factory.mktemp("mpi-corpus")
    (d / "s.txt").write_text("\n<|endoftext|>\n".join(_docs()))
    prepare([str(d / "s.txt")], str(d / "text"), vocab_size=300, val_fraction=0.1, seed=0, progress=False)
    rng = np.random.default_rng(1)
    with open(d / "chat.jsonl", "w") as f:
        for doc in _docs(300, seed=2):
            cut = int(rng.integers(1, max(2, len(doc) - 5)))
            f.write(json.dumps({"prompt": doc[:cut], "response": doc[cut:]}) + "\n")
    prepare([str(d / "chat.jsonl")], str(d / "chat"), vocab_size=300, val_fraction=0.1, seed=0, progress=False)
    return {"text": str(d / "text"), "chat": str(d / "chat")}


def _records(run_dir):
    """log.jsonl without the fields that measure time or memory."""
    drop = ("elapsed_s", "tokens_per_s", "wall_s", "train_tokens_per_s", "overall_tokens_per_s", "peak_rss_mb",
            "threads", "ranks", "reduce_s", "run_dir", "checkpoint")
    out = []
    for line in open(os.path.join(run_dir, "log.jsonl")):
        r = json.loads(line)
        r = r.get("summary", r)
        out.append({k: v for k, v in r.items() if k not in drop and not k.startswith(("ram", "rss", "cpu", "gpu"))})
    return out


def _same_file_tensors(a, b):
    ta, ma = read_safetensors(a)
    tb, mb = read_safetensors(b)
    assert sorted(ta) == sorted(tb)
    differ = [k for k in ta if ta[k].dtype != tb[k].dtype or not np.array_equal(ta[k], tb[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    return json.loads(ma["state"]), json.loads(mb["state"])


# -- in this process ------------------------------------------------------------------------

def test_flat_layout_packs_adds_and_views():
    rng = np.random.default_rng(0)
    t = {"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    lay = dist.FlatLayout(t)
    assert lay.size == 17 and lay.offsets == [0, 12, 17]
    flat = lay.pack(t)
    v = lay.views(flat)
    assert list(v) == ["a", "b"] and all(np.array_equal(v[k], t[k]) for k in t)
    lay.pack(t, flat, add=True)
    assert np.array_equal(v["a"], t["a"] + t["a"])  # views share the buffer
    with pytest.raises(ValueError, match="shape"):
        lay.pack({"a": t["a"].T, "b": t["b"]})
    with pytest.raises(ValueError, match="flat buffer"):
        lay.views(flat[:-1])


def test_one_process_world_is_the_left_fold():
    w = dist.World()
    assert (w.rank, w.size, w.is_main) == (0, 1, True)
    rng = np.random.default_rng(3)
    parts = [(rng.standard_normal(50) * 10.0 ** rng.integers(-8, 8, 50)).astype(np.float32) for _ in range(4)]
    want = parts[0].copy()
    for p in parts[1:]:
        want += p
    assert np.array_equal(w.ordered_sum(parts), want)
    w.check_same({"x": parts[0]})  # one rank always agrees with itself
    with pytest.raises(ValueError, match="flat"):
        w.ordered_sum([parts[0], parts[1][:3]])


def test_several_ranks_without_mpi4py_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "_WORLD", None)
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setitem(sys.modules, "mpi4py", None)  # import fails
    with pytest.raises(dist.DistributedError, match=r"one of 4 MPI ranks.*pip install 'bitttt\[mpi\]'"):
        dist.world()
    monkeypatch.delenv("PMI_SIZE")
    monkeypatch.delitem(sys.modules, "mpi4py")
    assert dist.world().size == 1


class _Ranks(dist.World):
    """A world of `size` ranks that is never asked to communicate (errors come first)."""

    def __init__(self, size):
        super().__init__()
        self.size = size


def test_resume_needs_a_world_size_that_divides_the_batch(corpora, tmp_path):
    tr = Trainer(TrainConfig(data=corpora["text"], out_dir=str(tmp_path), name="r", grad_accum=2, max_steps=10,
                             eval_interval=100, ckpt_interval=100, **BASE), progress=False)
    tr.train_step()
    path = tr.save()
    with pytest.raises(ValueError, match=r"2 micro-batches of 4 sequences, which 3 ranks cannot share evenly"):
        Trainer.resume(path, world=_Ranks(3))
    assert Trainer.resume(path).cfg.grad_accum == 2


def test_micro_batches_weigh_by_their_counted_tokens(corpora, tmp_path):
    """A step over masked micro-batches is the step over their concatenation: per-token mean loss and norm."""
    cfg = dict(data=corpora["chat"], out_dir=str(tmp_path), max_steps=10, eval_interval=100, ckpt_interval=100,
               **BASE)
    tr = Trainer(TrainConfig(name="a", grad_accum=2, **cfg), progress=False)
    mbs = [tr.batches.next() for _ in range(2)]
    tr.batches.load_state({"seed": BASE["seed"], "index": 0})
    counts = [float(m.sum()) for _, _, m in mbs]
    assert counts[0] != counts[1] and min(counts) > 0
    loss = tr.train_step()
    one = Trainer(TrainConfig(name="b", grad_accum=1, **cfg), progress=False)
    loss_cat = one.train_step(tuple(np.concatenate([mb[i] for mb in mbs]) for i in range(3)))
    assert abs(loss - loss_cat) < 1e-5 * abs(loss_cat)
    assert abs(tr.last_grad_norm - one.last_grad_norm) < 1e-4 * one.last_grad_norm
    # the plain mean of the micro-batch losses (same starting weights) is another number
    fresh = Trainer(TrainConfig(name="c", grad_accum=1, **cfg), progress=False)
    plain = np.mean([fresh.model.loss_and_grads(*mb)[0] for mb in mbs])
    assert abs(plain - loss_cat) > 1e-4


# -- on several ranks -----------------------------------------------------------------------

@needs_mpi
@pytest.mark.parametrize("kind", ["text", "chat"])
def test_two_ranks_are_one_process_with_double_accumulation(corpora, tmp_path, kind):
    cfg = dict(data=corpora[kind], out_dir=str(tmp_path), max_steps=10, eval_interval=5, ckpt_interval=5, **BASE)
    one = subprocess.run([sys.executable, "-m", "bitttt.train", "--no-progress", "--threads", "2",
                          *_args(dict(cfg, name="one", grad_accum=2))], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stderr
    rc, out, err = _run(_launch(2, ["-m", "bitttt.train", "--no-progress", *_args(dict(cfg, name="two"))],
                                tmp_path))
    assert rc == 0, err
    a, b = tmp_path / "one", tmp_path / "two"
    # the same losses, norms, learning rates, token counts and evaluations, each logged once (rank 0)
    ra, rb = _records(a), _records(b)
    assert ra == rb
    assert [r["step"] for r in rb if "loss" in r] == list(range(1, 11))
    assert len(re.findall(r"\bstep\s+3\b", err)) == 1 and out.count("stopped by") == 1
    assert "data parallel: 2 ranks" in err
    summary = json.loads(open(b / "log.jsonl").readlines()[-1])["summary"]
    assert summary["ranks"] == 2 and summary["threads"] == max(1, physical_cores() // 2)
    assert 0 < summary["reduce_s"] < summary["wall_s"]
    # bit-identical weights and optimizer moments in every checkpoint
    names = sorted(os.listdir(a / "checkpoints"))
    assert names == sorted(os.listdir(b / "checkpoints")) == ["best.safetensors", "step_0000005.safetensors",
                                                              "step_0000010.safetensors"]
    for n in names:
        sa, sb = _same_file_tensors(a / "checkpoints" / n, b / "checkpoints" / n)
        for k in ("step", "optim_t", "data", "tokens_seen", "best_val"):
            assert sa[k] == sb[k], k
        assert (sa["world_size"], sb["world_size"]) == (1, 2)


def _ranks_of(proc: subprocess.Popen) -> dict[int, int]:
    import psutil

    out = {}
    for c in psutil.Process(proc.pid).children(recursive=True):
        try:
            r = c.environ().get("PMI_RANK")
        except (psutil.Error, OSError):
            continue
        if r is not None and "bitttt.train" in " ".join(c.cmdline()):
            out[int(r)] = c.pid
    return out


@needs_mpi
def test_killed_rank_ends_the_job_and_one_process_resumes_the_run(corpora, tmp_path):
    cfg = dict(data=corpora["text"], out_dir=str(tmp_path), name="k", grad_accum=2, max_steps=2000,
               eval_interval=1000, ckpt_interval=4, keep_last=2, **dict(BASE, log_interval=4))
    proc = _launch(2, ["-m", "bitttt.train", "--no-progress", *_args(cfg)], tmp_path)
    ck = tmp_path / "k" / "checkpoints"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if ck.is_dir() and len([p for p in os.listdir(ck) if p.startswith("step_")]) >= 2:
            break
        time.sleep(0.02)
    ranks = _ranks_of(proc)
    assert proc.poll() is None and set(ranks) == {0, 1}, "the run ended before a rank could be killed"
    os.kill(ranks[1], signal.SIGKILL)
    rc, out, err = _run(proc, timeout=60)
    assert rc != 0
    assert "stopped by" not in out
    path = latest_checkpoint(str(tmp_path / "k"))  # intact: every CRC checks
    ckpt = load_checkpoint(path)
    s = ckpt.state["step"]
    assert s >= 4 and s % 4 == 0 and ckpt.state["world_size"] == 2
    # one process resumes the 2-rank run (grad_accum 2 x 2 ranks -> 4) and continues the same run
    tr = Trainer.resume(str(tmp_path / "k"), {"threads": 2}, progress=False)
    assert (tr.cfg.grad_accum, tr.step, tr.world.size) == (4, s, 1)
    losses = [tr.train_step() for _ in range(3)]
    ref = Trainer(TrainConfig(**dict(cfg, name="ref", grad_accum=4)), progress=False)
    ref_losses = [ref.train_step() for _ in range(s + 3)]
    assert losses == ref_losses[s:]
    for k, p in ref.model.params.items():
        assert np.array_equal(p, tr.model.params[k]), k
        assert np.array_equal(ref.opt.m[k], tr.opt.m[k]) and np.array_equal(ref.opt.v[k], tr.opt.v[k]), k
    assert tr.batches.state() == ref.batches.state() and tr.tokens_seen == ref.tokens_seen
    # 3 ranks cannot share 4 micro-batches: every rank refuses, rank 0 says why, nothing is written
    before = sorted(os.listdir(ck))
    rc, out, err = _run(_launch(3, ["-m", "bitttt.train", "--no-progress", "--resume", str(tmp_path / "k")],
                                tmp_path))
    assert rc == 2 and err.count("which 3 ranks cannot share evenly") == 1, err
    assert sorted(os.listdir(ck)) == before


@needs_mpi
def test_a_stop_file_stops_every_rank_at_the_same_step(corpora, tmp_path):
    cfg = dict(data=corpora["text"], out_dir=str(tmp_path), name="s", max_steps=5000, eval_interval=1000,
               ckpt_interval=1000, **dict(BASE, log_interval=10))
    proc = _launch(2, ["-m", "bitttt.train", "--no-progress", *_args(cfg)], tmp_path)
    log = tmp_path / "s" / "log.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None and not (log.exists() and log.stat().st_size):
        time.sleep(0.02)
    (tmp_path / "s" / "STOP").touch()
    rc, out, err = _run(proc, timeout=90)
    assert rc == 0, err
    assert out.count("stopped by STOP file") == 1 and not (tmp_path / "s" / "STOP").exists()
    summary = json.loads(log.read_text().splitlines()[-1])["summary"]
    ck = load_checkpoint(latest_checkpoint(str(tmp_path / "s")))
    assert 0 < summary["step"] < 5000 and ck.state["step"] == summary["step"]


WORKER = r'''
import sys
import numpy as np
from bitttt import dist

dist.CHUNK_BYTES = 64  # many chunks: the pipeline, not one message
w = dist.world()
assert isinstance(w, dist.MPIWorld) and w.size == 3, w
# rank r holds k[r] parts (rank 1 none); every rank builds all of them to know the answer
k = [2, 0, 3]
rng = np.random.default_rng(7)
allp = [[(rng.standard_normal(1000) * 10.0 ** rng.integers(-6, 7, 1000)).astype(np.float32) for _ in range(n)]
        for n in k]
flat = [p for ps in allp for p in ps]
want = flat[0].copy()
for p in flat[1:]:
    want += p
other = (flat[0] + flat[1]) + (flat[2] + flat[3] + flat[4])  # another association: other bits
assert not np.array_equal(want, other)
got = w.ordered_sum(allp[w.rank])
assert got.dtype == np.float32 and np.array_equal(got, want), "ordered_sum is not the left fold"
assert w.allgather(w.rank * 10) == [0, 10, 20] and w.bcast("x" if w.rank == 2 else None, root=2) == "x"
a = np.arange(6, dtype=np.float64) * (w.rank + 1)
w.bcast_array(a, root=1)
assert np.array_equal(a, np.arange(6) * 2.0)
t = {"a": np.ones(4, np.float32), "b": np.zeros((2, 2), np.float32)}
w.check_same(t)
if w.rank == 2:
    t["b"][1, 1] = 1e-30
try:
    w.check_same(t)
    raise SystemExit("divergence not detected")
except dist.DistributedError as e:
    assert "rank 2 differs from rank 0 in b" in str(e), e

# the trainer stops on every rank when one rank's weights drift, before writing a checkpoint of it
from bitttt.trainer import Trainer, TrainConfig
import json
cfg = json.loads(sys.argv[1])
try:  # ranks that start from different weights are refused before the first step
    Trainer(TrainConfig(**dict(cfg, seed=w.rank, name="seeds")), progress=False)
    raise SystemExit("different starting weights not detected")
except dist.DistributedError as e:
    assert "starting weights and optimizer state at step 0" in str(e), e
tr = Trainer(TrainConfig(**cfg), progress=False, check_every=3)
if w.rank == 1:
    tr.model.params["norm_f.weight"][0] += 1e-3
try:
    tr.fit()
    raise SystemExit("the trainer missed the divergence")
except dist.DistributedError as e:
    assert "rank 1 differs from rank 0 in norm_f.weight" in str(e) and "at step 3" in str(e), e
    assert tr.step == 3
open(f"{sys.argv[2]}/ok.{w.rank}", "w").close()  # (lines of several ranks interleave on stdout)
'''


@needs_mpi
def test_dist_ops_on_three_ranks(corpora, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    cfg = dict(data=corpora["text"], out_dir=str(tmp_path), name="d", max_steps=20, eval_interval=100,
               ckpt_interval=5, **BASE)
    rc, out, err = _run(_launch(3, [str(tmp_path / "worker.py"), json.dumps(cfg), str(tmp_path)], tmp_path))
    assert rc == 0, out + err
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith("ok.")) == ["ok.0", "ok.1", "ok.2"]
    assert not os.path.exists(tmp_path / "d" / "checkpoints" / "step_0000003.safetensors")
    assert not any(p.startswith("step_") for p in os.listdir(tmp_path / "d" / "checkpoints"))
