"""Generate text from Python with the model shipped in the package (no download, no GPU).

    python examples/python_inference.py                       # the shipped TinyStories model
    python examples/python_inference.py -m runs/default -n 40 # your own run, checkpoint or model file
"""
import argparse
import os
import tempfile

import bitttt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default="tinystories", help="model file, run directory or shipped model name")
    ap.add_argument("-n", "--max-tokens", type=int, default=60, help="tokens per generation")
    args = ap.parse_args()

    model = bitttt.load(args.model)
    print(model)  # the shape and the parameter count

    # one call: a continuation from a fresh memory (fixed seed: the same text every run)
    print(model.generate("Once upon a time", max_tokens=args.max_tokens, temperature=0.7, seed=1))

    # streaming: whole UTF-8 characters as they are made
    for piece in model.stream("The little dog", max_tokens=args.max_tokens, temperature=0.7, seed=2):
        print(piece, end="", flush=True)
    print()

    # a session keeps its TTT state (the model's memory) across calls; save and restore it
    s = model.session()
    s.feed("Tom has a red ball. He likes to play with it in the park.")
    print(s.generate(" One day, Tom", max_tokens=args.max_tokens // 2, temperature=0.7, seed=3))
    print(s.stats)  # prefill and decode speed of the last call
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "tom.mem")
        s.save_memory(path)
        again = model.session()
        again.load_memory(path)
        print(f"memory file {os.path.getsize(path):,} bytes; it holds {again.state.n_tokens} tokens read")


if __name__ == "__main__":
    main()
