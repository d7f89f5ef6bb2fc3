"""Serving speed: streaming clients against `python -m bitttt.serve` on loopback.

    python bench/bench_serve.py [--clients 1 2 4 8 16] [--tokens 48] [--threads 2]
                                [--models shipped d2048] [--llama-server BIN --gguf FILE] [--no-append]

For each model the server runs in its own process (`--parallel` = the largest client count);
for each concurrency c, c client threads each stream one greedy completion of `--tokens`
tokens (ignore_eos, a prompt of 16 token ids of its own, its own session) at the same moment.
Reported: aggregate tokens/s (every client's tokens over the round's wall time) and its ratio
to the single client, time to first token p50/p95 and inter-token latency p50/p95 (the gaps
between a stream's token chunks: `return_token_ids` makes one chunk per token).

Models: the shipped one (D=256, 6 layers) and the D=2048, 8-layer, V=32000 model of
bench_decode.py (its build() writes bench/.cache/decode_2048x8_v32000.safetensors once).  With
--llama-server and --gguf, llama.cpp's llama-server (-np c) runs the same clients in the same
run on the same-shape GGUF (bench/make_gguf.py); without them it is reported as not run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT]  # bench_kernels, bench_decode; this checkout's bitttt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            sys.exit(f"the server exited ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit("the server did not come up")


def one_stream(url: str, body: dict, out: dict, start: threading.Barrier) -> None:
    """POST a streaming completion once every client is ready; out: t0, the time of every token."""
    import httpx

    times = []
    with httpx.Client(timeout=600) as c:  # made before the clock starts (its set-up is not the server's)
        start.wait()
        out["t0"] = time.perf_counter()
        _stream(c, url, body, out, times)
        out["t_end"] = time.perf_counter()
    out["times"] = times


def _stream(c, url: str, body: dict, out: dict, times: list) -> None:
    with c.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            out["error"] = f"{r.status_code}: {r.text[:300]}"
            return
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            ch = d.get("choices") or []
            if not ch:
                continue
            n = len(ch[0].get("token_ids") or []) or (1 if ch[0].get("text") else 0)
            now = time.perf_counter()
            times.extend([now] * n)


def round_of(url: str, c: int, tokens: int, vocab: int, tag: str) -> dict:
    rng = np.random.default_rng(c)
    outs = [{} for _ in range(c)]
    bodies = [{"prompt": [int(t) for t in rng.integers(7, vocab, 16)], "max_tokens": tokens, "temperature": 0,
               "stream": True, "ignore_eos": True, "return_token_ids": True, "n_predict": tokens,
               "session_id": f"{tag}-{c}-{i}", "cache_prompt": False} for i in range(c)]
    start = threading.Barrier(c)
    ts = [threading.Thread(target=one_stream, args=(url, b, o, start)) for b, o in zip(bodies, outs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    errs = [o["error"] for o in outs if "error" in o]
    if errs:
        sys.exit(f"a request failed: {errs[0]}")
    wall = max(o["t_end"] for o in outs) - min(o["t0"] for o in outs)
    n = sum(len(o["times"]) for o in outs)
    ttft = [(o["times"][0] - o["t0"]) * 1e3 for o in outs if o["times"]]
    itl = [g * 1e3 for o in outs for g in np.diff(o["times"])]
    return {"clients": c, "tokens": n, "wall": wall, "tps": n / wall,
            "ttft50": float(np.percentile(ttft, 50)), "ttft95": float(np.percentile(ttft, 95)),
            "itl50": float(np.percentile(itl, 50)) if itl else 0.0,
            "itl95": float(np.percentile(itl, 95)) if itl else 0.0}


def run_server(cmd: list[str], url: str, clients: list[int], tokens: int, vocab: int, tag: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_health(url, proc)
        round_of(url, 1, min(tokens, 8), vocab, tag + "-warm")
        rows = []
        for c in clients:
            r = round_of(url, c, tokens, vocab, tag)
            print(f"  {tag} clients {c:2d}: {r['tps']:8.1f} tok/s  TTFT p50 {r['ttft50']:7.1f} ms  "
                  f"ITL p50 {r['itl50']:6.1f} ms", flush=True)
            rows.append(r)
        return rows
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def table(name: str, rows: list[dict]) -> list[str]:
    base = rows[0]["tps"] if rows and rows[0]["clients"] == 1 else None
    out = []
    for r in rows:
        ratio = f"{r['tps'] / base:.2f}x" if base else "-"
        out.append(f"| {name} | {r['clients']} | {r['tps']:.1f} | {ratio} | {r['ttft50']:.1f} | {r['ttft95']:.1f} | "
                   f"{r['itl50']:.1f} | {r['itl95']:.1f} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--tokens", type=int, default=48, help="tokens each client streams")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["shipped", "d2048"], choices=["shipped", "d2048"])
    ap.add_argument("--llama-server", help="llama.cpp's llama-server binary, for a same-run comparison")
    ap.add_argument("--gguf", help="the llama.cpp model of the D=2048 shape (bench/make_gguf.py)")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if bool(args.llama_server) != bool(args.gguf):
        sys.exit("--llama-server and --gguf go together")
    from bench_decode import CACHE, build

    from bitttt.infer import SHIPPED_MODEL

    paths = {"shipped": SHIPPED_MODEL, "d2048": os.path.join(CACHE, "decode_2048x8_v32000.safetensors")}
    if "d2048" in args.models and not os.path.exists(paths["d2048"]):
        print(f"building {paths['d2048']} ...", flush=True)
        build(paths["d2048"])
    lines = ["| model | clients | aggregate tok/s | vs 1 client | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | "
             "ITL p95 ms |",
             "|---|---|---|---|---|---|---|---|"]
    np_ = max(args.clients)
    for name in args.models:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "bitttt.serve", "-m", paths[name], "--port", str(port), "--parallel", str(np_),
               "-t", str(args.threads), "--log-level", "warning", "--memory-budget", "4096"]
        vocab = 276 if name == "d2048" else 4096
        print(f"{name}: {' '.join(cmd[1:])}", flush=True)
        lines += table(f"bitttt {name}", run_server(cmd, url, args.clients, args.tokens, vocab, name))
    if args.llama_server:
        for c in args.clients:  # llama-server's slots are fixed at start: one server per concurrency
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            cmd = [args.llama_server, "-m", args.gguf, "--host", "127.0.0.1", "--port", str(port), "-np", str(c),
                   "-t", str(args.threads), "-c", str(c * (16 + args.tokens + 16))]
            rows = run_server(cmd, url, [c], args.tokens, 276, f"llama-{c}")
            lines += table("llama-server d2048", rows)
        llama_note = "llama-server: run (rows `llama-server d2048`, one server per concurrency)"
    else:
        llama_note = ("llama-server: not run (not installed here; pass --llama-server BIN --gguf FILE, the GGUF from "
                      "bench/make_gguf.py)")
    print("\n".join(lines))
    print(llama_note)
    if args.no_append:
        return
    from bench_kernels import append_results, machine

    head = [f"\n## bench_serve -- {datetime.datetime.now():%Y-%m-%d %H:%M}\n",
            f"- machine: {machine()}; load average when it ended: "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} (a machine shared with other jobs)",
            f"- command: `python bench/bench_serve.py --clients {' '.join(map(str, args.clients))} --tokens "
            f"{args.tokens} --threads {args.threads} --models {' '.join(args.models)}`"
            + (" --llama-server BIN --gguf FILE" if args.llama_server else ""),
            f"- server: `python -m bitttt.serve --parallel {np_} -t {args.threads}` in its own process, clients "
            "in threads of the bench process (httpx streaming, greedy, ignore_eos, 16-token prompts, one session "
            "each); aggregate = all clients' tokens / the round's wall time",
            f"- {llama_note}", ""]
    append_results("\n".join(head + lines))


if __name__ == "__main__":
    main()
