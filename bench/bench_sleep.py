"""What /sleep does to the memory: the loss on a logged conversation before and after it.

    python bench/bench_sleep.py [-m tinystories] [--text ../shared/data/tinystories_valid_sample.txt]
                                [--tokens 8192] [--seed 1] [--reset-every N [--decay F]]

Runs a real chat (`python -m bitttt.infer -i --memory FILE`, a few user turns, sampled answers)
in a temporary folder, then a second chat that only types /sleep, then a third that /sleeps
again.  Scores, from the memory after the chat, after /sleep and after the second /sleep (and
from the trained state): the conversation as /sleep reads it (the logged turns with their role
tags), and the first --tokens tokens of --text with the state reset to that memory every 256
tokens (the issue-13 check that /sleep does not hurt other text).  Losses in nats per token.
--reset-every / --decay are passed to the chats.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TURNS = ["Tom has a red ball. He likes to play with it in the park.",
         "One day the ball rolls into the pond. Tom is sad.",
         "His friend Sue helps him get the ball back with a long stick.",
         "Tom says thank you to Sue and they play together."]


def score_from(im, state, ids: list[int], reset_every: int = 0) -> float:
    """Mean next-token loss of `ids`, read from a copy of `state` (again every reset_every tokens)."""
    total, n, pos = 0.0, 0, 0
    while pos < len(ids) - 1:
        end = min(pos + (reset_every or len(ids)), len(ids) - 1)
        st = state.copy()
        lg = im.feed(st, ids[pos:end], all_logits=True).astype(np.float64)
        m = lg.max(axis=1)
        lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
        tgt = np.asarray(ids[pos + 1:end + 1])
        total += float((lse - lg[np.arange(len(tgt)), tgt]).sum())
        n += len(tgt)
        pos = end
    return total / n


def chat(model: str, mem: str, stdin: str, seed: int, home: str, extra: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), HOME=home,
               XDG_DATA_HOME=os.path.join(home, "share"))
    r = subprocess.run([sys.executable, "-m", "bitttt.infer", "-m", model, "-i", "--memory", mem, "-n", "48",
                        "-s", str(seed), *extra], input=stdin, capture_output=True, text=True, env=env, timeout=600)
    if r.returncode:
        raise SystemExit(f"the chat failed: {r.stderr.strip()}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="tinystories")
    ap.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data", "tinystories_valid_sample.txt"))
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reset-every", type=int, default=0)
    ap.add_argument("--decay", type=float, default=None)
    a = ap.parse_args()
    extra = ["--reset-every", str(a.reset_every)] + (["--decay", str(a.decay)] if a.decay is not None else [])

    import bitttt
    from bitttt.chatlog import unreplayed

    m = bitttt.load(a.model)
    im = m.im
    work = tempfile.mkdtemp(prefix="bench-sleep-")
    try:
        mem = os.path.join(work, "m.mem")
        chat(a.model, mem, "\n".join(TURNS) + "\n/quit\n", a.seed, work, extra)
        shutil.copy(mem, os.path.join(work, "chat.mem"))
        out1 = chat(a.model, mem, "/sleep\n/quit\n", a.seed, work, extra)
        shutil.copy(mem, os.path.join(work, "sleep1.mem"))
        out2 = chat(a.model, mem, "/sleep\n/quit\n", a.seed, work, extra)
        print(out1.strip().splitlines()[-1])
        print(out2.strip().splitlines()[-1])
        conv = im.tokenizer.encode(unreplayed(os.path.join(work, "m.conversations.jsonl")).text)
        with open(a.text, encoding="utf-8") as f:
            text = im.tokenizer.encode(f.read(a.tokens * 8))[:a.tokens]
        states = {"trained state": im.new_state(),
                  "after the chat": im.load_memory(os.path.join(work, "chat.mem")),
                  "after /sleep": im.load_memory(os.path.join(work, "sleep1.mem")),
                  "after a 2nd /sleep": im.load_memory(mem)}
        print(f"\nmodel {a.model}, chats with {' '.join(extra)}; conversation {len(conv)} tokens "
              f"({len(TURNS)} user turns, seed {a.seed}); "
              f"{os.path.basename(a.text)} first {len(text)} tokens, reset to the memory every 256")
        print(f"{'memory':<20} {'tokens held':>11} {'conversation':>13} {'text (reset 256)':>17}")
        for name, st in states.items():
            print(f"{name:<20} {st.n_tokens:>11,} {score_from(im, st, conv):>13.4f} "
                  f"{score_from(im, st, text, 256):>17.4f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
