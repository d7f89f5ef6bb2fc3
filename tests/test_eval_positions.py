"""Evaluation by position (bitttt.positions, `python -m bitttt.eval --by-position`), the token
streams it reads (bitttt.tokenstream) and the loss-by-position PNG (bitttt.plotting).
Runs on the shipped model and small texts written here; no shared data needed."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitttt
from bitttt import eval as eval_cmd
from bitttt.positions import PositionStats, default_edges, label, loss_by_position, parse_buckets
from bitttt.tokenstream import take, text_pieces

REPO = Path(__file__).resolve().parents[1]
SHIPPED = str(REPO / "bitttt" / "models" / "tinystories-ternary.safetensors")
STORY = ("Once upon a time, there was a little girl named Lily. She liked to play with her red ball in the park.\n"
         "One day, Tom came to the park too. \"Can I play?\" he asked.\n\n  Lily smiled and said yes.\n"
         "They played all day.\r\nThe end.\n<|endoftext|>\nTom had a big dog. The dog ran fast,\tvery fast!\n"
         "   \n\n\nIt was fun \u2581 and caf\u00e9 na\u00efve \u00fcber \U0001f600 12345.\n")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    return bitttt.load(SHIPPED)


@pytest.fixture(scope="module")
def ids(model):
    return [model.tokenizer.eos_id] + model.tokenizer.encode(STORY * 2)  # about 190 tokens


def run(capsys, *args):
    rc = eval_cmd.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- buckets -----------------------------------------------------------------------------
def test_bucket_assignment_is_exact_on_synthetic_losses():
    rng = np.random.default_rng(0)
    losses = rng.random(1000) * 5
    st = PositionStats([0, 3, 10, 256, 600], per_token=True)
    for part in np.split(losses, [1, 2, 7, 300, 301, 999]):  # pieces across every edge, empty ones too
        st.add(part)
    r = st.result()
    want = [(0, 3), (3, 10), (10, 256), (256, 600), (600, 1000)]
    assert [(b["start"], b["end"]) for b in r["buckets"]] == want
    assert [b["label"] for b in r["buckets"]] == ["0-3", "3-10", "10-256", "256-600", "600-"]
    for b, (s, e) in zip(r["buckets"], want):
        assert b["tokens"] == e - s
        assert b["loss"] == pytest.approx(losses[s:e].mean(), rel=1e-13)
    assert r["tokens"] == 1000 and np.array_equal(r["losses"], losses)
    assert sum(c[2] for c in r["curve"]) == 1000
    assert all(a[0] < b[0] for a, b in zip(r["curve"], r["curve"][1:]))  # positions increase
    # a bucket without tokens is left out
    st = PositionStats([0, 10, 20])
    st.add(np.ones(5))
    assert [b["label"] for b in st.result()["buckets"]] == ["0-10"] and st.result()["buckets"][0]["end"] == 5


def test_default_buckets_and_parsing():
    assert default_edges(1) == [0, 256]
    assert default_edges(65536) == [0, 256, 1024, 4096, 16384, 65536]
    assert default_edges(65537)[-1] == 262144
    assert [label(a, b) for a, b in [(0, 256), (256, 1024), (1024, 4096), (65536, 262144), (262144, 1 << 20)]] == \
        ["0-256", "256-1k", "1k-4k", "64k-256k", "256k-1M"]
    assert parse_buckets("256,1k, 4K,1M") == [0, 256, 1024, 4096, 1 << 20]
    for bad in ["", "abc", "256,100", "0", "-5", "1.5k", "256,,1k"]:
        with pytest.raises(ValueError, match="--buckets"):
            parse_buckets(bad)


# -- losses by position on a real model ------------------------------------------------
def test_whole_loss_is_the_weighted_mean_of_the_buckets_and_scores_bits(model, ids):
    for reset in (0, 32):
        r = loss_by_position(model, ids, reset, [0, 16, 64, 128])
        total, n = model.im.score(ids, reset)
        assert (r["total_nats"], r["tokens"]) == (total, n)  # the same bits as the whole-text loss
        assert r["loss"] == total / n and r["reset_every"] == reset
        assert sum(b["tokens"] for b in r["buckets"]) == n == len(ids) - 1
        assert sum(b["tokens"] * b["loss"] for b in r["buckets"]) / n == pytest.approx(r["loss"], rel=1e-12)
        # default buckets: 0-256 only, for a text this short
        d = loss_by_position(model.im, ids, reset)
        assert [b["label"] for b in d["buckets"]] == ["0-256"] and d["total_nats"] == total


def test_a_reset_read_is_each_window_scored_on_its_own(model, ids):
    w = 32
    r = loss_by_position(model, ids, w, per_token=True)["losses"]
    c = loss_by_position(model, ids, 0, per_token=True)["losses"]
    assert len(r) == len(ids) - 1
    for s in range(0, len(ids) - 1, w):
        alone = np.concatenate(list(model.im.token_losses([ids[s:s + w + 1]])))
        assert np.array_equal(r[s:s + w], alone), s
    assert np.array_equal(r[:w], c[:w]) and not np.array_equal(r[w:], c[w:])


def test_pieces_read_one_at_a_time_give_the_same_bits(model, ids):
    whole = loss_by_position(model, ids, 40, [0, 50], per_token=True)
    a = np.asarray(ids)
    pieces = (p for p in np.split(a, [1, 2, 50, 51, 130]))  # a generator: read once, in order
    parts = loss_by_position(model, pieces, 40, [0, 50], per_token=True)
    assert parts["total_nats"] == whole["total_nats"] and np.array_equal(parts["losses"], whole["losses"])
    assert list(take([[1, 2, 3], [4, 5], [6]], 4)) == [[1, 2, 3], [4]]


# -- token streams ------------------------------------------------------------------------
def test_newline_cuts_give_the_ids_of_the_whole_text_on_the_shipped_tokenizer(model, tmp_path):
    tok = model.tokenizer
    text = STORY * 20
    f = tmp_path / "t.txt"
    f.write_bytes(text.encode("utf-8"))
    whole = [tok.eos_id] + tok.encode(text)
    for block in (1, 7, 64, 300, 64 * 1024):  # a cut after (nearly) every newline, ... , one block
        pieces = list(text_pieces(str(f), tok, block=block))
        if block == 1:
            assert len(pieces) > 100
        assert [i for p in pieces for i in p] == whole, block


def test_a_long_line_is_cut_and_reads_back_the_same_text(model, tmp_path, monkeypatch):
    from bitttt import tokenstream

    monkeypatch.setattr(tokenstream, "MAX_LINE", 100)
    tok = model.tokenizer
    text = ("word " * 80) + "\u00e9" * 120 + "end"  # no newline: cut before a space, then inside no space
    f = tmp_path / "long.txt"
    f.write_text(text, encoding="utf-8")
    pieces = list(text_pieces(str(f), tok, block=16))
    assert len(pieces) > 3
    assert tok.decode([i for p in pieces[1:] for i in p]) == text


# -- the command --------------------------------------------------------------------------
@pytest.fixture()
def story_file(tmp_path):
    f = tmp_path / "story.txt"
    f.write_text(STORY * 2, encoding="utf-8")
    return f


def test_by_position_prints_both_reads_and_json(story_file, model, ids, capsys):
    rc, out, err = run(capsys, "-m", SHIPPED, "--data", story_file, "--reset-every", 32, "--buckets", "16,64,128",
                       "-t", 1)
    assert rc == 0, err
    assert "read twice: never reset, and reset every 32 tokens (--reset-every)" in err and "1 thread(s)" in err
    lines = out.splitlines()
    assert lines[1].split() == ["position", "tokens", "continuous", "reset/32", "difference"]
    assert [ln.split()[0] for ln in lines[2:7]] == ["0-16", "16-64", "64-128", "128-", "whole"]
    assert "continuous (never reset): tokens" in out and "reset (reset every 32 tokens): tokens" in out
    rc, js, err = run(capsys, "-m", SHIPPED, "--data", story_file, "--reset-every", 32, "--buckets", "16,64,128",
                      "--json")
    assert rc == 0, err
    j = json.loads(js)
    n = len(ids) - 1
    assert j["tokens"] == n and j["bytes"] == len((STORY * 2).encode()) and j["threads"] >= 1
    assert set(j["runs"]) == {"continuous", "reset"} and j["runs"]["reset"]["reset_every"] == 32
    for name, reset in (("continuous", 0), ("reset", 32)):
        total, _ = model.im.score(ids, reset)
        r = j["runs"][name]
        assert r["total_nats"] == total and r["loss"] == total / n
        assert [b["tokens"] for b in r["buckets"]] == [16, 48, 64, n - 128]
        assert r["bits_per_byte"] == pytest.approx(total / np.log(2) / j["bytes"])
        row = next(ln for ln in lines if ln.startswith("whole"))
        assert f"{r['loss']:.4f}" in row
    # the plain command (no --by-position) prints the reset read as before, the same figure
    rc, out, _ = run(capsys, "-m", SHIPPED, "--data", story_file, "--reset-every", 32)
    assert rc == 0 and out.startswith(f"tokens {n}, bytes {j['bytes']}: loss {j['runs']['reset']['loss']:.4f}")
    # --max-tokens cuts the stream; --reset-every 0 --by-position: the continuous read only
    rc, js, _ = run(capsys, "-m", SHIPPED, "--data", story_file, "--reset-every", 0, "--by-position",
                    "--max-tokens", 50, "--json")
    j = json.loads(js)
    assert rc == 0 and list(j["runs"]) == ["continuous"] and j["tokens"] == 50
    assert j["runs"]["continuous"]["total_nats"] == model.im.score(ids[:51], 0)[0]


def test_by_position_on_a_prepared_folder(model, tmp_path, capsys):
    from bitttt.data import TokenData, prepare

    docs = [STORY.replace("Lily", name) for name in ("Ann", "Ben", "Sue", "Max", "Kim", "Joe")]
    (tmp_path / "c.txt").write_text("\n<|endoftext|>\n".join(docs), encoding="utf-8")
    prepare([str(tmp_path / "c.txt")], tmp_path / "prep", tokenizer=model.tokenizer, val_fraction=0.5,
            progress=False)
    val = [int(t) for t in TokenData(str(tmp_path / "prep"), "val").tokens]
    rc, js, err = run(capsys, "-m", SHIPPED, "--data", tmp_path / "prep", "--buckets", "64", "--json")
    assert rc == 0, err
    assert "val split" in err and "reset every 256 tokens (the training seq_len of the model)" in err
    j = json.loads(js)
    assert j["split"] == "val" and j["tokens"] == len(val) - 1
    assert j["runs"]["continuous"]["total_nats"] == model.im.score(val, 0)[0]
    assert j["runs"]["reset"]["total_nats"] == model.im.score(val, 256)[0]


def test_plot_writes_a_png_that_matplotlib_reads_back(story_file, tmp_path, capsys):
    mpimg = pytest.importorskip("matplotlib.image")
    png = tmp_path / "curve.png"
    rc, out, err = run(capsys, "-m", SHIPPED, "--data", story_file, "--plot", png, "--reset-every", 32)
    assert rc == 0, err
    assert f"plot written to {png}" in out and "position" in out  # --plot implies --by-position
    assert png.read_bytes()[:8] == PNG
    img = mpimg.imread(str(png))
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 500
    assert img[..., :3].std() > 0.05  # something is drawn, not a blank page
    assert sorted(os.listdir(tmp_path)) == sorted(["curve.png", "story.txt"])  # no temporary files left


def test_plot_without_matplotlib_is_a_one_line_error(story_file, tmp_path, capsys, monkeypatch):
    for name in ("matplotlib", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as when it is not installed
    rc, out, err = run(capsys, "-m", SHIPPED, "--data", story_file, "--plot", tmp_path / "c.png")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "pip install 'bitttt[plot]'" in err
    assert not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("args, what", [
    (["--buckets", "256,abc"], "'abc' is not a token count"),
    (["--buckets", "1k,256"], "positive and increasing"),
    (["--plot", "curve.jpg"], "ending in .png"),
    (["--plot", "nowhere/curve.png"], "no such folder"),
    (["--plot", "."], "ending in .png"),
    (["--plot", "sub.png"], "a folder"),
    (["--reset-every", "-1", "--by-position"], "must be >= 0"),
    (["--max-tokens", "-3", "--by-position"], "must be >= 0"),
    (["--data", "empty.txt"], "no text to evaluate"),
    (["--data", "missing.txt"], "no such file or folder"),
    (["--data", "bad.txt"], "not UTF-8 text (invalid byte at offset 5)"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(args, what, story_file, tmp_path, capsys,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.txt").write_bytes(b"hello\xffworld\n")
    (tmp_path / "sub.png").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    if "--data" not in args:
        args = ["--data", str(story_file), *args]
    rc, out, err = run(capsys, "-m", SHIPPED, *args)
    assert rc == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and what in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_the_module_runs_as_a_command_with_one_line_errors(story_file):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "bitttt.eval", "-m", SHIPPED, "--data", str(story_file),
                        "--buckets", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "error: --buckets: 'x' is not a token count (256, 1k, 4k, 1M ...)"


def test_bench_memory_runs_on_small_texts(tmp_path):
    pytest.importorskip("matplotlib")
    for name in ("tinystories_valid_sample.txt", "war_and_peace.txt"):  # stand-ins: the real ones are not needed
        (tmp_path / name).write_text(STORY * 5, encoding="utf-8")
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_memory.py"), "--data", str(tmp_path),
                        "--tokens", "300", "--reset-every", "64", "--no-append", "--plot", str(tmp_path / "png"),
                        "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("| position | tokens | continuous | reset every 64 | difference |") == 2
    assert r.stdout.count("| whole | 300 |") == 2 and "| 256-1k | 44 |" in r.stdout
    pngs = sorted(os.listdir(tmp_path / "png"))
    assert pngs == ["tinystories-ternary-tinystories_valid_sample.png", "tinystories-ternary-war_and_peace.png"]
    assert all((tmp_path / "png" / p).read_bytes()[:8] == PNG for p in pngs)
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench_memory.py"), "--data", str(tmp_path / "none"),
                        "--no-append"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
