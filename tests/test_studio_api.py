"""The Studio's API through the ASGI test client: every action, and bad input answered with a clear
message and nothing written.  Training runs are real `python -m bitttt.train` subprocesses of a D=32
model on a few KB of text made here."""
import gzip
import json
import os
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("sse_starlette")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from studio_util import VOCAB, corpus, listing, tiny_fields  # noqa: E402

from bitttt.studio import create_app  # noqa: E402


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A Studio on a fresh projects folder with project `p`, its text, tokenizer and dataset."""
    root = tmp_path_factory.mktemp("projects")
    app = create_app(str(root))
    with TestClient(app) as c:
        assert c.post("/api/projects", json={"name": "p"}).status_code == 200
        r = c.post("/api/projects/p/raw?filename=story.txt", content=corpus().encode())
        assert r.status_code == 200, r.text
        r = c.post("/api/projects/p/tokenizers", json={"name": "tok", "files": ["story.txt"], "vocab_size": VOCAB})
        assert r.status_code == 200, r.text
        r = c.post("/api/projects/p/datasets", json={"name": "main", "files": ["story.txt"], "tokenizer": "tok",
                                                     "val_fraction": 0.25})
        assert r.status_code == 202, r.text
        job = app.state.studio.jobs.wait(r.json()["id"])
        assert job.state == "done", job.error
        yield c, app.state.studio, str(root / "p")
        studio = app.state.studio
        for run in list(studio.runs._procs):  # never leave a training behind
            try:
                studio.runs.kill(studio.projects.get(run[0]), run[1])
            except Exception:
                pass


def err(r, status: int, *words: str) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    m = r.json()["error"]
    for w in words:
        assert w.lower() in m.lower(), m
    return m


# -- projects -------------------------------------------------------------------------------------
def test_projects_create_list_and_refuse(tmp_path):
    with TestClient(create_app(str(tmp_path))) as c:
        assert c.get("/api/projects").json() == {"root": str(tmp_path), "projects": []}
        s = c.post("/api/projects", json={"name": "alpha"}).json()
        assert s["name"] == "alpha" and s["raw"] == [] and s["runs"] == [] and s["active_run"] is None
        assert sorted(os.listdir(tmp_path / "alpha")) == ["data", "memory", "models", "raw", "runs"]
        err(c.post("/api/projects", json={"name": "alpha"}), 409, "already exists")
        for bad in ("../evil", "a b", "", ".hidden", 7, "x" * 65):
            err(c.post("/api/projects", json={"name": bad}), 400, "project name must be a plain name")
        err(c.post("/api/projects", content=b"[1, 2]", headers={"content-type": "application/json"}), 400,
            "json object")
        err(c.get("/api/projects/nope"), 404, "no project 'nope'")
        assert sorted(os.listdir(tmp_path)) == ["alpha"]
        assert c.get("/api/projects").json()["projects"] == ["alpha"]


# -- text files -------------------------------------------------------------------------------------
def test_text_files_added_checked_and_previewed(tmp_path):
    with TestClient(create_app(str(tmp_path / "pr"))) as c:
        c.post("/api/projects", json={"name": "t"})
        raw = tmp_path / "pr" / "t" / "raw"
        text = corpus(16)
        d = c.post("/api/projects/t/raw?filename=a.txt", content=text.encode()).json()
        assert d == {"name": "a.txt", "bytes": len(text.encode()), "documents": 8,
                     "chars": sum(len(x) for x in text.split("\n<|endoftext|>\n"))}
        assert (raw / "a.txt").read_bytes() == text.encode()
        # from a path on the machine, gzipped jsonl
        src = tmp_path / "notes.jsonl.gz"
        src.write_bytes(gzip.compress(b'{"text": "hello there"}\n{"prompt": "hi", "response": "hey"}\n'))
        d = c.post("/api/projects/t/raw/path", json={"path": str(src)}).json()
        assert d["name"] == "notes.jsonl.gz" and d["documents"] == 3  # one text, prompt and response
        p = c.get("/api/projects/t/raw/a.txt").json()
        assert p["text"].startswith(text[:200]) and p["bytes"] == len(text.encode())
        before = listing(str(raw))
        # bad input: nothing written
        m = err(c.post("/api/projects/t/raw?filename=bad.txt", content=b"caf\xc3\xa9 ok\n\xff\xfe bad"), 400,
                "bad.txt", "utf-8", "offset 9")
        assert "--errors" not in m
        err(c.post("/api/projects/t/raw/path", json={"path": str(tmp_path / "missing.txt")}), 404, "no such file")
        err(c.post("/api/projects/t/raw/path", json={"path": str(tmp_path)}), 400, "not a file")
        err(c.post("/api/projects/t/raw/path", json={}), 400, "path")
        err(c.post("/api/projects/t/raw?filename=doc.pdf", content=b"x"), 400, "unknown file type")
        err(c.post("/api/projects/t/raw?filename=../up.txt", content=b"x"), 400, "plain file name")
        err(c.post("/api/projects/t/raw?filename=", content=b"x"), 400, "plain file name")
        err(c.post("/api/projects/t/raw?filename=empty.txt", content=b"  \n"), 400, "holds no text")
        err(c.post("/api/projects/t/raw?filename=broken.txt.gz", content=b"not gzip"), 400, "broken.txt.gz")
        err(c.post("/api/projects/t/raw?filename=a.txt", content=b"other"), 409, "already exists")
        err(c.get("/api/projects/t/raw/nope.txt"), 404, "no text file")
        assert listing(str(raw)) == before and (raw / "a.txt").read_bytes() == text.encode()


# -- tokenizers ---------------------------------------------------------------------------------------
def test_tokenizer_statistics_are_measured(env):
    c, _, proj = env
    s = c.get("/api/projects/p/tokenizers/tok").json()
    text = corpus()
    assert s["vocab_size"] == VOCAB and s["model_type"] == "unigram" and s["files"] == ["story.txt"]
    assert s["bytes_per_token"] == round(s["measured_bytes"] / s["measured_tokens"], 3)
    assert 1.0 < s["bytes_per_token"] < 8.0
    assert "".join(p["piece"] for p in s["sample"]) == text[:len("".join(p["piece"] for p in s["sample"]))]
    assert len("".join(p["piece"] for p in s["sample"])) >= 200
    counts = [t["count"] for t in s["top"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) <= s["measured_tokens"]
    from bitttt import Tokenizer

    tok = Tokenizer.load(os.path.join(proj, "data", "tokenizers", "tok.model"))
    assert [p["id"] for p in s["sample"]] == tok.encode(text[:240])
    names = [t["name"] for t in c.get("/api/projects/p").json()["tokenizers"]]
    assert names == ["tok"]


def test_tokenizer_bad_input_writes_nothing(env):
    c, _, proj = env
    tdir = os.path.join(proj, "data", "tokenizers")
    before = listing(tdir)
    err(c.post("/api/projects/p/tokenizers", json={"name": "big", "files": ["story.txt"], "vocab_size": 60000}),
        400, "vocab_size=60000 is too large for this corpus")
    err(c.post("/api/projects/p/tokenizers", json={"name": "small", "files": ["story.txt"], "vocab_size": 100}),
        400, "vocabulary size must be between")
    err(c.post("/api/projects/p/tokenizers", json={"name": "s", "files": ["story.txt"], "vocab_size": "512"}),
        400, "must be an integer")
    err(c.post("/api/projects/p/tokenizers", json={"name": "s", "files": ["story.txt"], "vocab_size": 400,
                                                   "model_type": "wordpiece"}), 400, "unigram, bpe")
    err(c.post("/api/projects/p/tokenizers", json={"name": "s", "files": ["gone.txt"], "vocab_size": 400}),
        404, "gone.txt")
    err(c.post("/api/projects/p/tokenizers", json={"name": "s", "files": [], "vocab_size": 400}), 400,
        "at least one text file")
    err(c.post("/api/projects/p/tokenizers", json={"name": "tok", "files": ["story.txt"], "vocab_size": 400}),
        409, "already exists")
    err(c.post("/api/projects/p/tokenizers", json={"name": "../x", "files": ["story.txt"], "vocab_size": 400}),
        400, "tokenizer name")
    assert listing(tdir) == before


def test_bpe_tokenizer(env):
    c, _, proj = env
    s = c.post("/api/projects/p/tokenizers", json={"name": "bpe", "files": ["story.txt"], "vocab_size": VOCAB,
                                                   "model_type": "bpe"}).json()
    assert s["model_type"] == "bpe" and s["vocab_size"] == VOCAB, s
    assert os.path.isfile(os.path.join(proj, "data", "tokenizers", "bpe.model"))


# -- token files -----------------------------------------------------------------------------------------
def test_dataset_prepared_and_bad_input_refused(env):
    c, studio, proj = env
    ds = {d["name"]: d for d in c.get("/api/projects/p").json()["datasets"]}
    man = json.load(open(os.path.join(proj, "data", "main", "manifest.json")))
    assert ds["main"]["train_tokens"] == man["splits"]["train"]["tokens"] > 0
    assert ds["main"]["val_tokens"] == man["splits"]["val"]["tokens"] > 0 and ds["main"]["vocab_size"] == VOCAB
    before = listing(os.path.join(proj, "data"))
    body = {"name": "d2", "files": ["story.txt"], "tokenizer": "tok"}
    err(c.post("/api/projects/p/datasets", json={**body, "val_fraction": 1.5}), 400, "validation fraction")
    err(c.post("/api/projects/p/datasets", json={**body, "val_fraction": "x"}), 400, "validation fraction")
    err(c.post("/api/projects/p/datasets", json={**body, "tokenizer": "nope"}), 404, "no tokenizer 'nope'")
    err(c.post("/api/projects/p/datasets", json={**body, "files": ["nope.txt"]}), 404, "nope.txt")
    err(c.post("/api/projects/p/datasets", json={**body, "name": "main"}), 409, "already exists")
    err(c.post("/api/projects/p/datasets", json={**body, "name": "tokenizers"}), 400, "pick another")
    err(c.post("/api/projects/p/datasets", json={**body, "seed": -1}), 400, "seed")
    err(c.get("/api/jobs/999"), 404, "no job")
    assert listing(os.path.join(proj, "data")) == before


# -- the train form ------------------------------------------------------------------------------------------
def test_command_shows_what_runs_and_refuses_bad_fields(env):
    c, _, proj = env
    d = c.post("/api/projects/p/command", json={"name": "x1", "data": "main", "fields": tiny_fields(lr=0.01)}).json()
    cmd = d["command"]
    assert cmd.startswith(f"cd {proj} && python -m bitttt.train data=data/main out_dir=runs name=x1 ")
    assert "model.hidden_size=32" in cmd and "lr=0.01" in cmd and cmd.endswith("--no-progress")
    assert "beta1" not in cmd  # defaults are left out
    assert d["config"]["model"]["hidden_size"] == 32 and d["config"]["lr"] == 0.01
    # a default sent back as an int is not a change (1 for 1.0)
    d = c.post("/api/projects/p/command", json={"name": "x1", "data": "main", "fields": {"grad_clip": 1}}).json()
    assert "grad_clip" not in d["command"]
    bad = [({"lr": -1.0}, "train.lr must be > 0"), ({"lr": "fast"}, "train.lr must be a finite number"),
           ({"batch_size": 0}, "train.batch_size must be >= 1"), ({"batch_size": 2.5}, "batch_size must be an integer"),
           ({"min_lr": 1.0}, "must not exceed"), ({"model.num_heads": 3}, "divisible"),
           ({"warp": 9}, "unknown training field"), ({"model.ternary": "yes"}, "true or false")]
    for fields, words in bad:
        err(c.post("/api/projects/p/command", json={"name": "x1", "data": "main", "fields": fields}), 400, words)
    err(c.post("/api/projects/p/command", json={"name": "x y", "data": "main"}), 400, "run name")
    err(c.post("/api/projects/p/command", json={"name": "x1", "data": "nope"}), 404, "no prepared dataset")
    err(c.post("/api/projects/p/command", json={"name": "x1"}), 400, "choose a prepared dataset")
    err(c.post("/api/projects/p/runs", json={"form": {"name": "x1", "data": "main", "fields": {"lr": 0}}}), 400, "lr")
    err(c.post("/api/projects/p/estimate", json={"name": "x1", "data": "main", "fields": {"seq_len": -4}}), 400,
        "seq_len")
    assert not os.path.exists(os.path.join(proj, "runs", "x1"))


def test_presets_are_valid_runs(env):
    c, _, _ = env
    pr = c.get("/api/presets").json()
    assert set(pr["presets"]) == {"tiny", "small", "medium"}
    keys = {f["key"] for f in pr["fields"]}
    for name, preset in pr["presets"].items():
        assert set(preset) <= keys
        r = c.post("/api/projects/p/command", json={"name": f"pre-{name}", "data": "main", "fields": preset})
        assert r.status_code == 200, (name, r.text)
    sizes = [pr["presets"][n]["model.hidden_size"] for n in ("tiny", "small", "medium")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert all(f["help"] and "default" in f for f in pr["fields"])


def test_trial_step_estimate(env):
    c, _, proj = env
    d = c.post("/api/projects/p/estimate", json={"name": "est", "data": "main", "fields": tiny_fields()}).json()
    assert 0 < d["step_s"] < 5 and d["peak_rss_mb"] > 10 and d["params"] > 1000
    assert d["tokens_per_step"] == 2 * 32 and d["max_steps"] == 30
    assert d["total_s"] == pytest.approx(min(30 * d["step_s"] + 3 * d["eval_batch_s"], 60.0), abs=0.06)
    assert not os.path.exists(os.path.join(proj, "runs", "est"))


# -- runs ------------------------------------------------------------------------------------------------------
def wait_state(c, run, states, timeout=60.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = c.get(f"/api/projects/p/runs/{run}").json()
        if st["state"] in states:
            return st
        time.sleep(0.1)
    raise AssertionError(f"{run} still {st['state']} after {timeout} s")


def test_run_busy_queue_stop_resume_kill(env):
    c, studio, proj = env
    long = tiny_fields(max_steps=100000, max_time=120.0)
    d = c.post("/api/projects/p/runs", json={"form": {"name": "r1", "data": "main", "fields": long}}).json()
    assert d["state"] == "running" and "name=r1" in d["command"]
    # a second run on the busy project: refused, nothing written
    m = err(c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()}}),
            409, "busy", "r1 is training")
    assert "queue" in m and not os.path.exists(os.path.join(proj, "runs", "r2"))
    err(c.post("/api/projects/p/runs", json={"form": {"name": "r1", "data": "main", "fields": tiny_fields()}}),
        409, "already exists")
    err(c.post("/api/projects/p/runs/r1/resume", json={}), 409)
    # queued instead
    q = c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()},
                                             "queue": True}).json()
    assert q["state"] == "queued"
    assert [it["run"] for it in c.get("/api/projects/p/runs").json()["queue"]] == ["r2"]
    err(c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()},
                                             "queue": True}), 409, "already in the queue")
    q4 = c.post("/api/projects/p/runs", json={"form": {"name": "r4", "data": "main", "fields": tiny_fields()},
                                              "queue": True}).json()
    assert [it["run"] for it in c.get("/api/projects/p/runs").json()["queue"]] == ["r2", "r4"]
    from bitttt.studio.projects import Projects
    from bitttt.studio.runs import Runs

    later = Runs(Projects(os.path.dirname(proj)))  # a Studio started later finds the queue
    assert [it["run"] for it in later.queue("p")] == ["r2", "r4"]
    assert [it["run"] for it in c.delete(f"/api/projects/p/queue/{q4['id']}").json()["queue"]] == ["r2"]
    err(c.delete(f"/api/projects/p/queue/{q4['id']}"), 404, "nothing queued")
    # the run logs steps; stop asks it to save and exit
    t0 = time.monotonic()
    while not os.path.exists(os.path.join(proj, "runs", "r1", "log.jsonl")) and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert c.get("/api/projects/p").json()["active_run"] == "r1"
    assert c.post("/api/projects/p/runs/r1/stop").json() == {"state": "stopping", "run": "r1"}
    st = wait_state(c, "r1", ("stopped",))
    assert st["checkpoints"] and st["checkpoints"][0]["step"] == st["step"] and st["pid"] is None
    assert not os.path.exists(os.path.join(proj, "runs", "r1", "STOP"))
    err(c.post("/api/projects/p/runs/r1/stop"), 409, "not training")
    # the queued run starts by itself once the project is free, and finishes
    st2 = wait_state(c, "r2", ("finished",))
    assert st2["step"] == 30 and c.get("/api/projects/p/runs").json()["queue"] == []
    assert {ck["name"] for ck in st2["checkpoints"]} >= {"step_0000030.safetensors", "best.safetensors"}
    # resume r1 from its checkpoint for a few more steps
    ck = st["checkpoints"][0]["name"]
    err(c.post("/api/projects/p/runs/r1/resume", json={"checkpoint": "nope.safetensors"}), 404, "no checkpoint")
    err(c.post("/api/projects/p/runs/r1/resume", json={"overrides": {"lr": 1.0}}), 400, "cannot change lr")
    err(c.post("/api/projects/p/runs/r1/resume", json={"overrides": {"max_steps": 0}}), 400, "max_steps")
    target = st["step"] + 6
    d = c.post("/api/projects/p/runs/r1/resume", json={"checkpoint": ck, "overrides": {"max_steps": target}}).json()
    assert d["state"] == "running" and f"--resume runs/r1/checkpoints/{ck} max_steps={target}" in d["command"]
    st = wait_state(c, "r1", ("finished",))
    assert st["step"] == target and st["checkpoints"][0]["step"] == target
    # kill: at once, recorded as killed, the checkpoints as they were
    c.post("/api/projects/p/runs", json={"form": {"name": "r3", "data": "main", "fields": long}})
    t0 = time.monotonic()
    while not c.get("/api/projects/p/runs/r3").json()["checkpoints"] and time.monotonic() - t0 < 30:
        time.sleep(0.05)
    assert c.post("/api/projects/p/runs/r3/kill").json() == {"state": "killed", "run": "r3"}
    st3 = c.get("/api/projects/p/runs/r3").json()
    assert st3["state"] == "killed" and c.get("/api/projects/p").json()["active_run"] is None
    from bitttt.formats import load_checkpoint

    for ckpt in st3["checkpoints"]:
        load_checkpoint(os.path.join(proj, "runs", "r3", "checkpoints", ckpt["name"]))  # intact
    err(c.post("/api/projects/p/runs/r3/kill"), 409, "not training")
    err(c.get("/api/projects/p/runs/nope"), 404, "no run")


def test_events_replay_the_log_and_end(env):
    c, _, proj = env
    if not os.path.exists(os.path.join(proj, "runs", "r2", "log.jsonl")):
        c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()}})
        wait_state(c, "r2", ("finished",))
    lines = [json.loads(x) for x in open(os.path.join(proj, "runs", "r2", "log.jsonl"))]
    got, samples, end = [], [], None
    with c.stream("GET", "/api/projects/p/runs/r2/events") as s:
        event = None
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
                if event == "log":
                    got.append(data)
                elif event == "sample":
                    samples.append(data)
                elif event == "end":
                    end = data
    assert got == lines and end == {"state": "finished", "error": None}
    assert samples and isinstance(samples[-1]["text"], str) and samples[-1]["checkpoint"].endswith(".safetensors")
    # from an offset: only what follows
    off = len(open(os.path.join(proj, "runs", "r2", "log.jsonl"), "rb").readline())
    with c.stream("GET", f"/api/projects/p/runs/r2/events?offset={off}") as s:
        n = sum(1 for line in s.iter_lines() if line.startswith("event: log"))
    assert n == len(lines) - 1
    assert c.get("/api/projects/p/runs/r2/log").json()["records"] == lines
    con = c.get("/api/projects/p/runs/r2/console").json()["text"]
    assert "$ cd " in con and "stopped by max_steps at step 30" in con
    sample = c.get("/api/projects/p/runs/r2/sample").json()
    assert isinstance(sample["text"], str) and sample["checkpoint"].endswith(".safetensors") and sample["step"] > 0


# -- export and evaluation -------------------------------------------------------------------------------------------
def test_export_and_eval(env):
    c, _, proj = env
    if not os.path.isdir(os.path.join(proj, "runs", "r2")):
        c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()}})
        wait_state(c, "r2", ("finished",))
    d = c.post("/api/projects/p/runs/r2/export", json={"checkpoint": "step_0000030.safetensors"}).json()
    path = os.path.join(proj, "models", "r2.safetensors")
    assert d["name"] == "r2.safetensors" and d["bytes"] == os.path.getsize(path) and d["step"] == "30"
    import bitttt

    m = bitttt.load(path)
    assert m.config.hidden_size == 32
    before = listing(os.path.join(proj, "models"))
    err(c.post("/api/projects/p/runs/r2/export", json={}), 409, "already exists")
    err(c.post("/api/projects/p/runs/r2/export", json={"checkpoint": "x.safetensors", "name": "y"}), 404)
    err(c.post("/api/projects/p/runs/r2/export", json={"name": "z", "head": "int4"}), 400, "head format")
    assert listing(os.path.join(proj, "models")) == before
    # evaluation: the same loss as InferenceModel.score on the same tokens
    e = c.post("/api/projects/p/eval", json={"model": "models/r2.safetensors", "dataset": "main"}).json()
    from bitttt.data import TokenData

    td = TokenData(os.path.join(proj, "data", "main"), "val")
    ids = [m.tokenizer.eos_id] + [int(i) for i in td.tokens]
    total, n = m.im.score(ids)
    assert e["tokens"] == n and e["loss"] == pytest.approx(total / n, rel=1e-9)
    curve = e["loss_by_position"]
    assert 2 <= len(curve) <= 32 and all(y > 0 for _, y in curve)
    assert [x for x, _ in curve] == sorted(x for x, _ in curve)
    e2 = c.post("/api/projects/p/eval", json={"model": "runs/r2", "file": "story.txt", "reset_every": 32}).json()
    assert e2["on"] == "raw/story.txt" and e2["bits_per_byte"] > 0
    err(c.post("/api/projects/p/eval", json={"model": "runs/r2"}), 400, "one text file or one dataset")
    err(c.post("/api/projects/p/eval", json={"model": "runs/nope", "file": "story.txt"}), 404, "no run")
    err(c.post("/api/projects/p/eval", json={"model": "/etc/passwd", "file": "story.txt"}), 400, "a model is named")
    err(c.post("/api/projects/p/eval", json={"model": "runs/r2", "file": "story.txt", "reset_every": -1}), 400,
        "reset_every")


# -- chat and memory ---------------------------------------------------------------------------------------------
def test_chat_streams_and_memory_files(env):
    c, _, proj = env
    if not os.path.isdir(os.path.join(proj, "runs", "r2")):
        c.post("/api/projects/p/runs", json={"form": {"name": "r2", "data": "main", "fields": tiny_fields()}})
        wait_state(c, "r2", ("finished",))
    s = c.post("/api/projects/p/chat", json={"model": "runs/r2"}).json()
    assert s["memory_tokens"] == 0 and s["file"].startswith("runs/r2/checkpoints/")
    sid = s["id"]
    log_path = os.path.join(proj, "memory", "conversations.jsonl")
    events = []
    with c.stream("POST", f"/api/projects/p/chat/{sid}/message",
                  json={"text": "Tom and Lily", "system": "Tell a story.",
                        "sampling": {"max_tokens": 12, "seed": 3, "temperature": 0.9}}) as r:
        ev = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                ev = line[6:].strip()
            elif line.startswith("data:"):
                events.append((ev, json.loads(line[5:].strip())))
    tokens = [d["text"] for e, d in events if e == "token"]
    done = [d for e, d in events if e == "done"][0]
    assert done["text"] == "".join(tokens) and done["stats"]["seed"] == 3
    assert 1 <= done["stats"]["decode_tokens"] <= 12 and done["memory_tokens"] > 0
    roles = [json.loads(x)["role"] for x in open(log_path)]
    assert roles == ["system", "user", "assistant"]
    assert c.get(f"/api/projects/p/chat/{sid}").json()["memory_tokens"] == done["memory_tokens"]
    # bad chat input: refused before anything is read or logged
    n_log = len(open(log_path).readlines())
    err(c.post(f"/api/projects/p/chat/{sid}/message", json={"text": "hi", "sampling": {"temperature": -1}}), 400,
        "temperature")
    err(c.post(f"/api/projects/p/chat/{sid}/message", json={"text": "hi", "sampling": {"warmth": 1}}), 400,
        "unknown sampling setting")
    err(c.post(f"/api/projects/p/chat/{sid}/message", json={"text": "  "}), 400, "type a message")
    err(c.post("/api/projects/p/chat/c999/message", json={"text": "hi"}), 404, "no chat session")
    assert len(open(log_path).readlines()) == n_log
    # memory: save, refuse a second save, reset, load back, sleep
    mem = done["memory_tokens"]
    assert c.post(f"/api/projects/p/chat/{sid}/memory/save", json={"name": "m1"}).json() == \
        {"name": "m1", "memory_tokens": mem}
    mpath = os.path.join(proj, "memory", "m1.mem.safetensors")
    stamp = os.stat(mpath).st_mtime_ns
    err(c.post(f"/api/projects/p/chat/{sid}/memory/save", json={"name": "m1"}), 409, "already exists")
    err(c.post(f"/api/projects/p/chat/{sid}/memory/save", json={"name": "../m"}), 400, "memory name")
    assert os.stat(mpath).st_mtime_ns == stamp
    assert c.post(f"/api/projects/p/chat/{sid}/memory/reset").json() == {"memory_tokens": 0}
    assert c.post(f"/api/projects/p/chat/{sid}/memory/load", json={"name": "m1"}).json()["memory_tokens"] == mem
    err(c.post(f"/api/projects/p/chat/{sid}/memory/load", json={"name": "nope"}), 404, "no memory")
    err(c.post(f"/api/projects/p/chat/{sid}/memory/fly"), 404, "unknown memory action")
    sl = c.post(f"/api/projects/p/chat/{sid}/memory/sleep").json()
    assert sl["name"] == "sleep" and sl["replayed_tokens"] > 0 and sl["memory_tokens"] == mem + sl["replayed_tokens"]
    mems = {m["name"]: m for m in c.get("/api/projects/p").json()["memories"]}
    assert mems["m1"]["n_tokens"] == mem and mems["sleep"]["n_tokens"] == sl["memory_tokens"]
    # a memory of another model is refused with the reason
    if os.path.isdir(os.path.join(proj, "runs", "r1")):
        other = c.post("/api/projects/p/chat", json={"model": "runs/r1"}).json()["id"]
        err(c.post(f"/api/projects/p/chat/{other}/memory/load", json={"name": "m1"}), 400, "m1.mem.safetensors")
    err(c.post("/api/projects/p/chat", json={"model": "models/none.safetensors"}), 404, "no model file")


def test_cli_serves_the_page(tmp_path):
    """`python -m bitttt.studio --no-browser` serves the page and the API on loopback."""
    import socket
    import subprocess
    import sys
    import urllib.request

    pytest.importorskip("uvicorn")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    p = subprocess.Popen([sys.executable, "-m", "bitttt.studio", "--projects", str(tmp_path / "pj"),
                          "--port", str(port), "--no-browser"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        page = None
        for _ in range(100):
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert page is not None and "<title>bitttt Studio</title>" in page
        js = urllib.request.urlopen(f"http://127.0.0.1:{port}/studio.js", timeout=2).read().decode()
        assert "EventSource" in js
        d = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/projects", timeout=2).read())
        assert d == {"root": str(tmp_path / "pj"), "projects": []}
    finally:
        p.terminate()
        p.wait(10)


def test_mounted_into_another_app(tmp_path):
    """The router and page mount under a prefix of another FastAPI app (as bitttt.serve can), bringing
    their error answers along and leaving the host's own errors alone."""
    from fastapi import FastAPI

    from bitttt.studio.app import mount

    host = FastAPI()

    @host.get("/own")
    def own():
        raise ValueError("the host's own error")

    studio = mount(host, str(tmp_path / "pj"), prefix="/studio")
    studio.open()
    try:
        with TestClient(host, raise_server_exceptions=False) as c:
            assert "<title>bitttt Studio</title>" in c.get("/studio/").text
            r = c.get("/studio", follow_redirects=False)
            assert r.status_code in (307, 308) and r.headers["location"].endswith("/studio/")
            assert c.get("/studio/api/projects").json()["projects"] == []
            assert c.post("/studio/api/projects", json={"name": "q"}).json()["name"] == "q"
            err(c.post("/studio/api/projects", json={"name": "q"}), 409, "already exists")
            err(c.post("/studio/api/projects", json=[]), 400, "json object")
            assert c.get("/own").status_code == 500
    finally:
        studio.close()
