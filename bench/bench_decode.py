"""Decode and prefill speed of a packed model against the memory roofline.

    python bench/bench_decode.py [--threads 1 2] [--decode 64] [--no-append]
                                 [--llama-bench BIN --gguf FILE] [--formats t2 t1] [--rounds 3]

Model: random ternary weights in the shape of the llama.cpp comparison in issue 5: D = 2048,
8 layers, 16 heads, I = 5632, V = 32000, K = 16, int8 LM head (the export's default).  The
file is written once (bench/.cache, ignored by git), then each thread count runs in its own
process that loads it like `python -m bitttt.infer` does.

Roofline: bytes read per decoded token (packed BitLinear weights + the int8 head + its scales;
norms, TTT parameters, the TTT state (with W0's rewrite once per mini-batch, spread over its
tokens) and the one embedding row are included too) over the read bandwidth measured
in the same process (bitttt's probe).  Prefill: tokens/s reading 128 and 512-token prompts.
With --llama-bench and --gguf (a llama.cpp model of the same shape, TQ2_0 linear layers and a
Q8_0 head: bench/make_gguf.py says how to make one), llama.cpp's llama-bench runs right after
each of our workers on the same thread count, and the ratios are printed beside.
Peak RSS of the whole process (interpreter included) over a 16-token prompt and `--long`
decoded tokens, measured before the prefill runs, must stay below the file size + 100 MB.
--formats t2 t1: the same random weights packed at 2 bits (t2, the default) and at 1.6 bits (t1,
`export --format t1`), the workers of the two alternating --rounds times; each row gives the
median over the rounds, the t1 / t2 ratios are the medians of the per-round ratios, and the
logits of the two files (a prompt and 8 greedy tokens) are checked to be the same bits.

    python bench/bench_decode.py --arch ttt attention hybrid [--contexts 1024 4096 16384 65536]
                                 [--kv-heads 16] [--kv-dtype float16] [--threads 2] [--decode 8]

Architectures at long context: the same D = 2048, 8-layer shape as a TTT model, an attention
model (GQA with --kv-heads key/value heads; 16 = plain multi-head attention, the TTT paper's
Transformer baseline) and a hybrid (TTT and attention layers alternating).  For each context
length the model decodes --decode tokens (median time) after that many tokens: the KV caches
of attention layers are filled with random keys and values to that length (the cost of a
decode step depends on the cache's length, not on what it holds; prefilling 64k tokens would
take an hour here), the TTT state is constant-size whatever was read.  Prints decode tokens/s
per architecture and context, and the context where TTT's decode overtakes attention's
(interpolated in log-context), beside the TTT paper's ~8k (Sun et al. 2024, on a GPU).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, ".cache")
SHAPE = dict(vocab_size=32000, hidden_size=2048, num_layers=8, num_heads=16, intermediate_size=5632,
             mini_batch_size=16, ternary=True)


def build(path: str, shape: dict | None = None, packing: str = "t2") -> None:
    """Write a packed model file with random ternary weights (no float copy of them is ever made),
    packed in format `packing` (the same weights for either)."""
    import base64
    import hashlib

    from bitttt import BitLlamaConfig, PackedTernary
    from bitttt.formats import packed_tensors, write_safetensors
    from bitttt.formats.model_file import MODEL_FORMAT
    from bitttt.params import draw, param_table, ttt_block
    from bitttt.tokenizer import Tokenizer

    cfg = BitLlamaConfig(**(shape or SHAPE))
    rng = np.random.default_rng(0)
    tensors, meta = {}, {}
    for name, spec in param_table(cfg).items():
        shape = spec.shape
        if spec.kind == "linear":
            t = rng.integers(-1, 2, shape, dtype=np.int8)
            tensors.update(packed_tensors(PackedTernary.from_ternary(t, 0.02, format=packing), name))
        elif spec.kind == "embedding":
            tensors[name] = rng.normal(0, 1.0, shape).astype(np.float16)
    for li in range(cfg.num_layers):
        for k, shape, kind, init in (ttt_block(cfg) if cfg.types[li] == "ttt" else []):  # init draws, in order
            v = draw(init, shape, rng).astype(np.float32)
            if kind != "linear":
                tensors[f"layers.{li}.ttt.{k}"] = v
        tensors[f"layers.{li}.norm1.weight"] = np.ones(cfg.hidden_size, np.float32)
        tensors[f"layers.{li}.norm2.weight"] = np.ones(cfg.hidden_size, np.float32)
    tensors["norm_f.weight"] = np.ones(cfg.hidden_size, np.float32)
    tensors["head.weight.int8"] = rng.integers(-127, 128, (cfg.vocab_size, cfg.hidden_size), dtype=np.int8)
    tensors["head.weight.scale"] = np.full(cfg.vocab_size, 1e-3, np.float32)
    text = " ".join(f"w{i}" for i in range(3000))
    tok = Tokenizer.train_from_iterator([text], vocab_size=276)
    meta.update({"format": MODEL_FORMAT, "config": cfg.to_json(),
                 "tokenizer": base64.b64encode(tok.to_bytes()).decode(),
                 "tokenizer_sha256": hashlib.sha256(tok.to_bytes()).hexdigest(), "model_id": "bench-random",
                 "head": "int8", "packing": packing, "source": "bench_decode random weights", "step": "0"})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_safetensors(path, tensors, meta)


def bytes_per_token(im) -> int:
    from bitttt import PackedTernary
    from bitttt.params import param_table

    m = im.model
    table = param_table(m.config)
    n = sum(w.codes.nbytes for w in m.params.values() if isinstance(w, PackedTernary))
    n += sum(a.nbytes for a in m.head) if isinstance(m.head, tuple) else m.head.nbytes  # int8 rows + scales
    # norms and TTT parameters (W1, b1 are read only when a state starts)
    n += sum(v.nbytes for k, v in m.params.items() if table[k].kind in ("norm", "float"))
    st = im.new_state()  # W0 read once per token, rewritten once per mini-batch; the factor rows
    n += st.nbytes + 2 * st.W0.nbytes // m.config.mini_batch_size + m.config.hidden_size * 4
    return n


def worker(args) -> dict:
    from bitttt import _core, set_num_threads
    from bitttt.session import InferenceModel

    set_num_threads(args.threads)
    im = InferenceModel.from_model_file(args.file)
    v = SHAPE["vocab_size"]
    rng = np.random.default_rng(1)
    bpt = bytes_per_token(im)
    from bitttt import PackedTernary

    out = {"threads": args.threads, "bytes_per_token": bpt,
           "packing": next(w.format for w in im.model.params.values() if isinstance(w, PackedTernary))}
    import hashlib

    st = im.new_state()  # the same bits on either format: a prompt and 8 greedy tokens, hashed
    logits, h = im.feed(st, np.arange(16) % v), hashlib.sha256()
    for _ in range(8):
        h.update(logits.tobytes())
        logits = im.feed(st, [int(np.argmax(logits))])
    out["logits_sha256"] = h.hexdigest()
    # memory first (ru_maxrss only grows): a short prompt, then --long decoded tokens
    st = im.new_state()
    logits = im.feed(st, rng.integers(0, v, 16))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.long):
        logits = im.feed(st, [int(np.argmax(logits))])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["rss_growth_mb"] = out["peak_rss_mb"] - rss0
    # the bandwidth probe's 512 MB buffer comes after the memory check, right around the decode timing
    bws = [_core.read_bandwidth(512 * 2**20, 3, args.threads)]
    ts = []
    for _ in range(args.decode):
        t0 = time.perf_counter()
        logits = im.feed(st, [int(np.argmax(logits))])
        ts.append(time.perf_counter() - t0)
    out["decode_tps"] = 1.0 / float(np.median(ts[3:]))
    bws.append(_core.read_bandwidth(512 * 2**20, 3, args.threads))
    for n in args.prefill:
        ts = []
        for _ in range(3):
            st = im.new_state()
            ids = rng.integers(0, v, n)
            t0 = time.perf_counter()
            im.feed(st, ids)
            ts.append(time.perf_counter() - t0)
        out[f"prefill{n}_tps"] = n / float(np.median(ts))
    out["file_mb"] = os.path.getsize(args.file) / 2**20
    bw = max(bws)  # bytes/s
    out["bandwidth_gbs"] = bw / 1e9
    out["roofline_tps"] = bw / bpt
    return out


# -- architectures at long context (--arch) ---------------------------------------------------------
def arch_shape(arch: str, kv_heads: int, max_len: int) -> dict:
    """SHAPE as a TTT, attention or hybrid (alternating) model."""
    sh = dict(SHAPE)
    if arch != "ttt":
        sh.update(arch="attention", num_kv_heads=kv_heads, max_position_embeddings=max_len)
    if arch == "hybrid":
        sh["layer_types"] = ["ttt", "attention"] * (SHAPE["num_layers"] // 2)
    return sh


def fill_cache(cache, n: int, rng) -> None:
    """The cache as if n tokens had been read: random keys and values (unit-norm-ish rows)."""
    from bitttt.layers.attention import KVCache

    assert isinstance(cache, KVCache)
    hkv, f = cache.k.shape[0], cache.k.shape[2]
    cache._grow(n + 64)
    block = rng.normal(0, 1, (hkv, 1024, f)).astype(np.float32)
    for name, sc in (("k", "ks"), ("v", "vs")):
        a = getattr(cache, name)
        for s in range(0, n, 1024):
            e = min(s + 1024, n)
            if cache.dtype == "int8":
                a[:, s:e] = np.clip(np.rint(block[:, :e - s] / 0.03), -127, 127)
                getattr(cache, sc)[:, s:e] = 0.03
            else:
                a[:, s:e] = block[:, :e - s]
    cache.n = n


def arch_worker(args) -> dict:
    from bitttt import set_num_threads
    from bitttt.session import InferenceModel

    set_num_threads(args.threads[0])
    im = InferenceModel.from_model_file(args.file)
    im.kv_dtype = args.kv_dtype
    rng = np.random.default_rng(1)
    v = SHAPE["vocab_size"]
    out = {"arch": im.config.kind, "tps": {}, "state_mb": {}}
    for n in args.contexts:
        st = im.new_state()
        if hasattr(st, "kv"):
            for cache in st.kv.values():
                fill_cache(cache, n - 16, rng)
        logits = im.feed(st, rng.integers(0, v, 16))  # the last 16 tokens of the context, really read
        ts = []
        for _ in range(args.decode):
            t0 = time.perf_counter()
            logits = im.feed(st, [int(np.argmax(logits))])
            ts.append(time.perf_counter() - t0)
        out["tps"][n] = 1.0 / float(np.median(ts))
        out["state_mb"][n] = st.nbytes / 2**20
        print(f"  {out['arch']} context {n}: {out['tps'][n]:.2f} tokens/s, state {out['state_mb'][n]:.0f} MiB",
              file=sys.stderr, flush=True)
        del st
    return out


def crossover(ctx: list[int], ttt: list[float], att: list[float], other: str = "attention") -> str:
    """The context where TTT's decode tokens/s first exceeds attention's (log-linear between points)."""
    d = [a - b for a, b in zip(ttt, att)]  # > 0: TTT faster
    if d[0] > 0:
        return f"TTT is faster already at {ctx[0]} tokens"
    for i in range(1, len(ctx)):
        if d[i] > 0:
            x0, x1 = np.log(ctx[i - 1]), np.log(ctx[i])
            x = x0 + (x1 - x0) * (-d[i - 1]) / (d[i] - d[i - 1])
            return f"TTT overtakes {other} at about {np.exp(x):,.0f} tokens"
    return f"{other} is still faster at {ctx[-1]} tokens"


def arch_main(args) -> None:
    max_len = max(args.contexts) + 64
    rows = {}
    for arch in args.arch:
        path = os.path.join(CACHE, f"decode_2048x8_v32000_{arch}"
                            + (f"_kv{args.kv_heads}_ctx{max_len}" if arch != "ttt" else "") + ".safetensors")
        if arch == "ttt" and os.path.exists(args.file):
            path = args.file
        if not os.path.exists(path):
            print(f"building {path} ...", flush=True)
            build(path, arch_shape(arch, args.kv_heads, max_len))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--arch", arch, "--file", path, "--threads",
               str(args.threads[0]), "--decode", str(args.decode), "--kv-dtype", args.kv_dtype, "--contexts",
               *map(str, args.contexts)]
        r = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if r.returncode:
            sys.exit(f"worker for {arch} failed")
        rows[arch] = json.loads(r.stdout.strip().splitlines()[-1])
    ctx = args.contexts
    lines = ["| arch | " + " | ".join(f"{n:,} tok: tok/s (state MiB)" for n in ctx) + " |",
             "|---|" + "---|" * len(ctx)]
    for arch, r in rows.items():
        lines.append(f"| {arch} | " + " | ".join(f"{r['tps'][str(n)]:.2f} ({r['state_mb'][str(n)]:.0f})" for n in ctx)
                     + " |")
    notes = []
    if "ttt" in rows:
        for other in ("attention", "hybrid"):
            if other in rows:
                notes.append(f"{other}: " + crossover(ctx, [rows["ttt"]["tps"][str(n)] for n in ctx],
                                                      [rows[other]["tps"][str(n)] for n in ctx], other))
    print("\n".join(lines + [""] + notes))
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    import bitttt

    head = [f"\n## bench_decode --arch -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
            f"- machine: {machine()}, kernel {bitttt.cpu_info()['kernel']}, {args.threads[0]} thread(s)",
            f"- command: `python bench/bench_decode.py --arch {' '.join(args.arch)} --contexts "
            f"{' '.join(map(str, ctx))} --kv-heads {args.kv_heads} --kv-dtype {args.kv_dtype} --threads "
            f"{args.threads[0]} --decode {args.decode}`",
            "- model: D=2048, 8 layers, H=16, I=5632, V=32000, K=16, random ternary weights, int8 head; attention "
            f"layers with {args.kv_heads} key/value heads and a {args.kv_dtype} KV cache (filled with random rows to "
            "the context length; its last 16 tokens really read); hybrid = TTT and attention layers alternating; "
            f"decode = median of {args.decode} steps; TTT takes the fused C decoder, attention and hybrid the "
            "generic path (one-token prefill)",
            "- the TTT paper (Sun et al. 2024) reports TTT-Linear faster than a Transformer from about 8k tokens "
            "of context (GPU, its own kernels)", ""]
    append_results("\n".join(head + lines + [""] + [f"- {x}" for x in notes]))


def run_llama(binary: str, gguf: str, threads: int, decode: int) -> dict:
    """llama-bench's tokens/s for a 128 and a 512-token prompt and `decode` generated tokens."""
    cmd = [binary, "-m", gguf, "-t", str(threads), "-p", "128,512", "-n", str(decode), "-r", "3", "-o", "json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"llama-bench failed:\n{r.stderr[-2000:]}")
    out = {}
    for row in json.loads(r.stdout):
        key = "decode" if row["n_gen"] else f"pp{row['n_prompt']}"
        out[key] = float(row["avg_ts"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--decode", type=int, default=64, help="decode steps timed (median)")
    ap.add_argument("--long", type=int, default=10000, help="tokens decoded for the memory check")
    ap.add_argument("--file", default=os.path.join(CACHE, "decode_2048x8_v32000.safetensors"))
    ap.add_argument("--llama-bench", help="llama.cpp's llama-bench binary, for a same-run comparison")
    ap.add_argument("--gguf", help="the llama.cpp model for --llama-bench (bench/make_gguf.py)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--formats", nargs="+", choices=("t2", "t1"), default=["t2"],
                    help="packed formats of the BitLinear weights, side by side (default t2)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of alternating workers (with --formats)")
    ap.add_argument("--prefill", type=int, nargs="*", default=[128, 512],
                    help="prompt lengths timed (default 128 512; none: decode only)")
    ap.add_argument("--arch", nargs="+", choices=("ttt", "attention", "hybrid"),
                    help="decode speed against context length for these architectures")
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--kv-heads", type=int, default=16, help="key/value heads of the attention layers (--arch)")
    ap.add_argument("--kv-dtype", default="float16", choices=("float16", "int8", "float32"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arch and args.worker:
        print(json.dumps(arch_worker(args)))
        return
    if args.arch:
        if "--decode" not in sys.argv:
            args.decode = 8
        arch_main(args)
        return
    if args.worker:
        args.threads = args.threads[0]
        print(json.dumps(worker(args)))
        return
    files = {f: args.file if f == "t2" else args.file.replace(".safetensors", f"_{f}.safetensors")
             for f in args.formats}
    for f, path in files.items():
        if not os.path.exists(path):
            print(f"building {path} ...", flush=True)
            build(path, packing=f)
    if bool(args.llama_bench) != bool(args.gguf):
        sys.exit("--llama-bench and --gguf go together")
    rows, llama = [], []
    for t in args.threads:
        runs: dict[str, list[dict]] = {f: [] for f in files}
        for _ in range(args.rounds):
            for f, path in files.items():  # the formats alternate
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(t), "--decode",
                       str(args.decode), "--long", str(args.long), "--file", path, "--prefill", *map(str, args.prefill)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode:
                    sys.exit(f"worker failed:\n{r.stderr}")
                runs[f].append(json.loads(r.stdout.strip().splitlines()[-1]))
        for f, rs in runs.items():
            row = dict(rs[0])
            for k in ("decode_tps", "prefill128_tps", "prefill512_tps", "bandwidth_gbs", "roofline_tps"):
                row[k] = float(np.median([x.get(k, np.nan) for x in rs]))
            row["packing"] = f
            if f != args.formats[0]:
                base = runs[args.formats[0]]
                row["ratio"] = {k: float(np.median([x.get(k, np.nan) / b.get(k, np.nan) for x, b in zip(rs, base)]))
                                for k in ("decode_tps", "prefill128_tps", "bytes_per_token")}
                row["same_logits"] = all(x["logits_sha256"] == b["logits_sha256"] for x, b in zip(rs, base))
            rows.append(row)
        if args.llama_bench:
            llama.append(run_llama(args.llama_bench, args.gguf, t, args.decode))
    lines = ["| threads | format | decode tok/s | roofline tok/s | of roofline | prefill 128 tok/s | "
             "prefill 512 tok/s | read GB/s | MB/token | peak RSS MiB (file MiB) | RSS growth over decode MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['packing']} | {r['decode_tps']:.1f} | {r['roofline_tps']:.1f} | "
                     f"{r['decode_tps'] / r['roofline_tps']:.0%} | {r['prefill128_tps']:.1f} | "
                     f"{r['prefill512_tps']:.1f} | "
                     f"{r['bandwidth_gbs']:.1f} | {r['bytes_per_token'] / 1e6:.1f} | {r['peak_rss_mb']:.0f} "
                     f"({r['file_mb']:.0f}) | {r['rss_growth_mb']:.1f} |")
    ratios = [r for r in rows if "ratio" in r]
    if ratios:
        lines += ["", f"| threads | format | bytes/token vs {args.formats[0]} | decode tok/s vs {args.formats[0]} | "
                  f"prefill 128 vs {args.formats[0]} | same logits (prompt + 8 greedy tokens) |",
                  "|---|---|---|---|---|---|"]
        for r in ratios:
            q = r["ratio"]
            lines.append(f"| {r['threads']} | {r['packing']} | {q['bytes_per_token']:.3f} | {q['decode_tps']:.3f} | "
                         f"{q['prefill128_tps']:.3f} | {'yes' if r['same_logits'] else 'NO'} |")
    if llama:
        lines += ["", "llama.cpp (llama-bench; TQ2_0 linear layers, Q8_0 head, F16 embedding), run right after ours:",
                  "",
                  "| threads | format | llama.cpp decode | bitttt / llama.cpp | llama.cpp pp128 | bitttt / llama.cpp | "
                  "llama.cpp pp512 | bitttt / llama.cpp |", "|---|---|---|---|---|---|---|---|"]
        by_threads = dict(zip(args.threads, llama))  # one llama-bench run per thread count, each format against it
        for r in rows:
            ll = by_threads[r["threads"]]
            lines.append(f"| {r['threads']} | {r['packing']} | {ll['decode']:.1f} | "
                         f"{r['decode_tps'] / ll['decode']:.2f}x | "
                         f"{ll['pp128']:.1f} | {r['prefill128_tps'] / ll['pp128']:.2f}x | {ll['pp512']:.1f} | "
                         f"{r['prefill512_tps'] / ll['pp512']:.2f}x |")
    print("\n".join(lines))
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    import bitttt

    cpu = machine()
    head = [f"\n## bench_decode -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
            f"- machine: {cpu}, kernel {bitttt.cpu_info()['kernel']}",
            f"- command: `python bench/bench_decode.py --threads {' '.join(map(str, args.threads))} --decode "
            f"{args.decode} --long {args.long}"
            + (f" --formats {' '.join(args.formats)} --rounds {args.rounds}"
               if len(files) > 1 or args.rounds > 1 else "")
            + (" --llama-bench BIN --gguf FILE" if llama else "") + "`",
            "- model: D=2048, 8 layers, H=16, I=5632, V=32000, K=16, random ternary weights, int8 head; "
            f"decode = median of {args.decode} steps; memory check over {args.long} decoded tokens",
            "- llama.cpp figures quoted in issue 5 (TQ2_0 + Q8_0 head, measured on another machine): decode "
            "116-121 (1 thread), 152-154 (2); prefill 128: 198 and 390 tokens/s", ""]
    append_results("\n".join(head + lines))


if __name__ == "__main__":
    main()
