"""GPU speed of the cuda backend, as ratios against baselines measured in the same run.

    python bench/bench_gpu.py [--quick] [--no-append]

Needs pycuda and an NVIDIA GPU (bench/gpu_check.sh installs pycuda from wheels and runs this).
1. Ternary GEMV 16384 x 16384 (the gemv_i8 kernel: packed 2-bit weights, int8 activations,
   dp4a) in GB/s of weights read, against the card's device-to-device copy bandwidth (cuMemcpyDtoD
   of 1 GiB, counted as bytes read + bytes written, the bandwidthTest convention).  Target: 70 %.
2. Decode of the bench_decode.py model (D=2048, 8 layers, I=5632, V=32000, int8 head) through
   BitLlama.step on the cuda backend (cuda.GpuDecoder), tokens/s, against a float16 GEMV chain of
   the same shapes (q, k, v, o, gate, up, down per layer, then the head) captured in a CUDA graph
   with PyTorch (skipped without it).  Target: 4x.
3. Training tokens/s for the bench_model.py shape (D=512, 8 layers, I=1376, V=4096, 8 x 256
   tokens): loss_and_grads + AdamW on the cuda backend against the same architecture in PyTorch
   on the same GPU (bench/torch_bitllama.py, Adam; skipped without PyTorch).  Target: 1x.
Times are CUDA events (1) or wall time after a synchronize (2, 3), median of the repetitions.
Figures, the device and the command are appended to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from bench_kernels import append_results, machine  # noqa: E402

from bitttt.backend import cuda as cb  # noqa: E402


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def gemv_vs_copy(n: int, reps: int) -> dict:
    import pycuda.driver as drv

    from bitttt import PackedTernary

    rng = np.random.default_rng(0)
    k = n
    stride = k // 4
    c = rng.integers(0, 3, (n, stride, 4), dtype=np.uint8)  # codes 0..2 in every 2-bit field
    codes = (c[..., 0] | (c[..., 1] << 2) | (c[..., 2] << 4) | (c[..., 3] << 6)).astype(np.uint8)
    w = cb.GpuTernary.of(PackedTernary(codes, 0.02, k))
    x = rng.standard_normal((1, k)).astype(np.float32)
    xq = cb.quantize_act(x)
    y = cb.DeviceArray((1, n), np.float32)
    grid = (cb._cdiv(n, 8), 1)

    def launch():
        cb._launch("gemv_i8", grid, (256,), w.dcodes, np.int32(n), np.int32(xq.ldq), w.dscale, np.int32(n), xq.q,
                   xq.sums, xq.a, y, np.int32(n))

    got = cb.qlinear(xq, w)  # a correctness check of the timed kernel against the cpu backend
    from bitttt.backend import cpu

    exact = bool(np.array_equal(got, cpu.qlinear(cpu.quantize_act(x), PackedTernary(codes, 0.02, k))))
    start, end = drv.Event(), drv.Event()
    stream = cb.device().stream  # the stream the backend launches on
    times = []
    for _ in range(3):
        launch()
        start.record(stream)
        for _ in range(reps):
            launch()
        end.record(stream)
        end.synchronize()
        times.append(start.time_till(end) / 1e3 / reps)
    t = _median(times)
    wbytes = n * stride + k + 4 * n
    nb = 1 << 30
    a, b = drv.mem_alloc(nb), drv.mem_alloc(nb)
    drv.memcpy_dtod(b, a, nb)
    ct = []
    for _ in range(5):
        start.record()
        drv.memcpy_dtod(b, a, nb)
        end.record()
        end.synchronize()
        ct.append(start.time_till(end) / 1e3)
    copy_gbs = 2 * nb / _median(ct) / 1e9
    gemv_gbs = wbytes / t / 1e9
    return {"n": n, "gemv_us": t * 1e6, "gemv_gbs": gemv_gbs, "copy_gbs": copy_gbs, "ratio": gemv_gbs / copy_gbs,
            "exact": exact}


def decode(tokens: int) -> dict:
    import bench_decode

    import bitttt

    path = os.path.join(HERE, ".cache", "bench_decode.safetensors")
    if not os.path.exists(path):
        bench_decode.build(path)
    m = bitttt.load(path)
    model = cb.adopt(m.im.model)
    st = model.new_state()
    model.prefill(st, [1, 2, 3])
    for t in range(model.config.mini_batch_size):  # warm-up: weights uploaded, a CUDA graph per position
        model.step(st, 5 + t)
    cb.device().synchronize()
    t0 = time.perf_counter()
    for t in range(tokens):
        model.step(st, (7 * t) % 200 + 3)
    cb.device().synchronize()
    ours = tokens / (time.perf_counter() - t0)
    out = {"tok_s": ours, "torch_tok_s": None}
    try:
        import torch
    except ImportError:
        return out
    s = bench_decode.SHAPE
    d, i, v, L = s["hidden_size"], s["intermediate_size"], s["vocab_size"], s["num_layers"]
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)

    def mat(r, c):
        return (torch.randn(r, c, device=dev, generator=g) * 0.02).half()

    layers = [[mat(d, d), mat(d, d), mat(d, d), mat(d, d), mat(i, d), mat(i, d), mat(d, i)] for _ in range(L)]
    head = mat(v, d)
    x0 = torch.randn(d, device=dev, generator=g).half()

    def chain(x):
        for wq, wk, wv, wo, wg, wu, wd in layers:
            q = wq @ x
            k = wk @ x
            vv = wv @ x
            a = wo @ (q + k + vv)
            hh = (wg @ a) * (wu @ a)
            x = x + wd @ hh
        return head @ x

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            chain(x0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        chain(x0)
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    reps = max(50, tokens)
    t0 = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    out["torch_tok_s"] = reps / (time.perf_counter() - t0)
    return out


def training(steps: int) -> dict:
    from bitttt import BitLlama, BitLlamaConfig
    from bitttt.optim import AdamW

    cfg = BitLlamaConfig(vocab_size=4096, hidden_size=512, num_layers=8, num_heads=8, intermediate_size=1376,
                         ternary=True)
    batch, seq = 8, 256
    rng = np.random.default_rng(0)
    data = rng.integers(0, cfg.vocab_size, (batch, seq + 1))
    tokens, targets = data[:, :-1], data[:, 1:]
    model = BitLlama(cfg, backend="cuda")
    model.init_weights(0)
    params0 = {k: v.copy() for k, v in model.params.items()}
    opt = AdamW(model.params, backend=cb)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss, grads = model.loss_and_grads(tokens, targets)
        opt.step(grads, 1e-3)
        cb.device().synchronize()
        times.append(time.perf_counter() - t0)
    ours = batch * seq / _median(times[1:])
    out = {"tok_s": ours, "torch_tok_s": None, "loss": loss}
    try:
        import torch
        from torch_bitllama import TorchBitLlama
    except ImportError:
        return out
    tm = TorchBitLlama(cfg, params0).cuda()
    topt = torch.optim.AdamW(tm.parameters(), lr=1e-3, weight_decay=0.1)
    tt, tg = torch.from_numpy(tokens).cuda(), torch.from_numpy(targets).cuda()
    times = []
    with torch.device("cuda"):  # the tensors torch_bitllama makes inside (RoPE, masks) go to the GPU too
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            topt.zero_grad(set_to_none=True)
            tl = tm.loss(tt, tg)
            tl.backward()
            topt.step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    out["torch_tok_s"] = batch * seq / _median(times[1:])
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (the gpu_check.sh run)")
    ap.add_argument("--no-append", action="store_true", help="do not append to bench/RESULTS.md")
    ap.add_argument("--parts", nargs="+", default=["gemv", "decode", "train"], choices=["gemv", "decode", "train"])
    args = ap.parse_args()
    ok, why = cb.available()
    if not ok:
        print(f"bench_gpu: no GPU: {why}")
        return 2
    label = cb.device().label
    rows, summary = [], []
    if "gemv" in args.parts:
        g = gemv_vs_copy(16384, 20 if args.quick else 100)
        rows.append(f"| ternary GEMV 16384x16384 (gemv_i8) | {g['gemv_us']:.1f} us, {g['gemv_gbs']:.0f} GB/s | "
                    f"D2D copy {g['copy_gbs']:.0f} GB/s | {g['ratio']:.0%} of copy (target 70 %) |")
        summary.append(f"GEMV {g['ratio']:.0%} of copy bandwidth ({'exact' if g['exact'] else 'NOT EXACT'} vs cpu)")
    if "decode" in args.parts:
        r = decode(32 if args.quick else 128)
        base = f"{r['torch_tok_s']:.0f} tok/s" if r["torch_tok_s"] else "n/a (no PyTorch)"
        ratio = f"{r['tok_s'] / r['torch_tok_s']:.2f}x (target 4x)" if r["torch_tok_s"] else "n/a"
        rows.append(f"| decode D=2048 L=8 V=32000 (GpuDecoder) | {r['tok_s']:.0f} tok/s | fp16 GEMV chain, CUDA graph "
                    f"{base} | {ratio} |")
        summary.append(f"decode {r['tok_s']:.0f} tok/s, {ratio}")
    if "train" in args.parts:
        r = training(2 if args.quick else 5)
        base = f"{r['torch_tok_s']:.0f} tok/s" if r["torch_tok_s"] else "n/a (no PyTorch)"
        ratio = f"{r['tok_s'] / r['torch_tok_s']:.2f}x (target 1x)" if r["torch_tok_s"] else "n/a"
        rows.append(f"| training D=512 L=8, 8x256 tokens | {r['tok_s']:.0f} tok/s | PyTorch {base} | {ratio} |")
        summary.append(f"training {r['tok_s']:.0f} tok/s, {ratio}")
    table = "\n".join(["| what | ours | baseline (same run) | ratio |", "| --- | --- | --- | --- |"] + rows)
    print(table)
    print("summary: " + "; ".join(summary))
    if not args.no_append:
        append_results(f"## GPU backend ({datetime.date.today()})\n\nDevice: {label}\nMachine: {machine()}\n"
                       f"Command: `python bench/bench_gpu.py{' --quick' if args.quick else ''}`\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
