"""The chat's memory features (issue 13, point 5): /sleep replays only the logged turns the memory
has not replayed before (so /sleep twice is /sleep once, bit for bit), the chat log lives beside
the memory file or in the user's data folder and never in the package, --no-log, /memory shows
what the memory holds, and --reset-every / --decay (Session(reset_every=, decay=)) bound what
the state holds.  Real chats in subprocesses on the shipped model, real files read back."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitttt
from bitttt.formats import MemoryFileError, read_memory
from bitttt.formats.safetensors import read_safetensors, write_safetensors
from bitttt.generation import Session

REPO = Path(__file__).resolve().parents[1]
PKG = Path(bitttt.__file__).resolve().parent


@pytest.fixture(scope="module")
def model():
    return bitttt.load("tinystories")


def _env(home: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                HOME=str(home), XDG_DATA_HOME=str(home / "share"), BITTTT_NUM_THREADS="1",
                PYTHONDONTWRITEBYTECODE="1")


def _chat(home: Path, stdin: str, *args) -> subprocess.CompletedProcess:
    """A piped chat on the shipped model, greedy, short answers."""
    r = subprocess.run([sys.executable, "-m", "bitttt.infer", "-i", "-n", "6", "--temp", "0", *map(str, args)],
                       input=stdin, capture_output=True, text=True, env=_env(home), timeout=180)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _same_state(a, b) -> bool:
    ma, mb = read_memory(a), read_memory(b)
    return (ma.pos, ma.n_tokens) == (mb.pos, mb.n_tokens) and all(
        np.array_equal(ma.arrays[n], mb.arrays[n]) for n in ma.arrays)


def _log(path: Path, *turns: tuple[str, str]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        for role, text in turns:
            f.write(json.dumps({"time": "2026-01-01T00:00:00", "role": role, "text": text}) + "\n")


def _arrays_equal(s1: Session, s2: Session) -> bool:
    a, b = s1.state, s2.state
    return (a.pos, a.n_tokens) == (b.pos, b.n_tokens) and all(
        np.array_equal(x, y) for x, y in zip(a.arrays().values(), b.arrays().values()))


# -- /sleep ---------------------------------------------------------------------------------------
def test_sleep_twice_equals_sleep_once(tmp_path):
    """In one chat and across chats: a second /sleep on the same log replays nothing, and the
    memory file's state is bit-identical to the one after a single /sleep."""
    once, twice = tmp_path / "once", tmp_path / "twice"
    for d, cmds in ((once, "/sleep\n"), (twice, "/sleep\n/sleep\n")):
        d.mkdir()
        r = _chat(tmp_path, "Tom has a red ball.\nSue likes her cat.\n" + cmds + "/quit\n", "--memory", d / "m.mem")
        assert r.returncode == 0, r.stderr
        assert "[slept: replayed" in r.stdout and "of 4 new logged turns" in r.stdout
    assert "[slept: nothing new in the log to replay; 4 replayed before, skipped" in r.stdout
    assert _same_state(once / "m.mem", twice / "m.mem")
    assert read_memory(once / "m.mem").n_tokens > 0
    # a later chat on that memory and its log: /sleep again changes nothing
    r = _chat(tmp_path, "/sleep\n/quit\n", "--memory", once / "m.mem")
    assert "nothing new in the log to replay; 4 replayed before" in r.stdout, r.stdout
    assert _same_state(once / "m.mem", twice / "m.mem")
    assert [m["records"] for m in read_memory(once / "m.mem").slept] == [4]


def test_second_sleep_replays_only_the_new_turns(model, tmp_path):
    """Turns logged after a /sleep are the only ones the next one reads: the state equals
    replaying the first turns, then a log of the new turns alone; the marks survive a memory file."""
    log = tmp_path / "c.jsonl"
    _log(log, ("user", "Tom has a red ball."), ("assistant", "He plays with it in the park."))
    s = model.session()
    r1 = s.consolidate(str(log))
    assert r1.tokens > 10 and (r1.records, r1.skipped) == (2, 0)
    s.save_memory(str(tmp_path / "a.mem"))
    _log(log, ("user", "Sue has a cat."), ("assistant", "The cat is soft."))
    r2 = s.consolidate(str(log))
    assert (r2.records, r2.skipped) == (2, 2) and r2.tokens > 5
    # the same from the replay of the first turns, then of a log holding the new ones only
    only_new = tmp_path / "new.jsonl"
    _log(only_new, ("user", "Sue has a cat."), ("assistant", "The cat is soft."))
    ref = model.session()
    first = tmp_path / "first.jsonl"
    _log(first, ("user", "Tom has a red ball."), ("assistant", "He plays with it in the park."))
    assert ref.replay_log(str(first)) == r1.tokens
    assert ref.replay_log(str(only_new)) == r2.tokens
    assert _arrays_equal(s, ref)
    # a session loading the memory saved after the first /sleep knows what it replayed
    s3 = model.session()
    s3.load_memory(str(tmp_path / "a.mem"))
    assert s3.consolidate(str(log)) == r2
    assert _arrays_equal(s3, s)
    assert s3.consolidate(str(log)).tokens == 0
    # only_new=False replays it all again (what the API asks for), keeping one mark for the log
    s3.consolidate(str(log), only_new=False)
    assert [m["records"] for m in s3.slept] == [4]


def test_marks_follow_the_log_by_content(model, tmp_path):
    """A memory file copied elsewhere with its log still knows what it replayed; a log that was
    rewritten is replayed whole; a last line still being written waits for the next /sleep;
    /reset forgets what was replayed."""
    log = tmp_path / "a" / "c.jsonl"
    log.parent.mkdir()
    _log(log, ("user", "Tom has a red ball."), ("assistant", "He is happy."))
    s = model.session()
    s.consolidate(str(log))
    s.save_memory(str(tmp_path / "a" / "m.mem"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    s2 = model.session()
    s2.load_memory(str(tmp_path / "b" / "m.mem"))
    assert s2.consolidate(str(tmp_path / "b" / "c.jsonl")).tokens == 0
    # another chat appends to the log, its last line half written
    with open(log, "a", encoding="utf-8") as f:
        f.write(json.dumps({"role": "user", "text": "Sue has a cat."}) + "\n" + '{"role": "assist')
    r = s.consolidate(str(log))
    assert (r.records, r.skipped) == (1, 2)
    with open(log, "a", encoding="utf-8") as f:
        f.write('ant", "text": "Meow."}\n')
    r = s.consolidate(str(log))
    assert (r.records, r.skipped) == (1, 3) and r.tokens > 0
    # a rewritten log matches no mark: every turn of it is new
    log.write_text(json.dumps({"role": "user", "text": "A new story."}) + "\n", encoding="utf-8")
    r = s.consolidate(str(log))
    assert (r.records, r.skipped) == (1, 0)
    assert len(s.slept) == 2  # the old log's mark stays (it may come back); the new one is added
    s.reset()
    assert s.slept == [] and s.consolidate(str(log)).records == 1


def test_memory_files_old_and_damaged_marks(model, tmp_path):
    """A memory file without marks (written before them) loads with none; a damaged mark is a
    one-line error, in the API and in the chat, and the file is left as it was."""
    s = model.session()
    s.feed("Tom has a red ball.")
    path = tmp_path / "m.mem"
    s.save_memory(str(path))
    t, meta = read_safetensors(str(path))
    assert json.loads(meta["slept"]) == []
    old = {k: v for k, v in meta.items() if k not in ("slept", "crc32", "meta_crc32") and not k.endswith(".crc32")}
    write_safetensors(str(tmp_path / "old.mem"), t, old)
    s2 = model.session()
    s2.load_memory(str(tmp_path / "old.mem"))
    assert s2.slept == [] and s2.state.n_tokens == s.state.n_tokens
    bad = dict(old, slept=json.dumps([{"log": "x", "bytes": -1, "records": 0, "sha256": "0" * 64}]))
    write_safetensors(str(tmp_path / "bad.mem"), t, bad)
    with pytest.raises(MemoryFileError, match="log mark 'bytes' is not a non-negative integer"):
        model.session().load_memory(str(tmp_path / "bad.mem"))
    before = (tmp_path / "bad.mem").read_bytes()
    r = _chat(tmp_path, "hello\n/quit\n", "--memory", tmp_path / "bad.mem")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "metadata 'slept'" in r.stderr and (tmp_path / "bad.mem").read_bytes() == before
    assert not list(tmp_path.glob("bad.conversations.jsonl"))


# -- where the log goes ---------------------------------------------------------------------------
def _listing(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")}


def test_chat_logs_never_land_in_the_package(tmp_path):
    """The shipped model's chat, by name, by its path and through a link to the package's
    folder, writes its log, history, named memories and last memory to the user's data folder,
    and nothing under the package."""
    before = _listing(PKG)
    link = tmp_path / "link"
    link.symlink_to(PKG / "models")
    cmds = "Tom has a red ball.\n/save one\n/sleep\n/memory\n/quit\n"
    for args in ((), ("-m", "tinystories"), ("-m", PKG / "models" / "tinystories-ternary.safetensors"),
                 ("-m", link / "tinystories-ternary.safetensors")):
        r = _chat(tmp_path, cmds, *args)
        assert r.returncode == 0, r.stderr
    assert _listing(PKG) == before
    mdir = tmp_path / "share" / "bitttt" / "tinystories-ternary.memory"
    assert {p.name for p in mdir.iterdir()} >= {"conversations.jsonl", "one.mem.safetensors", "last.mem.safetensors"}
    assert f"log: {mdir / 'conversations.jsonl'}" in r.stderr
    users = [json.loads(x)["text"] for x in (mdir / "conversations.jsonl").read_text().splitlines()
             if json.loads(x)["role"] == "user"]
    assert users == ["Tom has a red ball."] * 4


def test_log_lives_beside_the_memory_file(tmp_path):
    mem = tmp_path / "tmp" / "mem.bttm"
    mem.parent.mkdir()
    r = _chat(tmp_path, "Tom has a red ball.\n/quit\n", "--memory", mem)
    assert r.returncode == 0, r.stderr
    log = tmp_path / "tmp" / "mem.conversations.jsonl"
    assert f"log: {log} (new)" in r.stderr
    assert [json.loads(x)["role"] for x in log.read_text().splitlines()] == ["user", "assistant"]
    assert not (tmp_path / "share").exists()  # nothing in the data folder
    r = _chat(tmp_path, "/quit\n", "--memory", mem)  # the banner of the next chat: the memory and its log
    assert f"memory: {mem} (holds {read_memory(mem).n_tokens:,} tokens read before)" in r.stderr
    assert f"log: {log} (2 turns not yet replayed by /sleep, 0 replayed before)" in r.stderr


def test_no_log(tmp_path):
    r = _chat(tmp_path, "Tom has a red ball.\n/sleep\n/quit\n", "--no-log", "--memory", tmp_path / "m.mem")
    assert r.returncode == 0, r.stderr
    assert "log: off (--no-log)" in r.stderr
    assert "[nothing to sleep on: nothing is logged (--no-log)]" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.mem.lock", "m.mem"]


def test_memory_command_shows_what_the_memory_holds(tmp_path):
    mem = tmp_path / "m.mem"
    r = _chat(tmp_path, "Tom has a red ball.\n/memory\n/sleep\n/memory\n/quit\n", "--memory", mem)
    assert r.returncode == 0, r.stderr
    first, second = [b.split("]")[0] for b in r.stdout.split("[memory: ")[1:]]
    held = int(second.split(" tokens held")[0].replace(",", ""))
    assert held == read_memory(mem).n_tokens  # nothing was read after the second /memory
    n1 = int(first.split(" tokens held")[0].replace(",", ""))
    slept = int(r.stdout.split("[slept: replayed ")[1].split(" tokens")[0])
    assert held == n1 + slept
    assert f"{n1:,} read since the last save or load" in first
    assert f"/sleep would replay 2 turns ({slept:,} tokens); 0 replayed before" in first
    assert "0 read since the last save or load" in second  # /sleep saved it
    assert "/sleep would replay 0 turns (0 tokens); 2 replayed before" in second
    assert f"file: {mem} (exists" in second


# -- reset every N tokens -------------------------------------------------------------------------
def test_reset_every_bounds_what_the_state_holds(model):
    """reset_every=N: the state read in any pieces is the fresh state that read the tokens after
    the last multiple of N; its losses are InferenceModel.score's with the same reset_every.  The
    default never resets."""
    ids = model.tokenizer.encode("Once upon a time there was a little girl named Lily. She liked to play "
                                 "outside with her dog. One day they found a big red ball in the park.")
    n = 10
    assert len(ids) > 3 * n and len(ids) % n
    s = model.session(reset_every=n)
    for a, b in ((0, 5), (5, 21), (21, 22), (22, len(ids))):
        s.feed_ids(ids[a:b])
        assert s.state.n_tokens <= n
    tail = len(ids) % n or n
    ref = model.session()
    ref.feed_ids(ids[len(ids) - tail:])
    assert _arrays_equal(s, ref) and s.resets == (len(ids) - 1) // n
    # token by token, the next-token losses are the eval's
    s = Session(model, reset_every=n)
    loss = 0.0
    for i, t in enumerate(ids[:-1]):
        s.feed_ids([t])
        lg = s.last_logits.astype(np.float64)
        loss += float(np.log(np.exp(lg - lg.max()).sum()) + lg.max() - lg[ids[i + 1]])
    total, count = model.im.score(ids, reset_every=n)
    assert count == len(ids) - 1 and loss == pytest.approx(total, rel=1e-5)
    plain = model.session()
    plain.feed_ids(ids)
    assert plain.state.n_tokens == len(ids) and plain.resets == 0


def test_decay_blends_toward_the_trained_state(model):
    """decay=F: when the token count reaches a multiple of N, before the next token, W0 and b0 become
    init + F (current - init) and the pending gradient sums are scaled by F; tokens keep counting."""
    ids = model.tokenizer.encode("Once upon a time there was a little girl named Lily. She liked to play "
                                 "outside with her dog.")
    n = 13  # not a multiple of the mini-batch: a blend in the middle of one
    s = model.session(reset_every=n, decay=0.5)
    s.feed_ids(ids[:n + 3])
    ref = model.session()
    ref.feed_ids(ids[:n])
    init = model.im.new_state()
    st = ref.state
    for a, a0 in ((st.W0, init.W0), (st.b0, init.b0)):
        a[...] = a0 + np.float32(0.5) * (a - a0)
    st.Gb *= np.float32(0.5)
    st.Sb *= np.float32(0.5)
    ref.feed_ids(ids[n:n + 3])
    assert _arrays_equal(s, ref) and s.state.n_tokens == n + 3 and s.resets == 1
    for bad, msg in (({"reset_every": -1}, "whole number >= 0"), ({"reset_every": 4, "decay": 1.0}, "0 <= F < 1"),
                     ({"decay": 0.5}, "give reset_every")):
        with pytest.raises(ValueError, match=msg):
            model.session(**bad)


def test_reset_every_in_the_chat(tmp_path):
    mem = tmp_path / "m.mem"
    r = _chat(tmp_path, "Once upon a time there was a little girl named Lily who liked to play.\n/memory\n/quit\n",
              "--memory", mem, "--reset-every", "10", "-n", "12")
    assert r.returncode == 0, r.stderr
    assert "state: reset whenever it holds 10 tokens (--reset-every)" in r.stderr
    held = int(r.stdout.split("[memory: ")[1].split(" tokens held")[0])
    assert 0 < held <= 10 and read_memory(mem).n_tokens <= 10
    h = subprocess.run([sys.executable, "-m", "bitttt.infer", "--help"], capture_output=True, text=True,
                       env=_env(tmp_path), timeout=60).stdout
    assert "--reset-every N" in h and "--decay F" in h and "--no-log" in h and "/memory" in h
    # bad values: one line, nothing written
    (tmp_path / "bad").mkdir()
    for args, msg in ((("--reset-every", "-3"), "--reset-every N) must be a whole number"),
                      (("--decay", "0.5"), "give reset_every (--reset-every N) too"),
                      (("--reset-every", "8", "--decay", "1.5"), "0 <= F < 1")):
        r = _chat(tmp_path, "hello\n/quit\n", "--memory", tmp_path / "bad" / "m.mem", *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert list((tmp_path / "bad").iterdir()) == []
