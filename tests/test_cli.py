"""The `bitttt` command and its subcommands: --version, info, every --help, the trainer's settings
listed from the dataclass, --print-config and its spellings, presets, the pre-training estimate
and samples, eval on a prepared folder (the trainer's validation loss), export's default output,
file permissions, metadata without paths, generation flags, prepare on folders."""
import dataclasses
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bitttt
from bitttt import cli
from bitttt.trainer import PRESETS, TrainConfig, Trainer, preset_params

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), BITTTT_NUM_THREADS="1")
TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "mini_batch_size": 8}


def bitttt_cmd(*args, stdin=None, cwd=None, timeout=180):
    """`bitttt ARGS` as a user runs it (python -m bitttt is the same entry point as the console script)."""
    return subprocess.run([sys.executable, "-m", "bitttt", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=timeout)


def run_main(capsys, *args):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "red", "ball", "dog", "ran", "Tom", "Lily"]
    docs = [" ".join(rng.choice(words, 40)) + "." for _ in range(60)]
    (d / "a.txt").write_text("\n<|endoftext|>\n".join(docs[:40]) + "\n", encoding="utf-8")
    (d / "sub").mkdir()
    (d / "sub" / "b.md").write_text("\n<|endoftext|>\n".join(docs[40:]) + "\n", encoding="utf-8")
    (d / "sub" / "notes.csv").write_text("x,y\n1,2\n", encoding="utf-8")
    (d / ".hidden.txt").write_text("secret " * 50, encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "data"
    r = bitttt_cmd("prepare", corpus, "--out", out, "--vocab-size", "300", "--val-fraction", "0.2", "--no-progress")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


@pytest.fixture(scope="module")
def run_dir(prepared, tmp_path_factory):
    """A short run through `bitttt train`, plain log lines."""
    root = tmp_path_factory.mktemp("runs")
    data, _ = prepared
    r = bitttt_cmd("train", f"data={data}", f"out_dir={root}", "name=r", "--max_steps=6", "--eval-interval=3",
                   "ckpt_interval=6", "seq_len=32", "batch_size=4", "sample_tokens=8", "warmup_steps=1",
                   *(f"model.{k}={v}" for k, v in TINY.items()), "--no-progress")
    assert r.returncode == 0, r.stderr
    return root / "r", r


# -- the command -----------------------------------------------------------------------
def test_version_info_and_unknown_command(capsys):
    r = bitttt_cmd("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"bitttt {bitttt.__version__}"
    rc, out, _ = run_main(capsys, "info")
    assert rc == 0
    ci = bitttt.cpu_info()
    assert re.search(rf"^kernels\s+{ci['kernel']} in use; this CPU runs {', '.join(ci['available_kernels'])}$", out,
                     re.M), out
    assert re.search(rf"^threads\s+{ci['threads']} \(OpenMP", out, re.M)
    for extra in ("cuda", "serve", "studio", "mpi", "plot"):
        assert re.search(rf"^extra {extra}\s+", out, re.M), extra
    assert re.search(r"^devices\s+cpu", out, re.M) and "tinystories" in out
    rc, out, err = run_main(capsys, "trian")
    assert rc == 2 and "did you mean `bitttt train`" in err
    rc, out, _ = run_main(capsys)
    assert rc == 0 and all(c in out for c in cli.COMMANDS)


def test_shell_completion(tmp_path):
    import shutil

    if shutil.which("bash") is None:
        pytest.skip("no bash")
    r = bitttt_cmd("completion", "bash")
    assert r.returncode == 0, r.stderr
    (tmp_path / "c.sh").write_text(r.stdout + '''
t() { COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _bitttt_complete; echo "${COMPREPLY[*]}"; }
t bitttt tr
t bitttt train max_st
t bitttt train --print
t bitttt chat --mem
t bitttt eval --reset
''')
    out = subprocess.run(["bash", str(tmp_path / "c.sh")], capture_output=True, text=True, timeout=30)
    assert out.stdout.splitlines() == ["train", "max_steps=", "--print-config", "--memory", "--reset-every"], out


def test_console_script_declared():
    text = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^\[project\.scripts\]\nbitttt = "bitttt\.cli:main"$', text, re.M)


@pytest.mark.parametrize("cmd", ["prepare", "train", "chat", "run", "eval", "export", "info", "completion"])
def test_every_subcommand_has_help(capsys, cmd):
    rc, out, _ = run_main(capsys, cmd, "--help")
    assert rc == 0 and f"usage: bitttt {cmd}" in out
    rc2, out2, _ = run_main(capsys, "help", cmd)
    assert rc2 == 0 and out2 == out


def test_help_through_the_process():
    r = bitttt_cmd("chat", "--help")
    assert r.returncode == 0 and "usage: bitttt chat" in r.stdout and "--interactive" not in r.stdout


def test_serve_and_studio_dispatch(capsys, tmp_path, monkeypatch):
    for name in ("serve", "studio"):
        if not cli._has_module(cli.COMMANDS[name][0]):
            rc, _, err = run_main(capsys, name, "--port", "1")
            assert rc == 2 and "not available in this installation" in err
    # a module that is there gets the arguments
    (tmp_path / "fake_serve.py").write_text("got = []\ndef main(argv):\n    got.append(list(argv))\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "serve", ("fake_serve", "test"))
    rc, _, _ = run_main(capsys, "serve", "--port", "8123")
    import fake_serve

    assert rc == 3 and fake_serve.got == [["--port", "8123"]]
    # a main() that reads sys.argv itself, and a package run as `python -m` (no main)
    (tmp_path / "fake_studio.py").write_text("import sys\ngot = []\ndef main():\n    got.append(sys.argv[1:])\n")
    monkeypatch.setitem(cli.COMMANDS, "studio", ("fake_studio", "test"))
    rc, _, _ = run_main(capsys, "studio", "--open")
    import fake_studio

    assert rc == 0 and fake_studio.got == [["--open"]]
    (tmp_path / "fake_pkg").mkdir()
    (tmp_path / "fake_pkg" / "__init__.py").write_text("")
    (tmp_path / "fake_pkg" / "__main__.py").write_text("import sys\nprint('ran', sys.argv[1:])\nsys.exit(4)\n")
    monkeypatch.setitem(cli.COMMANDS, "serve", ("fake_pkg", "test"))
    rc, out, _ = run_main(capsys, "serve", "x")
    assert rc == 4 and "ran ['x']" in out


# -- the trainer's settings -----------------------------------------------------------------
def test_train_help_lists_every_field_from_the_dataclass(capsys):
    rc, out, _ = run_main(capsys, "train", "--help")
    assert rc == 0
    fields = dataclasses.fields(TrainConfig)
    assert len(fields) >= 30
    for f in fields:
        meaning = f.metadata.get("help", "")
        assert meaning, f"TrainConfig.{f.name} has no help text"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = "(below)" if f.name == "model" else json.dumps(default)
        line = re.search(rf"^  {re.escape(f.name)} +{re.escape(shown)}(?: +(.*))?$", out, re.M)
        assert line, f"{f.name} with default {shown} not listed"
        first_words = " ".join(meaning.split()[:3])
        assert first_words in " ".join(out.split()), f.name
    for name in PRESETS:
        assert re.search(rf"^  {name} +D={PRESETS[name]['hidden_size']}, .*{preset_params(name, 2048) / 1e6:.2f}M",
                         out, re.M), name


def test_print_config_and_key_spellings(capsys):
    rc, out, _ = run_main(capsys, "train", "--max_steps=10", "--eval-interval", "5", "lr=1e-3", "--model.num_layers=3",
                          "--print-config")
    assert rc == 0
    cfg = json.loads(out)
    assert (cfg["max_steps"], cfg["eval_interval"], cfg["lr"], cfg["model"]["num_layers"]) == (10, 5, 1e-3, 3)
    rc, out, _ = run_main(capsys, "train", "preset=medium", "model.num_layers=2", "--print-config")
    cfg = json.loads(out)
    assert cfg["preset"] == "medium" and cfg["model"]["hidden_size"] == 512 and cfg["model"]["num_layers"] == 2
    rc, _, err = run_main(capsys, "train", "preset=huge", "--print-config")
    assert rc == 2 and "train.preset must be one of tiny, small, medium" in err
    rc, out, _ = run_main(capsys, "train", "seed=3", "--no-progress", "lr=2e-3", "--print-config")
    assert rc == 0 and (json.loads(out)["seed"], json.loads(out)["lr"]) == (3, 2e-3)  # key=value around options
    rc, _, err = run_main(capsys, "train", "--max_stepz=3")
    assert rc == 2
    rc, _, err = run_main(capsys, "train", "--max_steps")
    assert rc == 2 and "--max_steps needs a value" in err
    rc, out, _ = run_main(capsys, "train", "--model.ternary", "--print-config")
    assert rc == 0 and json.loads(out)["model"]["ternary"] is True
    assert TrainConfig(preset="small").model["hidden_size"] == 256
    assert TrainConfig.from_dict({"preset": "small", "model": {"num_layers": 2}}).model["num_layers"] == 2


def test_train_prints_estimate_and_samples(run_dir):
    rd, r = run_dir
    err = r.stderr
    est = re.search(r"estimate from a trial step: ([\d.]+) s per step, peak RAM ([\d,]+) MiB \(process RSS\); "
                    r"6 steps in about", err)
    assert est and float(est.group(1)) > 0 and int(est.group(2).replace(",", "")) > 10, err
    assert re.search(r"; [\d,]+ parameters;", err) and "4 x 32 tokens x 1 accumulation = 128 tokens per step" in err
    assert re.search(r"RSS \d+ MiB, system RAM \d+% used", err)
    assert re.search(r"^step +\d+ \| .*\| ETA \d+:\d\d$", err, re.M)
    # a plain-text sample after each evaluation (two), the same text in the log
    evals = re.findall(r"eval step (\d+):.*\n((?:  \| .*\n)+)", err)
    assert [e[0] for e in evals] == ["3", "6"], err
    log = [json.loads(x) for x in (rd / "log.jsonl").read_text().splitlines()]
    samples = [x for x in log if "sample" in x]
    assert [x["step"] for x in samples] == [3, 6] and all(isinstance(x["sample"], str) for x in samples)
    assert "\\x" not in err and "sample: '" not in r.stdout  # text, not a Python repr
    assert "sample:\n  | " in r.stdout


def test_estimate_leaves_the_run_unchanged(prepared, tmp_path):
    data, _ = prepared
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path), seq_len=32, batch_size=4, model=dict(TINY), max_steps=3,
                      max_time=1.0)
    a, b = Trainer(cfg, progress=False), Trainer(cfg, progress=False)
    est = a.estimate()
    assert est["tokens_per_step"] == 128 and est["params"] == a.model.num_params()
    assert est["limited_by"] in ("max_time", "max_steps") and est["steps"] <= 3
    # the progress bar's length (and so its ETA) follows max_time: at 1 s per step with 0.5 s left, one more step
    a.step, a.elapsed = 2, 0.5
    assert a._bar_total(0, 2.0) == 3 and a._eta(0, 2.0) == "0:01"
    a.cfg.max_time, a.elapsed = 100.0, 2.0
    assert a._bar_total(0, 2.0) == 3  # max_steps comes first
    a.step, a.elapsed = 0, 0.0
    la = [a.train_step() for _ in range(2)]
    lb = [b.train_step() for _ in range(2)]
    assert la == lb
    for k in a.model.params:
        assert np.array_equal(a.model.params[k], b.model.params[k])


# -- eval / export ---------------------------------------------------------------------
def test_eval_on_a_prepared_folder_is_the_trainers_validation_loss(prepared, tmp_path, capsys):
    data, _ = prepared
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path), seq_len=32, batch_size=4, model=dict(TINY), max_steps=20,
                      warmup_steps=1)
    tr = Trainer(cfg, progress=False)
    for _ in range(8):
        tr.train_step()
    n_windows = (tr.val_data.n_tokens - 1) // 32
    ev = tr.evaluate(max_batches=10**6)
    ck = tr.save(str(tmp_path / "ck.safetensors"))
    rc, out, err = run_main(capsys, "eval", "-m", ck, "--data", data, "--max-tokens", n_windows * 32)
    assert rc == 0, err
    assert "reset every 32 tokens (the training seq_len of the model)" in err and "val split" in err
    loss = float(re.search(r"loss ([\d.]+) nats/token", out).group(1))
    assert f"tokens {n_windows * 32}," in out
    assert loss == pytest.approx(ev["val_loss"], rel=1e-3)  # measured: 1e-5 (the 4 printed decimals)
    # a folder that is not prepared, and a file: clear errors, no traceback
    (tmp_path / "plain").mkdir()
    rc, _, err = run_main(capsys, "eval", "-m", ck, "--data", tmp_path / "plain")
    assert rc == 2 and "not one made by `bitttt prepare`" in err


def test_print_config_of_a_resumed_run(run_dir, capsys):
    rd, _ = run_dir
    rc, out, _ = run_main(capsys, "train", "--resume", rd, "--max_steps=99", "--print-config")
    assert rc == 0 and json.loads(out)["max_steps"] == 99 and json.loads(out)["seq_len"] == 32
    rc, _, err = run_main(capsys, "train", "--resume", rd, "lr=5", "--print-config")
    assert rc == 2 and "cannot change lr when resuming" in err


def test_export_format_t1_decodes_like_t2(run_dir, tmp_path, capsys):
    """export --format t1: 1.6 bits per weight, a smaller file, the same logits as the default t2."""
    from bitttt.session import InferenceModel

    rd, _ = run_dir
    files = {}
    for fmt in ("t2", "t1"):
        files[fmt] = tmp_path / f"{fmt}.safetensors"
        rc, out, err = run_main(capsys, "export", rd, "--out", files[fmt], *(["--format", fmt] if fmt == "t1" else []))
        assert rc == 0, err
        assert f"weights {fmt}" in out
    assert files["t1"].stat().st_size < files["t2"].stat().st_size
    logits = []
    for p in files.values():
        im = InferenceModel.from_file(str(p))
        st = im.new_state()
        logits.append(np.concatenate([im.feed(st, [5, 9, 2, 7], all_logits=True), im.feed(st, [3])[None]]))
    assert np.array_equal(logits[0], logits[1])


def test_export_default_out_permissions_and_no_paths(run_dir, tmp_path, capsys):
    rd, _ = run_dir
    old = os.umask(0o022)
    try:
        rc, out, err = run_main(capsys, "export", rd)
        assert rc == 0, err
        model = rd / "model.safetensors"
        assert model.exists() and stat.S_IMODE(model.stat().st_mode) == 0o644
        assert "trained on sequences of 32 tokens" in out
        from bitttt.formats.safetensors import read_metadata

        meta = read_metadata(str(model))
        for k, v in meta.items():
            assert str(rd) not in v and str(tmp_path) not in v and not v.startswith("/"), k
        assert meta["seq_len"] == "32" and meta["source"] == "best.safetensors"
        # eval takes that seq_len from the model file
        (tmp_path / "t.txt").write_text("the cat sat on a mat. " * 20, encoding="utf-8")
        rc, _, err = run_main(capsys, "eval", "-m", model, "--data", tmp_path / "t.txt")
        assert rc == 0 and "reset every 32 tokens" in err
        # a file that is not a model is never replaced without --force
        (tmp_path / "precious.safetensors").write_bytes(b"mine")
        rc, _, err = run_main(capsys, "export", rd, "--out", tmp_path / "precious.safetensors")
        assert rc == 2 and "not a bitttt model file" in err
        assert (tmp_path / "precious.safetensors").read_bytes() == b"mine"
        # checkpoints and memory files get the umask's permissions too
        ck = next((rd / "checkpoints").glob("step_*.safetensors"))
        assert stat.S_IMODE(ck.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_atomic_files_follow_the_umask_and_keep_a_replaced_files_mode(tmp_path):
    from bitttt.fileio import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a", b"1")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
        os.chmod(tmp_path / "a", 0o604)
        atomic_write_bytes(tmp_path / "a", b"2")
        assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o604 and (tmp_path / "a").read_bytes() == b"2"
    finally:
        os.umask(old)


# -- the API's names and reprs -------------------------------------------------------------
def test_load_names_the_shipped_model_and_reprs_count_parameters():
    m = bitttt.load("tinystories")
    n = bitttt.BitLlama(m.config).num_params()
    assert m.num_params() == m.im.num_params() == n
    assert f"{n:,} parameters" in repr(m) and f"{n:,} parameters" in repr(m.im)
    assert "tinystories-ternary.safetensors" in repr(m)
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        bitttt.load("no-such-model")


# -- generation flags ------------------------------------------------------------------
def test_generation_flags(tmp_path):
    r = bitttt_cmd("run", "-f", "-", "-p", "Once upon a time", "-n", "4", "-s", "1", "--temp", "0",
                   stdin="there was a cat")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Once upon a time\nthere was a cat")
    r = bitttt_cmd("run", "-p", "Once upon a time", "-n", "-1", "-s", "1", "-t", "64")
    assert r.returncode == 0, r.stderr
    assert "stopped by end of text" in r.stderr and "64 threads on" in r.stderr
    r = bitttt_cmd("run", "-p", "x", "-n", "2", "--device", "cuda")
    if "cuda" not in __import__("bitttt.infer", fromlist=["x"]).available_devices():  # no GPU: the CPU, said so
        assert r.returncode == 0 and "warning: CUDA is not available" in r.stderr and "running on the CPU" in r.stderr
    # `bitttt run | head`: a quiet stop, the memory still saved
    from cli_models import never_ending_checkpoint

    mem = tmp_path / "bp.mem"
    p = subprocess.Popen([sys.executable, "-m", "bitttt", "run", "-m", str(never_ending_checkpoint(tmp_path)), "-n",
                          "-1", "--temp", "0", "-p", "the", "--memory", str(mem)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    p.stdout.read(10)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 141 and "Traceback" not in err and "stopped by the reader of stdout" in err
    assert mem.exists()
    # Ctrl+C (SIGINT) stops a one-shot run at the next token: its statistics, the memory saved, status 130
    import signal
    import time

    mem2 = tmp_path / "int.mem"
    p = subprocess.Popen([sys.executable, "-m", "bitttt", "run", "-m", str(tmp_path / "m.safetensors"), "-n", "-1",
                          "--temp", "0", "-p", "the", "--memory", str(mem2)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    p.stdout.read(2000)  # it is streaming
    end = time.monotonic() + 30
    while p.poll() is None and time.monotonic() < end:
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=2)
        except subprocess.TimeoutExpired:
            p.stdout.read1(65536)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130 and "stopped by Ctrl+C" in err.decode() and "Traceback" not in err.decode()
    assert mem2.exists()
    r = bitttt_cmd("run", "-n", "-2", "-p", "x")
    assert r.returncode == 2 and "-n must be >= 0, or -1" in r.stderr
    r = bitttt_cmd("chat", "-f", "-", stdin="hi")
    assert r.returncode == 2 and "-f - reads the prompt from stdin" in r.stderr


# -- prepare ----------------------------------------------------------------------------
def test_prepare_takes_folders_and_reports_the_split(prepared, corpus, tmp_path):
    data, out = prepared
    man = json.loads((data / "manifest.json").read_text())
    names = sorted(os.path.basename(s["path"]) for s in man["sources"])
    assert names == ["a.txt", "b.md"]  # recursive; .csv and hidden files left out
    sp = man["splits"]
    assert f"train {sp['train']['tokens']:,} tokens in {sp['train']['documents']} documents" in out
    assert f"val {sp['val']['tokens']:,} tokens in {sp['val']['documents']} documents" in out
    assert "60 documents from 2 files" in out
    # one file, one document: the report says how the split was made
    r = bitttt_cmd("prepare", corpus / "sub" / "b.md", "--out", tmp_path / "one", "--vocab-size", "300",
                   "--no-progress", "--include", "*.md")
    assert r.returncode == 0, r.stderr
    r = bitttt_cmd("prepare", corpus, "--include", "*.rst", "--out", tmp_path / "none", "--no-progress")
    assert r.returncode == 2 and "holds no file matching *.rst" in r.stderr
    assert not (tmp_path / "none").exists()
    one = tmp_path / "single.txt"
    one.write_text("the cat sat on the mat. " * 400, encoding="utf-8")
    r = bitttt_cmd("prepare", one, "--out", tmp_path / "single", "--tokenizer", data / "tokenizer.model",
                   "--no-progress")
    assert r.returncode == 0, r.stderr
    assert re.search(r"1 document from 1 file; train [\d,]+ tokens, val [\d,]+ tokens \(one document: its last "
                     r"[\d,]+ tokens are the validation split\)", r.stdout), r.stdout


def test_chat_never_drops_the_memory(tmp_path):
    """Piped chat: an unterminated \"\"\" block at the end of input is still a message, and a memory
    path that cannot be written sends the memory to the user's data folder, said plainly."""
    env = dict(ENV, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "share"))
    bad = tmp_path / "file" / "x.mem"
    (tmp_path / "file").write_text("a file, not a folder")
    r = subprocess.run([sys.executable, "-m", "bitttt", "chat", "-n", "2", "-s", "1", "--memory", str(bad)],
                       input='hello\n"""\nline a\nline b', capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    saved = list((tmp_path / "share" / "bitttt").glob("unsaved-*.mem.safetensors"))
    assert len(saved) == 1 and f"could not write {bad}" in r.stderr and str(saved[0]) in r.stderr
    log = (tmp_path / "share" / "bitttt" / "tinystories-ternary.memory" / "conversations.jsonl").read_text()
    users = [json.loads(x)["text"] for x in log.splitlines() if json.loads(x)["role"] == "user"]
    assert users == ["hello", "line a\nline b"]


def test_device_reports_what_the_backend_offers(monkeypatch, capsys):
    from bitttt import backend, infer

    assert infer.available_devices() == ["cpu"] or "cuda" in backend.NAMES
    real_get = backend.get
    monkeypatch.setattr(backend, "NAMES", (*backend.NAMES, "cuda"))

    def broken(name):
        raise ImportError("no driver")

    monkeypatch.setattr(backend, "get", broken)
    assert infer.available_devices() == ["cpu"]  # a cuda module that cannot load is not offered
    monkeypatch.setattr(backend, "get", lambda name: object())
    assert infer.available_devices() == ["cpu", "cuda"]
    monkeypatch.setattr(backend, "get", lambda name: object() if name == "cuda" else real_get(name))
    rc, _, err = run_main(capsys, "run", "-p", "x", "-n", "2", "--device", "cuda")
    assert rc == 0 and "CUDA is not available" in err and "running on the CPU" in err  # the device itself is absent
    rc, _, err = run_main(capsys, "run", "-p", "x", "--device", "tpu")
    assert rc == 2 and "--device tpu: unknown; available in this build: cpu, cuda" in err
