"""The GPU kernels (cuda/*.cu) run on the CPU through cuda/emu.h and the cuda backend's ops
against the cpu backend: exact for the int8 paths, float32 tolerance elsewhere.

The emulated library is built once per session with g++ (skipped without one).  Every test
runs under a timeout (faulthandler): a kernel that loops forever ends the run with a trace
instead of hanging CI; a divergent barrier is reported by the emulation itself.
"""
from __future__ import annotations

import faulthandler
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from bitttt import BitLlama, BitLlamaConfig
from bitttt.backend import cpu
from bitttt.backend import cuda as cb
from bitttt.backend import numpy as ref

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cuda"))
pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="the emulated GPU build needs g++")
TIMEOUT_S = 120


@pytest.fixture(autouse=True)
def _timeout():
    faulthandler.dump_traceback_later(TIMEOUT_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    import emu

    d = emu.EmuDevice(tmp_path_factory.mktemp("emu"))
    old = cb.use_device(d)
    yield d
    cb.use_device(old)


def rng(seed=0):
    return np.random.default_rng(seed)


def close(a, b, rtol=1e-5, atol=1e-5):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# -- int8 paths: exact -----------------------------------------------------------------------------
@pytest.mark.parametrize("m,k", [(1, 5), (3, 256), (4, 300), (9, 700)])
def test_quantize_act_exact(dev, m, k):
    x = rng(k).standard_normal((m, k)).astype(np.float32)
    x[0, :4] = [127.0, 0.5, 1.5, -2.5]  # a = 1 on row 0: exact halves, rounded to even
    q, a = cb.quantize_act(x).host()
    qc, ac = cpu.quantize_act(x)
    assert np.array_equal(q, qc) and np.array_equal(a, ac)
    assert list(q[0, :4]) == [127, 0, 2, -2]


def test_quantize_act_pads_and_sums(dev):
    x = rng(1).standard_normal((2, 100)).astype(np.float32)
    xq = cb.quantize_act(x)
    full = xq.q.get()
    assert full.shape == (2, 256) and not full[:, 100:].any()
    assert np.array_equal(xq.sums.get(), cpu.quantize_act(x)[0].astype(np.int64).sum(axis=1))


@pytest.mark.parametrize("m", [1, 3, 5, 70])
@pytest.mark.parametrize("n,k", [(1, 7), (37, 256), (130, 600)])
def test_qlinear_exact(dev, m, n, k):
    r = rng(m * n + k)
    P = cpu.quantize_weight(r.standard_normal((n, k)).astype(np.float32))
    x = r.standard_normal((m, k)).astype(np.float32)
    y = cb.qlinear(cb.quantize_act(x), P)
    assert np.array_equal(y, cpu.qlinear(cpu.quantize_act(x), P))  # gemv (m <= 4) and tiled gemm


@pytest.mark.parametrize("m", [1, 70])
def test_int8_lm_head_exact(dev, m):
    r = rng(m)
    v, d = 75, 40
    head = ref.Int8Head(r.integers(-127, 128, (v, d)).astype(np.int8), r.random(v).astype(np.float32) + 0.1)
    x = r.standard_normal((m, d)).astype(np.float32)
    assert np.array_equal(cb.lm_head(x, head), cpu.lm_head(x, head))


# -- float products --------------------------------------------------------------------------------
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
def test_matmul(dev, ta, tb):
    r = rng(2)
    m, p, n = 67, 33, 70
    a = r.standard_normal((p, m) if ta else (m, p)).astype(np.float32)
    b = r.standard_normal((n, p) if tb else (p, n)).astype(np.float32)
    want = (a.T if ta else a).astype(np.float64) @ (b.T if tb else b).astype(np.float64)
    close(cb.matmul(a, b, ta, tb), want, 1e-5, 1e-5)
    with pytest.raises(ValueError, match="inner dimensions"):
        cb.matmul(a, b[:-1] if not tb else b[:, :-1], ta, tb)


def test_float_lm_head(dev):
    r = rng(3)
    x, head = r.standard_normal((5, 48)).astype(np.float32), r.standard_normal((90, 48)).astype(np.float32)
    close(cb.lm_head(x, head), cpu.lm_head(x, head), 1e-5, 1e-5)


def test_qlinear_dx_dw(dev):
    r = rng(4)
    m, n, k = 70, 65, 300
    P = cpu.quantize_weight(r.standard_normal((n, k)).astype(np.float32))
    dy = r.standard_normal((m, n)).astype(np.float32)
    close(cb.qlinear_dx(dy, P), cpu.qlinear_dx(dy, P), 1e-5, 1e-5)
    x = r.standard_normal((m, k)).astype(np.float32)
    close(cb.qlinear_dw(dy, cb.quantize_act(x)), cpu.qlinear_dw(dy, cpu.quantize_act(x)), 1e-5, 1e-5)


# -- rows and elements -----------------------------------------------------------------------------
def test_rmsnorm(dev):
    r = rng(5)
    x = r.standard_normal((2, 35, 300)).astype(np.float32)
    w = r.standard_normal(300).astype(np.float32)
    y, c = cb.rmsnorm_forward(x, w, 1e-5)
    yc, cc = cpu.rmsnorm_forward(x, w, 1e-5)
    close(y, yc)
    close(c.r, cc.r)
    dy = r.standard_normal(x.shape).astype(np.float32)
    for got, want in zip(cb.rmsnorm_backward(dy, c), cpu.rmsnorm_backward(dy, cc)):
        close(got, want, 1e-4, 1e-5)


def test_layernorm(dev):
    r = rng(6)
    x = (r.standard_normal((70, 130)) * 3 + 1).astype(np.float32)
    w, b = r.standard_normal(130).astype(np.float32), r.standard_normal(130).astype(np.float32)
    y, c = cb.layernorm_forward(x, w, b, 1e-6)
    yc, cc = cpu.layernorm_forward(x, w, b, 1e-6)
    close(y, yc)
    dy = r.standard_normal(x.shape).astype(np.float32)
    for got, want in zip(cb.layernorm_backward(dy, c), cpu.layernorm_backward(dy, cc)):
        close(got, want, 1e-4, 1e-5)
    with pytest.raises(ValueError, match="all rows"):
        cb.layernorm_backward(dy, c, reduce_axes=(0,))


def test_swiglu_and_sigmoid(dev):
    r = rng(7)
    g, u = (r.standard_normal((3, 333)) * 4).astype(np.float32), r.standard_normal((3, 333)).astype(np.float32)
    h, sg = cb.swiglu_forward(g, u)
    hc, sgc = cpu.swiglu_forward(g, u)
    close(h, hc, 1e-5, 1e-6)
    close(sg, sgc, 1e-5, 1e-6)
    dh = r.standard_normal(g.shape).astype(np.float32)
    for got, want in zip(cb.swiglu_backward(dh, g, u, sg), cpu.swiglu_backward(dh, g, u, sgc)):
        close(got, want, 1e-5, 1e-6)
    z = np.array([-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0], np.float32)
    s = cb.sigmoid(z)
    assert np.isfinite(s).all()
    close(s, ref.sigmoid(z.astype(np.float64)), 1e-6, 1e-7)


def test_rope(dev):
    r = rng(8)
    t, h, f = 6, 3, 8
    cos, sin = ref.rope_tables(np.arange(t), f, 10000.0, np.float32)
    x = r.standard_normal((2, h, t, f)).astype(np.float32)  # [..., T, f] against [T, f/2]
    for inv in (False, True):
        close(cb.rope_apply(x, cos, sin, inv), ref.rope_apply(x, cos, sin, inv), 1e-6, 1e-6)
    x2 = r.standard_normal((t, h, f)).astype(np.float32)  # the prefill's form: [T, H, f] against [T, 1, f/2]
    close(cb.rope_apply(x2, cos[:, None], sin[:, None]), ref.rope_apply(x2, cos[:, None], sin[:, None]), 1e-6, 1e-6)


def test_embedding(dev):
    r = rng(9)
    w = r.standard_normal((11, 20)).astype(np.float32)
    ids = np.array([[1, 3, 3], [10, 1, 3]])
    assert np.array_equal(cb.embedding_forward(w, ids), w[ids])
    out = cb.DeviceArray((6, 20), np.float32)  # the gather kernel itself (the op gathers on the host)
    cb._launch("embed_fwd", (6,), (256,), cb.DeviceArray.from_host(w), cb.DeviceArray.from_host(ids.reshape(-1)),
               np.int32(20), out)
    assert np.array_equal(out.get(), w[ids.reshape(-1)])
    dx = r.standard_normal((2, 3, 20)).astype(np.float32)
    close(cb.embedding_backward(dx, ids, 11), ref.embedding_backward(dx, ids, 11), 1e-6, 1e-6)


def test_cross_entropy(dev):
    r = rng(10)
    logits = (r.standard_normal((2, 5, 300)) * 5).astype(np.float32)
    tg = r.integers(0, 300, (2, 5))
    m = (r.random((2, 5)) > 0.3).astype(np.float32)
    m[0, 0] = 1
    loss, c = cb.cross_entropy_forward(logits, tg, m, m.sum())
    lossc, cc = cpu.cross_entropy_forward(logits, tg, m, m.sum())
    assert abs(loss - lossc) <= 1e-5 * abs(lossc)
    close(cb.cross_entropy_backward(c, 2.0), cpu.cross_entropy_backward(cc, 2.0), 1e-5, 1e-7)


def test_adamw_and_sumsq(dev):
    r = rng(11)
    p = r.standard_normal((7, 300)).astype(np.float32)
    g = r.standard_normal(p.shape).astype(np.float32)
    m, v = (r.standard_normal(p.shape) * 0.1).astype(np.float32), (r.random(p.shape) * 0.1).astype(np.float32)
    pc, mc, vc = p.copy(), m.copy(), v.copy()
    args = (1e-2, 0.9, 0.95, 1e-8, 0.1, 1 - 0.9 ** 3, 1 - 0.95 ** 3, 0.5)
    cb.adamw(p, g, m, v, *args)
    cpu.adamw(pc, g, mc, vc, *args)
    close(m, mc, 1e-6, 1e-7)
    close(v, vc, 1e-6, 1e-7)
    close(p, pc, 1e-6, 1e-6)
    x = r.standard_normal(10_000).astype(np.float32)
    assert abs(cb.sumsq(x) - cpu.sumsq(x)) <= 1e-9 * cpu.sumsq(x)


def test_ttt_prefill_across_minibatches(dev):
    """Tokens read one launch per call, across a mini-batch boundary: out and every state tensor."""
    r = rng(12)
    h, f, kmb, d = 2, 16, 4, 32
    t = 7
    q, k, v, x = (r.standard_normal((t, d)).astype(np.float32) for _ in range(4))
    lr_w, lr_b = (r.standard_normal((h, d)) * 0.1).astype(np.float32), r.standard_normal(h).astype(np.float32)
    tok = (1.0 / np.arange(1, kmb + 1)).astype(np.float32)
    gamma, beta = (1 + 0.1 * r.standard_normal((h, f))).astype(np.float32), (0.1 * r.standard_normal((h, f))).astype(
        np.float32)
    W0 = (0.1 * r.standard_normal((h, f, f))).astype(np.float32)
    b0 = np.zeros((h, f), np.float32)
    states = [[W0.copy(), b0.copy(), np.zeros((h, kmb, f), np.float32), np.zeros((h, kmb, f), np.float32),
               np.zeros((h, f), np.float32)] for _ in range(2)]
    outs = [np.empty((t, d), np.float32) for _ in range(2)]
    pos = 2
    for be, st, out in ((cb, states[0], outs[0]), (cpu, states[1], outs[1])):
        be.ttt_prefill(pos, q, k, v, x, lr_w, lr_b, 0.5, tok, gamma, beta, *st, out)
    close(outs[0], outs[1], 1e-4, 1e-5)
    live = (pos + t) % kmb  # rows of Kb, Gb at or past the position are not part of the state
    for i, (a, b) in enumerate(zip(*states)):
        if i in (2, 3):
            a, b = a[:, :live], b[:, :live]
        close(a, b, 1e-4, 1e-6)


@pytest.mark.parametrize("t", [8, 10])
def test_ttt_training_loop(dev, t):
    """The dual-form mini-batch loop (ttt_fwd / ttt_bwd) against the cpu backend's C loop, a short
    last mini-batch included."""
    r = rng(14 + t)
    bsz, h, f, kmb = 2, 2, 8, 4
    d = h * f
    q, k, v = (r.standard_normal((bsz, t, d)).astype(np.float32) for _ in range(3))
    lr = (0.1 + 0.2 * r.random((bsz, h, t))).astype(np.float32)
    tok = (1.0 / np.arange(1, kmb + 1) + 0.1 * r.standard_normal(kmb)).astype(np.float32)
    W1 = (0.1 * r.standard_normal((h, f, f))).astype(np.float32)
    b1 = (0.1 * r.standard_normal((h, 1, f))).astype(np.float32)
    gamma = (1 + 0.1 * r.standard_normal((h, f))).astype(np.float32)
    beta = (0.1 * r.standard_normal((h, f))).astype(np.float32)
    args = (q, k, v, lr, tok, W1, b1, gamma, beta, h, kmb, 10000.0)
    out, c = cb.ttt_forward(*args)
    outc, cc = cpu.ttt_forward(*args)
    close(out, outc, 1e-4, 1e-5)
    dm = r.standard_normal(out.shape).astype(np.float32)
    got, want = cb.ttt_backward(dm, c), cpu.ttt_backward(dm, cc)
    for name, a, b in zip(want._fields, got, want):
        assert a.shape == b.shape, name
        scale = np.abs(b).max() + 1e-6
        assert np.abs(a - b).max() <= 1e-4 * scale, name


# -- the whole model on the cuda backend ------------------------------------------------------------
def tiny_config(**kw):
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=48, mini_batch_size=4,
                ternary=True)
    base.update(kw)
    return BitLlamaConfig(**base)


def test_model_training_step_matches_cpu(dev):
    cfg = tiny_config()
    gpu, host = BitLlama(cfg, backend="cuda"), BitLlama(cfg)
    gpu.init_weights(3)
    host.init_weights(3)
    tokens = rng(13).integers(0, 64, (2, 9))
    loss, grads = gpu.loss_and_grads(tokens[:, :-1], tokens[:, 1:])
    lossc, gradsc = host.loss_and_grads(tokens[:, :-1], tokens[:, 1:])
    assert abs(loss - lossc) <= 1e-4 * abs(lossc)
    assert grads.keys() == gradsc.keys()
    for name in grads:
        scale = np.abs(gradsc[name]).max() + 1e-6
        assert np.abs(grads[name] - gradsc[name]).max() <= 1e-3 * scale, name


@pytest.mark.parametrize("head", ["float", "int8"])
def test_model_decode_matches_cpu(dev, head):
    cfg = tiny_config()
    host = BitLlama(cfg)
    host.init_weights(4)
    params = host.state_dict()
    h = None
    if head == "int8":
        w = params["embed.weight"]
        scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
        h = ref.Int8Head(np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8), scale)
    gpu = BitLlama.for_inference(cfg, params, backend="cuda", head=h)
    cpum = BitLlama.for_inference(cfg, params, backend="cpu", head=h)
    sg, sc = gpu.new_state(), cpum.new_state()
    prompt = [1, 5, 9, 2, 33]
    close(gpu.prefill(sg, prompt), cpum.prefill(sc, prompt), 1e-4, 1e-4)
    assert gpu._fused_decoder() is not None  # steps run on cuda.GpuDecoder, weights resident
    for tok in (7, 8, 9, 10):  # across a mini-batch end (K = 4): W0 rewritten on the GPU and copied back
        close(gpu.step(sg, tok), cpum.step(sc, tok), 1e-4, 1e-4)
    close(sg.W0, sc.W0, 1e-4, 1e-6)
    close(sg.Sb, sc.Sb, 1e-4, 1e-6)
    close(gpu.prefill(sg, [3, 4]), cpum.prefill(sc, [3, 4]), 1e-4, 1e-4)  # host writes: the decoder re-uploads
    close(gpu.step(sg, 5), cpum.step(sc, 5), 1e-4, 1e-4)
    assert sg.pos == sc.pos


# -- the emulation itself --------------------------------------------------------------------------
DIVERGENT = r'''
extern "C" __global__ void divergent(int *out) {
    if (threadIdx.x < 16) __syncthreads();   /* half a warp at the block barrier ...        */
    else __syncwarp();                       /* ... the other half at the warp barrier      */
    out[threadIdx.x] = 1;
}
extern "C" __global__ void shuffles(int *out) {
    int v = (int)threadIdx.x;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, v, 1) + 1000 * __shfl_down_sync(0xffffffffu, v, 3);
}
'''


def test_divergent_barrier_is_reported_not_hung(tmp_path):
    import emu

    d = emu.EmuDevice(tmp_path, DIVERGENT, tag="divergent", kernels=False)
    out = np.zeros(64, np.int32)
    with pytest.raises(emu.EmuLaunchError, match="divergent barrier"):
        d.launch("divergent", (1, 1, 1), (64, 1, 1), (out.ctypes.data,))
    d.launch("shuffles", (1, 1, 1), (40, 1, 1), (out.ctypes.data,))  # a full warp and a partial one of 8
    lane = np.arange(40) % 32
    base = np.arange(40) - lane
    width = np.where(base == 32, 8, 32)
    xor = np.where((lane ^ 1) < width, base + (lane ^ 1), np.arange(40))
    down = np.where(lane + 3 < 32, np.arange(40) + 3, np.arange(40))
    down = np.where(down < 40, down, np.arange(40))
    assert np.array_equal(out[:40], xor + 1000 * down)


# -- the command line on the (emulated) cuda backend ---------------------------------------------------
def test_train_cli_on_cuda_then_run_on_cpu(tmp_path, dev):
    """`python -m bitttt.train --device cuda` on the emulated build (BITTTT_CUDA_EMU) follows the CPU
    run's losses, and its checkpoint is an ordinary one: the CPU loads it and generates."""
    import json
    import os
    import random
    import subprocess

    import bitttt

    rnd = random.Random(0)
    words = "the cat dog sat on a mat and ran to see big red ball sun was hot day night".split()
    (tmp_path / "corpus.txt").write_text("\n".join(" ".join(rnd.choice(words) for _ in range(rnd.randint(5, 15)))
                                                   + "." for _ in range(400)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BITTTT_CUDA_EMU", None)

    def run(*args, **extra):
        r = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=dict(env, **extra), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r

    run("bitttt.data", "prepare", "corpus.txt", "--vocab-size", "300", "--out", "data", "--no-progress")
    common = ["data=data", "out_dir=runs", "max_steps=3", "max_time=0", "log_interval=1", "eval_interval=1000",
              "eval_batches=1", "ckpt_interval=3", "warmup_steps=1", "batch_size=2", "seq_len=8", "sample_tokens=0",
              "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=48",
              "model.mini_batch_size=4", "--no-progress"]
    run("bitttt.train", "name=cpu", *common)
    run("bitttt.train", "--device", "cuda", "name=gpu", *common, BITTTT_CUDA_EMU=str(dev.build_dir))

    def losses(name):
        recs = [json.loads(x) for x in (tmp_path / "runs" / name / "log.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if "loss" in r and "step" in r]

    lc, lg = losses("cpu"), losses("gpu")
    assert len(lc) == len(lg) == 3
    for a, b in zip(lg, lc):
        assert abs(a - b) <= 1e-3 * abs(b), (lg, lc)
    m = bitttt.load(tmp_path / "runs" / "gpu")  # on the CPU
    assert m.im.model.backend.NAME == "cpu"
    assert isinstance(m.generate("the cat", max_tokens=4, seed=1), str)
    r = run("bitttt.infer", "--device", "cuda", "-m", "runs/gpu", "-p", "the cat", "-n", "3", "--temp", "0",
            BITTTT_CUDA_EMU=str(dev.build_dir))  # and back on the (emulated) GPU
    assert "warning" not in r.stderr and r.stdout.startswith("the cat")
