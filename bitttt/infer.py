"""Run a model: `python -m bitttt.infer [-m MODEL] [-p PROMPT | -f FILE | -i] [options]`.

MODEL is a packed model file, a run directory (its best checkpoint) or a checkpoint file;
without -m, the model shipped with the package (a small TinyStories model) is used.  Text
streams to stdout as it is made; timings go to stderr at the end, as llama.cpp prints them.

    python -m bitttt.infer -m runs/default -p "Once upon a time" -n 100 --temp 0.7 -s 42
    python -m bitttt.infer -m runs/default -i --memory me.mem     # chat; the memory is kept in me.mem

Chat commands: /reset, /save NAME, /load NAME, /temp X, /len N, /sleep, /help, /quit.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from .diskerrors import describe
from .formats import CheckpointError, MemoryFileError

SHIPPED_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models",
                             "tinystories-ternary.safetensors")

HELP = """commands:
  /reset       forget the conversation (back to the trained state)
  /save NAME   save the memory (TTT state) as NAME in the memory folder
  /load NAME   load a saved memory
  /temp X      sampling temperature (0 = greedy)
  /len N       at most N tokens per answer
  /sleep       replay the logged conversations into the memory, then save it
  /help        this text
  /quit        leave (Ctrl+D too)"""


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m bitttt.infer", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("-m", "--model", default=None,
                    help="model file, run directory or checkpoint (default: the shipped model)")
    ap.add_argument("-p", "--prompt", default=None, help="prompt text")
    ap.add_argument("-f", "--file", default=None, help="read the prompt from a UTF-8 file")
    ap.add_argument("-n", "--n-predict", type=int, default=128, help="tokens to generate (default 128)")
    ap.add_argument("--temp", type=float, default=0.8, help="temperature, 0 = greedy (default 0.8)")
    ap.add_argument("--top-k", type=int, default=40, help="top-k, 0 = off (default 40)")
    ap.add_argument("--top-p", type=float, default=0.95, help="top-p (default 0.95)")
    ap.add_argument("--min-p", type=float, default=0.05, help="min-p (default 0.05)")
    ap.add_argument("--repeat-penalty", type=float, default=1.1, help="1 = off (default 1.1)")
    ap.add_argument("--repeat-last-n", type=int, default=64, help="penalty window, -1 = all (default 64)")
    ap.add_argument("-s", "--seed", type=int, default=-1, help="-1 = random (default), printed")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--memory", default=None, help="memory (TTT state) file: loaded if it exists, saved at the end")
    ap.add_argument("-i", "--interactive", action="store_true", help="chat")
    ap.add_argument("--system", default="", help="system message for the chat")
    return ap.parse_args(argv)


def _sampling(a) -> dict:
    return dict(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p, repeat_penalty=a.repeat_penalty,
                repeat_last_n=a.repeat_last_n, seed=a.seed, max_tokens=a.n_predict)


def _memory_dir(model_path: str) -> str:
    if os.path.isdir(model_path):
        return os.path.join(model_path, "memory")
    return os.path.splitext(os.path.abspath(model_path))[0] + ".memory"


def chat(model, args, out=sys.stdout, inp=sys.stdin) -> None:
    """The interactive loop: roles <|system|>, <|user|>, <|assistant|>; commands start with /."""
    tok = model.tokenizer
    s = model.session()
    if args.memory and os.path.exists(args.memory):
        s.load_memory(args.memory)
        print(f"[memory loaded from {args.memory}: {s.state.n_tokens} tokens read before]", file=sys.stderr)
    mdir = _memory_dir(args.model)
    log_path = os.path.join(mdir, "conversations.jsonl")
    sampling = _sampling(args)
    stop_ids = (tok.special_ids["<|user|>"], tok.special_ids["<|system|>"])
    if args.system:
        s.feed("<|system|>" + args.system)
    tty = inp.isatty()
    print("chat: type a message, /help for commands, /quit to leave", file=sys.stderr)

    def log(role, text):
        if log.failed:
            return
        try:
            os.makedirs(mdir, exist_ok=True)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), "role": role,
                                    "text": text}) + "\n")
        except OSError as e:  # a read-only or full disk: the chat goes on without its log
            log.failed = True
            print(f"warning: the conversation is not logged ({describe(e) or e})", file=sys.stderr)
    log.failed = False

    while True:
        if tty:
            print("> ", end="", file=sys.stderr, flush=True)
        line = inp.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.strip().partition(" ")
            arg = arg.strip()
            try:
                if cmd == "/quit":
                    break
                if cmd == "/help":
                    print(HELP, file=out)
                elif cmd == "/reset":
                    s.reset()
                    print("[memory reset]", file=out)
                elif cmd in ("/save", "/load"):
                    if not arg or "/" in arg or arg.startswith("."):
                        print(f"[usage: {cmd} NAME (a plain name)]", file=out)
                        continue
                    path = os.path.join(mdir, arg + ".mem.safetensors")
                    if cmd == "/save":
                        os.makedirs(mdir, exist_ok=True)
                        s.save_memory(path, note=arg)
                        print(f"[memory saved to {path}]", file=out)
                    else:
                        if not os.path.exists(path):
                            print(f"[no memory named {arg} in {mdir}]", file=out)
                            continue
                        s.load_memory(path)
                        print(f"[memory {arg} loaded]", file=out)
                elif cmd == "/temp":
                    sampling["temperature"] = float(arg)
                    print(f"[temperature {sampling['temperature']}]", file=out)
                elif cmd == "/len":
                    sampling["max_tokens"] = int(arg)
                    print(f"[at most {sampling['max_tokens']} tokens per answer]", file=out)
                elif cmd == "/sleep":
                    n = s.replay_log(log_path)
                    path = args.memory or os.path.join(mdir, "sleep.mem.safetensors")
                    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
                    s.save_memory(path, note="sleep")
                    print(f"[slept: replayed {n} tokens of logged conversations; memory saved to {path}]", file=out)
                else:
                    print(f"[unknown command {cmd}; /help lists them]", file=out)
            except (ValueError, MemoryFileError) as e:
                print(f"[error: {e}]", file=out)
            continue
        log("user", line)
        s.feed("<|user|>" + line + "<|assistant|>")
        pieces = []
        for piece in s.stream(stop_ids=stop_ids, **sampling):
            pieces.append(piece)
            print(piece, end="", file=out, flush=True)
        print(file=out, flush=True)
        log("assistant", "".join(pieces))
        if sampling["seed"] != -1:
            sampling["seed"] += 1  # a fixed seed gives a reproducible conversation, not the same draw each turn
    if args.memory:
        s.save_memory(args.memory, note="chat")
        print(f"[memory saved to {args.memory}]", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    from . import runtime
    from .generation import load
    from .locks import hold_for_process

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            runtime.set_num_threads(args.threads)
        if args.device == "cuda":
            print("warning: the CUDA backend is not available in this build; running on the CPU", file=sys.stderr)
        if args.n_predict < 0:
            raise ValueError(f"-n must be >= 0, got {args.n_predict}")
        if args.model is None:
            args.model = SHIPPED_MODEL
            if not os.path.exists(args.model):
                raise ValueError(f"no model given and the shipped model {SHIPPED_MODEL} is missing: pass -m "
                                 "MODEL (a run directory such as runs/default after `python -m bitttt.train`)")
        prompt = args.prompt or ""
        if args.file:
            try:
                if os.path.exists(args.file) and not os.path.isfile(args.file):  # a directory, /dev/zero, a FIFO
                    raise ValueError(f"{args.file}: not a regular file")
                with open(args.file, "rb") as f:
                    raw = f.read()
                prompt += raw.decode("utf-8")
            except FileNotFoundError:
                raise ValueError(f"{args.file}: no such prompt file") from None
            except UnicodeDecodeError as e:
                raise ValueError(f"{args.file}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset "
                                 f"{e.start}); convert it to UTF-8") from None
        from .sampling import SamplingParams

        SamplingParams(**_sampling(args)).validate()
        if args.memory:  # this process alone reads and writes the memory file until it exits
            hold_for_process(args.memory, "memory file", wait=5.0)
        model = load(args.model)
        if args.interactive:
            chat(model, args)
            return 0
        s = model.session()
        if args.memory and os.path.exists(args.memory):
            s.load_memory(args.memory)
        sys.stdout.write(prompt)
        for piece in s.stream(prompt, **_sampling(args)):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        print(f"\nseed: {s.stats.seed}; stopped by {s.stats.stopped_by}\n{s.stats}", file=sys.stderr)
        if args.memory:
            s.save_memory(args.memory)
            print(f"memory saved to {args.memory}", file=sys.stderr)
    except (ValueError, TypeError, CheckpointError, MemoryFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only file system, a path of the wrong kind
        msg = describe(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
