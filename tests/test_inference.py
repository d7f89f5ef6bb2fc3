"""Inference: decoding with the TTT state against the full forward, memory files, sampling,
streaming, the CLI and its chat."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from decode_check import assert_greedy_matches_forward

from bitttt import BitLlama, BitLlamaConfig
from bitttt.formats import MemoryFileError
from bitttt.generation import Model
from bitttt.session import InferenceModel

REPO = Path(__file__).resolve().parents[1]


def _model(ternary=True, seed=0, vocab=300, peaky=True, **kw):
    cfg = BitLlamaConfig(vocab_size=vocab, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96,
                         mini_batch_size=8, ternary=ternary, **kw)
    m = BitLlama(cfg)
    m.init_weights(seed)
    rng = np.random.default_rng(seed + 1)
    # a trained-looking model: larger embeddings and TTT parameters away from their init
    if peaky:
        m.params["embed.weight"] *= 40
    for k, v in m.params.items():
        if k.endswith(("learnable_token_idx", "learnable_ttt_lr_bias", "ttt_norm_bias")):
            m.params[k] = (v + rng.normal(0, 0.3, v.shape)).astype(np.float32)
    return m


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from bitttt.data import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "café", "naïve", "über", "日本", "語", "red", "ball"]
    text = "\n".join(" ".join(rng.choice(words, 8)) for _ in range(400))
    (d / "t.txt").write_text(text, encoding="utf-8")
    return train_tokenizer([str(d / "t.txt")], vocab_size=300)


@pytest.mark.parametrize("ternary", [True, False])
def test_feed_matches_full_forward(ternary):
    m = _model(ternary)
    im = InferenceModel.from_model(m)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 300, 45)  # not a multiple of K = 8
    ref = m.forward(ids)
    st = im.new_state()
    got = im.feed(st, ids, all_logits=True)
    assert np.abs(got - ref).max() <= 2e-3 * np.abs(ref).max()
    # the same in odd chunks, crossing mini-batch boundaries anywhere, and token by token (the
    # decode step): the inner loop is the same C code, so the bits are the same
    st2 = im.new_state()
    parts, i = [], 0
    for n in (1, 3, 8, 13, 1, 19):
        parts.append(im.feed(st2, ids[i:i + n], all_logits=True))
        i += n
    assert i == 45 and st2.pos == 45 % 8 and st2.n_tokens == 45
    assert np.array_equal(np.concatenate(parts), got)
    st3 = im.new_state()
    one = np.stack([im.feed(st3, [t]) for t in ids])
    assert np.array_equal(one, got)
    for other in (st2, st3):
        for name in ("W0", "b0", "Kb", "Gb", "Sb"):
            assert np.array_equal(getattr(st, name), getattr(other, name)), name
    assert st3.pos == st.pos and st3.n_tokens == 45


def test_decode_does_not_depend_on_thread_count():
    import bitttt

    im = InferenceModel.from_model(_model(True, seed=9))
    ids = np.random.default_rng(3).integers(0, 300, 19)
    runs, old = [], bitttt.get_num_threads()
    floor = bitttt._core.decode_min_parallel_bytes(0)  # this small model would run on one thread
    try:
        for n in (1, 2, 3):
            bitttt.set_num_threads(n)
            st = im.new_state()
            im.feed(st, ids[:5])
            runs.append((np.stack([im.feed(st, [t]) for t in ids[5:]]), st))
    finally:
        bitttt.set_num_threads(old)
        bitttt._core.decode_min_parallel_bytes(floor)
    for logits, st in runs[1:]:
        assert np.array_equal(logits, runs[0][0])
        for name in ("W0", "b0", "Kb", "Gb", "Sb"):
            assert np.array_equal(getattr(st, name), getattr(runs[0][1], name)), name


def test_sessions_decode_in_parallel_threads():
    """Sessions of one model in several Python threads (the decoder releases the GIL and has
    one scratch buffer): each gets what it gets alone."""
    import threading

    im = InferenceModel.from_model(_model(True, seed=10))
    prompts = [np.random.default_rng(s).integers(0, 300, 7) for s in range(4)]

    def run(p):
        st = im.new_state()
        logits = im.feed(st, p)
        out = []
        for _ in range(25):
            out.append(int(np.argmax(logits)))
            logits = im.feed(st, [out[-1]])
        return out

    alone = [run(p) for p in prompts]
    got = [None] * 4

    def work(i):
        got[i] = run(prompts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == alone


def test_greedy_decode_equals_full_forward_argmax():
    m = _model(True, seed=3)
    im = InferenceModel.from_model(m)
    prompt = list(np.random.default_rng(1).integers(0, 300, 11))
    st = im.new_state()
    assert_greedy_matches_forward(m, im, st, prompt)


def test_memory_save_load_continue(tokenizer, tmp_path):
    model = Model(InferenceModel.from_model(_model(True, seed=4), tokenizer))
    a = model.session()
    a.feed("the cat sat on a mat, the red ball")
    a.save_memory(str(tmp_path / "m.mem"))
    n_read = a.state.n_tokens
    rest_a = a.generate(" and", temperature=0.9, seed=7, max_tokens=30)
    b = model.session()
    b.load_memory(str(tmp_path / "m.mem"))
    assert b.state.n_tokens == n_read > 0
    rest_b = b.generate(" and", temperature=0.9, seed=7, max_tokens=30)
    assert rest_a == rest_b and len(rest_a) > 0
    # a memory of another model is refused with a clear message
    other = Model(InferenceModel.from_model(_model(True, seed=5), tokenizer))
    with pytest.raises(MemoryFileError, match="belongs to another model"):
        other.session().load_memory(str(tmp_path / "m.mem"))
    (tmp_path / "bad.mem").write_bytes(b"garbage")
    with pytest.raises(MemoryFileError, match="bad.mem"):
        model.session().load_memory(str(tmp_path / "bad.mem"))


def test_memory_file_of_the_first_format_still_loads(tmp_path):
    """bitttt-memory/1 files held the gradient sum as a dense SW: it is factored on load."""
    from bitttt.formats import write_safetensors
    from bitttt.formats.memory import MEMORY_FORMAT_V1

    im = InferenceModel.from_model(_model(True, seed=8))
    ids = np.random.default_rng(2).integers(0, 300, 21)  # ends mid mini-batch (pos 5)
    st = im.new_state()
    im.feed(st, ids)
    assert st.pos == 5
    meta = {"format": MEMORY_FORMAT_V1, "model_id": im.model_id, "config": im.config.to_json(),
            "pos": str(st.pos), "n_tokens": str(st.n_tokens), "note": ""}
    write_safetensors(str(tmp_path / "old.mem"), {"W0": st.W0, "b0": st.b0, "SW": st.SW, "Sb": st.Sb}, meta)
    old = im.load_memory(str(tmp_path / "old.mem"))
    assert old.pos == 5 and old.n_tokens == 21
    np.testing.assert_allclose(old.SW, st.SW, rtol=1e-5, atol=1e-7)
    nxt = [7, 8, 9, 10, 11, 12]  # crosses the mini-batch end, where SW is folded into W0
    a = np.stack([im.feed(st, [t]) for t in nxt])
    b = np.stack([im.feed(old, [t]) for t in nxt])
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    np.testing.assert_allclose(old.W0, st.W0, rtol=1e-4, atol=1e-6)


def test_seed_reproduces_sample(tokenizer):
    model = Model(InferenceModel.from_model(_model(True, seed=6, peaky=False), tokenizer))
    kw = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, max_tokens=25)
    a = model.generate("the cat", seed=123, **kw)
    b = model.generate("the cat", seed=123, **kw)
    c = model.generate("the cat", seed=124, **kw)
    assert a == b and a != c
    s = model.session()
    list(s.stream("x", seed=-1, max_tokens=2))
    assert isinstance(s.stats.seed, int) and s.stats.seed >= 0


def test_stream_pieces_are_whole_characters(tokenizer, monkeypatch):
    """Multi-byte characters that span several byte tokens come out whole."""
    text = "café 日本語 🎉 naïve über 🙂!"
    ids = tokenizer.encode(text)
    assert any(len(tokenizer.token_bytes(i)) == 1 and tokenizer.token_bytes(i)[0] >= 0x80 for i in ids)
    model = Model(InferenceModel.from_model(_model(True, seed=7), tokenizer))
    script = iter(ids + [tokenizer.eos_id])
    monkeypatch.setattr("bitttt.generation.Sampler.__call__", lambda self, logits, hist: next(script))
    pieces = list(model.stream("the", max_tokens=200))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p and p for p in pieces)


def test_stop_strings(tokenizer, monkeypatch):
    ids = tokenizer.encode("the cat sat on a mat")
    model = Model(InferenceModel.from_model(_model(True, seed=8), tokenizer))
    script = iter(ids + [tokenizer.eos_id])
    monkeypatch.setattr("bitttt.generation.Sampler.__call__", lambda self, logits, hist: next(script))
    s = model.session()
    assert s.generate("x", stop=["on a"], max_tokens=50) == "the cat sat "
    assert s.stats.stopped_by == "stop string"


def test_sampling_params_are_checked(tokenizer):
    from bitttt.sampling import Sampler, SamplingParams

    for bad in (dict(temperature=-1), dict(top_p=0), dict(top_p=1.5), dict(min_p=1), dict(top_k=-2),
                dict(repeat_penalty=0), dict(max_tokens=-1), dict(temperature=float("nan"))):
        with pytest.raises(ValueError):
            Sampler(SamplingParams(**bad))
    # top-k 1 is greedy; repetition penalty pushes a repeated token down
    s = Sampler(SamplingParams(top_k=1, seed=0, repeat_penalty=1.0))
    z = np.array([0.1, 3.0, 2.9, -1.0])
    assert s(z, []) == 1
    g = Sampler(SamplingParams(temperature=0, repeat_penalty=2.0, repeat_last_n=4))
    assert g(z, [1]) == 2


def test_long_prompt_constant_memory():
    """100,000 tokens stream through in constant memory: the state never grows."""
    import psutil

    im = InferenceModel.from_model(_model(True, seed=9))
    st = im.new_state()
    size = st.nbytes
    proc = psutil.Process()
    rng = np.random.default_rng(0)
    rss = []
    for i in range(50):
        im.feed(st, rng.integers(0, 300, 2000))
        if i in (4, 49):
            rss.append(proc.memory_info().rss)
    assert st.n_tokens == 100_000 and st.nbytes == size
    assert rss[1] - rss[0] < 20 * 2**20


@pytest.fixture(scope="module")
def checkpoint(tokenizer, tmp_path_factory):
    from bitttt.formats import save_checkpoint
    from bitttt.optim import AdamW

    m = _model(True, seed=10)
    p = tmp_path_factory.mktemp("ck") / "model.safetensors"
    save_checkpoint(p, params=m.params, optim=AdamW(m.params).state_tensors(), config=m.config, train={},
                    state={"step": 1, "optim_t": 0}, tokenizer=tokenizer.to_bytes())
    return p


def _infer(args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "bitttt.infer", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=180)


def test_cli_prompt_and_seed(checkpoint):
    r1 = _infer(["-m", str(checkpoint), "-p", "the cat", "-n", "12", "-s", "5", "-t", "1"])
    r2 = _infer(["-m", str(checkpoint), "-p", "the cat", "-n", "12", "-s", "5", "-t", "2"])
    assert r1.returncode == 0, r1.stderr
    assert r1.stdout == r2.stdout and r1.stdout.startswith("the cat")
    assert "seed: 5" in r1.stderr and "tokens/s" in r1.stderr and "prefill" in r1.stderr


def test_cli_bad_input(checkpoint, tmp_path):
    r = _infer(["-m", str(tmp_path / "none.safetensors"), "-p", "x"])
    assert r.returncode == 2 and "none.safetensors" in r.stderr
    (tmp_path / "corrupt.safetensors").write_bytes(checkpoint.read_bytes()[:5000])
    r = _infer(["-m", str(tmp_path / "corrupt.safetensors"), "-p", "x"])
    assert r.returncode == 2 and "corrupt.safetensors" in r.stderr and "truncated" in r.stderr
    r = _infer(["-m", str(checkpoint), "-p", "x", "--top-p", "2"])
    assert r.returncode == 2 and "top_p" in r.stderr
    (tmp_path / "p.txt").write_bytes(b"hello \xff\xfe")
    r = _infer(["-m", str(checkpoint), "-f", str(tmp_path / "p.txt")])
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "offset 6" in r.stderr
    other = _model(True, seed=11)
    im = InferenceModel.from_model(other)
    im.save_memory(im.new_state(), str(tmp_path / "other.mem"))
    r = _infer(["-m", str(checkpoint), "-p", "x", "--memory", str(tmp_path / "other.mem")])
    assert r.returncode == 2 and "another model" in r.stderr


def test_chat_commands_through_stdin(checkpoint, tmp_path):
    mem = tmp_path / "chat.mem"
    cmds = ("/help\nthe cat\n/save one\n/temp 0\n/len 5\nred ball\n/reset\n/load one\n/load nothing\n/sleep\n"
            "/bogus\n/quit\n")
    r = _infer(["-m", str(checkpoint), "-i", "--memory", str(mem), "-n", "8", "-s", "1"], stdin=cmds)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for expect in ("/reset", "[memory saved to", "[temperature 0.0]", "[at most 5 tokens per answer]",
                   "[memory reset]", "[memory one loaded]", "[no memory named nothing", "[slept: replayed",
                   "[unknown command /bogus"):
        assert expect in out, expect
    memdir = Path(str(checkpoint.with_suffix("")) + ".memory")
    assert (memdir / "one.mem.safetensors").exists()
    log = (tmp_path / "chat.conversations.jsonl").read_text().splitlines()  # beside the memory file
    assert len(log) == 4 and '"role": "user"' in log[0] and '"text": "the cat"' in log[0]
    assert mem.exists()  # saved at /sleep and at the end


@pytest.mark.parametrize("head", ["float32", "int8"])
def test_export_matches_checkpoint(checkpoint, tmp_path, head):
    from bitttt.formats import export_checkpoint

    out = tmp_path / f"m-{head}.safetensors"
    export_checkpoint(str(checkpoint), str(out), head=head)
    a = InferenceModel.from_checkpoint(str(checkpoint))
    b = InferenceModel.from_model_file(str(out))
    assert a.model_id == b.model_id
    ids = np.random.default_rng(0).integers(0, 300, 37)
    la = a.feed(a.new_state(), ids, all_logits=True)
    lb = b.feed(b.new_state(), ids, all_logits=True)
    scale = np.abs(la).max()
    if head == "float32":
        assert np.abs(la - lb).max() <= 1e-3 * scale  # only the float16 embedding differs
    else:
        assert np.abs(la - lb).max() <= 3e-2 * scale
        assert (la.argmax(-1) == lb.argmax(-1)).mean() >= 0.9
    # the packed file decoded token by token (C layers and head) equals its own block path
    sb = b.new_state()
    b.feed(sb, ids[:30])
    one = np.stack([b.feed(sb, [t]) for t in ids[30:]])
    assert np.abs(one - lb[30:]).max() <= 1e-4 * np.abs(lb).max()
    # memories move between the checkpoint and its export
    sa = a.new_state()
    a.feed(sa, ids)
    a.save_memory(sa, str(tmp_path / "x.mem"))
    assert b.load_memory(str(tmp_path / "x.mem")).n_tokens == 37
    # the packed file is what bitttt.load and the CLI take
    import bitttt

    assert isinstance(bitttt.load(str(out)).generate("the", max_tokens=3, seed=1), str)
    raw = out.read_bytes()
    bad = bytearray(raw)
    bad[len(raw) // 2] ^= 0x55
    (tmp_path / "bad.safetensors").write_bytes(bytes(bad))
    with pytest.raises(ValueError, match="bad.safetensors"):
        InferenceModel.from_model_file(str(tmp_path / "bad.safetensors"))


def test_eval_cli(checkpoint, tmp_path):
    (tmp_path / "t.txt").write_text("the cat sat on a mat<|endoftext|>the red ball", encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "bitttt.eval", "-m", str(checkpoint), "--data", str(tmp_path / "t.txt")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "nats/token" in r.stdout and "perplexity" in r.stdout and "bits/byte" in r.stdout

    im = InferenceModel.from_checkpoint(str(checkpoint))
    ids = im.tokenizer.encode("the cat sat on a mat the red ball")
    total, n = im.score(ids, chunk=5)
    logits = im.feed(im.new_state(), ids, all_logits=True).astype(np.float64)
    ref = sum(float(np.log(np.exp(logits[t] - logits[t].max()).sum()) + logits[t].max() - logits[t, ids[t + 1]])
              for t in range(len(ids) - 1))
    assert n == len(ids) - 1 and total == pytest.approx(ref, rel=1e-4)


def test_shipped_model_tells_a_story():
    from bitttt.infer import SHIPPED_MODEL

    assert os.path.getsize(SHIPPED_MODEL) <= 10 * 2**20
    import bitttt

    m = bitttt.load(SHIPPED_MODEL)
    text = m.generate("Once upon a time", max_tokens=40, seed=1, temperature=0.7)
    words = text.split()
    assert len(words) >= 15
    common = {"the", "a", "and", "was", "to", "she", "he", "her", "his", "they", "said", "in", "with"}
    assert sum(w.lower().strip('.,!"') in common for w in words) >= 4, text
