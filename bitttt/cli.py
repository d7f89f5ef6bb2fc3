"""The `bitttt` command: one entry point for every tool of the package.

    bitttt prepare INPUT... --out DIR      text files or folders -> token files (python -m bitttt.data prepare)
    bitttt train [key=value ...]           train a model (python -m bitttt.train)
    bitttt chat [-m MODEL]                 chat with a model that keeps its memory (python -m bitttt.infer -i)
    bitttt run [-m MODEL] -p PROMPT        one-shot generation (python -m bitttt.infer)
    bitttt eval -m MODEL --data FILE|DIR   loss, perplexity, bits per byte (python -m bitttt.eval)
    bitttt export RUN [--out FILE]         a packed model file for inference (python -m bitttt.export; --format t1)
    bitttt info                            version, CPU features, kernel path, threads, optional extras
    bitttt completion bash|zsh             shell completion: eval "$(bitttt completion bash)" in ~/.bashrc
    bitttt serve | studio                  when those modules are installed (the `serve` / `studio` extras)

`bitttt COMMAND --help` (or `bitttt help COMMAND`) shows a command's options.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import platform
import sys
from collections.abc import Sequence

# name -> (module, one line); each module has main(argv, prog=...)
COMMANDS = {
    "prepare": ("bitttt.data.__main__", "text files or folders -> token files for training"),
    "train": ("bitttt.train", "train a model (train --help lists every setting)"),
    "chat": ("bitttt.infer", "chat with a model; its memory is kept between chats"),
    "run": ("bitttt.infer", "one-shot generation from a prompt"),
    "eval": ("bitttt.eval", "loss, perplexity and bits per byte of a model on text"),
    "export": ("bitttt.export", "write a packed model file for inference"),
    "info": ("bitttt.cli", "version, CPU features, kernel path, threads, optional extras"),
    "completion": ("bitttt.cli", "print a bash/zsh completion script: eval \"$(bitttt completion bash)\""),
    "serve": ("bitttt.serve", "an HTTP server for a model (the `serve` extra)"),
    "studio": ("bitttt.studio", "the web studio (the `studio` extra)"),
}
OPTIONAL_COMMANDS = ("serve", "studio")

# extra -> the distributions it installs, as pyproject.toml lists them
EXTRAS = {
    "cuda": ("pycuda", "nvidia-ml-py"),
    "serve": ("fastapi", "uvicorn", "sse-starlette"),
    "studio": ("fastapi", "uvicorn", "sse-starlette"),
    "mpi": ("mpi4py", "mpich"),
    "plot": ("matplotlib",),
}


def _has_dist(name: str) -> bool:
    """Whether the distribution `name` is installed (its metadata is there)."""
    from importlib import metadata

    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _version() -> str:
    from . import __version__

    return __version__


def usage() -> str:
    """The top-level help text (the commands of this installation)."""
    lines = [f"usage: bitttt COMMAND [options]   (bitttt {_version()})", "", "commands:"]
    for name, (mod, what) in COMMANDS.items():
        if name in OPTIONAL_COMMANDS and not _has_module(mod):
            what += " -- not installed"
        lines.append(f"  {name:<9} {what}")
    lines += ["", "options:", "  -h, --help  this text", "  --version   the version", "",
              "`bitttt COMMAND --help` shows a command's options; `python -m bitttt.train` and the other",
              "`python -m bitttt.X` forms work as well."]
    return "\n".join(lines)


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package is missing
        return False


_FEATURES = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "amx_int8", "neon", "asimd")


def cpu_model_and_features() -> tuple[str, list[str]]:
    """The CPU's model name and the SIMD features the kernels care about (Linux /proc/cpuinfo;
    elsewhere the platform module's processor name and no feature list)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and val.strip():
                    name = val.strip()
                elif key in ("flags", "Features"):
                    flags.update(val.split())
                if key == "" and flags:  # the first processor is enough
                    break
    except OSError:
        pass
    return name, [f for f in _FEATURES if f in flags]


def info() -> dict:
    """What `bitttt info` prints: version, platform, CPU features, kernel path, threads,
    devices, optional extras present, shipped models."""
    import numpy as np

    from . import runtime
    from .generation import SHIPPED_MODELS
    from .infer import available_devices

    ci = runtime.cpu_info()
    extras = {extra: {d: _has_dist(d) for d in dists} for extra, dists in EXTRAS.items()}
    return {
        "version": _version(),
        "package": os.path.dirname(os.path.abspath(__file__)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_model_and_features()[0],
        "cpu_features": cpu_model_and_features()[1],
        "kernel": ci["kernel"],
        "available_kernels": ci["available_kernels"],
        "threads": ci["threads"],
        "physical_cores": ci["physical_cores"],
        "logical_cpus": os.cpu_count() or 1,
        "openmp": bool(ci["openmp"]),
        "devices": available_devices(),
        "core": os.path.basename(getattr(importlib.import_module("bitttt._core"), "__file__", "") or "?"),
        "extras": extras,
        "commands": {c: _has_module(COMMANDS[c][0]) for c in OPTIONAL_COMMANDS},
        "readline": _has_module("readline"),
        "shipped_models": {k: os.path.basename(v) for k, v in SHIPPED_MODELS.items() if os.path.exists(v)},
    }


def print_info(out=None) -> None:
    """`bitttt info`: one fact per line."""
    out = out or sys.stdout
    d = info()
    env = {k: os.environ[k] for k in ("BITTTT_KERNEL", "BITTTT_NUM_THREADS") if k in os.environ}
    rows = [
        ("bitttt", f"{d['version']} ({d['package']})"),
        ("python", f"{d['python']}, numpy {d['numpy']}"),
        ("platform", d["platform"]),
        ("cpu", f"{d['cpu']}: {d['physical_cores']} physical cores, {d['logical_cpus']} logical CPUs"),
        ("features", ", ".join(d["cpu_features"]) or "(not known on this platform)"),
        ("kernels", f"{d['kernel']} in use; this CPU runs {', '.join(d['available_kernels'])}"),
        ("threads", f"{d['threads']} (OpenMP {'on' if d['openmp'] else 'off'})"
         + (f"; from {', '.join(f'{k}={v}' for k, v in env.items())}" if env else "")),
        ("C core", d["core"]),
        ("devices", ", ".join(d["devices"])),
    ]
    for extra, mods in d["extras"].items():
        have = [m for m, ok in mods.items() if ok]
        state = "installed" if len(have) == len(mods) else ("partly: " + ", ".join(have) if have else "not installed")
        rows.append((f"extra {extra}", f"{state} ({', '.join(mods)})"))
    for c, ok in d["commands"].items():
        rows.append((f"command {c}", "available" if ok else "not available in this installation"))
    rows.append(("readline", "yes (chat line editing and history)" if d["readline"] else "no"))
    rows.append(("models", ", ".join(f"{k} ({v})" for k, v in d["shipped_models"].items()) or "none shipped"))
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}", file=out)


def completion_words() -> dict[str, list[str]]:
    """Per command, what completion offers: its options, and for train every setting as key=."""
    import argparse

    from . import eval as eval_cmd
    from . import export, infer, train
    from .data.__main__ import add_prepare_arguments

    prep = argparse.ArgumentParser(add_help=True)
    add_prepare_arguments(prep)
    parsers = {"prepare": prep, "train": train.build_parser(), "chat": infer.build_parser(chat=True),
               "run": infer.build_parser(chat=False), "eval": eval_cmd.build_parser(), "export": export.build_parser()}
    words = {}
    for name, p in parsers.items():
        opts = sorted({o for a in p._actions for o in a.option_strings if o.startswith("--")})
        words[name] = opts
    words["train"] += sorted(k + "=" for k in train._keys()) + [f"preset={n}" for n in train.PRESETS]
    words["completion"] = ["bash", "zsh"]
    return words


def completion_script(shell: str = "bash") -> str:
    """A completion function for bash (zsh through bashcompinit): commands, then each command's
    options (train: its settings as key=), then file names."""
    if shell not in ("bash", "zsh"):
        raise ValueError(f"completion for bash or zsh, got {shell!r}")
    words = completion_words()
    cases = "\n".join(f'        {name}) opts="{" ".join(w)}" ;;' for name, w in words.items())
    body = f"""_bitttt_complete() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" opts=""
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "{' '.join(c for c in COMMANDS)} help --help --version" -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}" in
{cases}
    esac
    if [[ "$cur" == -* || "${{COMP_WORDS[1]}}" == train || "${{COMP_WORDS[1]}}" == completion ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    fi
    if [ "${{#COMPREPLY[@]}}" -eq 1 ] && [[ "${{COMPREPLY[0]}}" == *= ]]; then
        compopt -o nospace 2>/dev/null
    fi
    if [ "${{#COMPREPLY[@]}}" -eq 0 ]; then
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -F _bitttt_complete bitttt
"""
    if shell == "zsh":
        body = "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


def _run_optional(name: str, argv: list[str]) -> int:
    """`bitttt serve` / `bitttt studio`: the module's main(argv) when it has one, else the module
    run as `python -m bitttt.<name>`; a plain message when it is not installed."""
    mod_name = COMMANDS[name][0]
    if not _has_module(mod_name):
        print(f"bitttt {name}: not available in this installation ({mod_name} is not part of this version "
              f"of bitttt)", file=sys.stderr)
        return 2
    try:
        fn = getattr(importlib.import_module(mod_name), "main", None)
    except ImportError as e:
        print(f"bitttt {name}: a package it needs is missing ({e}); install it with "
              f"pip install 'bitttt[{name}]'", file=sys.stderr)
        return 2
    if fn is None:
        import runpy

        old = sys.argv
        sys.argv = [f"bitttt {name}", *argv]
        try:
            runpy.run_module(mod_name, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv = old
        return 0
    import inspect

    try:
        takes_argv = bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        takes_argv = True
    old = sys.argv
    sys.argv = [f"bitttt {name}", *argv]  # for a main() that parses sys.argv itself
    try:
        rc = fn(argv) if takes_argv else fn()
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    return int(rc or 0) if isinstance(rc, (int, type(None))) else 0


def main(argv: Sequence[str] | None = None) -> int:
    """`bitttt COMMAND ...`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args[0] in ("-V", "--version"):
        print(f"bitttt {_version()}")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "help":
        if not rest:
            print(usage())
            return 0
        cmd, rest = rest[0], ["--help"]
    if cmd not in COMMANDS:
        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        hint = f"; did you mean `bitttt {close[0]}`?" if close else ""
        print(f"bitttt: unknown command {cmd!r}{hint} (`bitttt --help` lists them)", file=sys.stderr)
        return 2
    prog = f"bitttt {cmd}"
    try:
        if cmd == "info":
            if rest and rest[0] in ("-h", "--help"):
                print(f"usage: {prog}\n\n{COMMANDS['info'][1]}")
                return 0
            if rest:
                print(f"{prog}: takes no arguments, got {' '.join(rest)}", file=sys.stderr)
                return 2
            print_info()
            return 0
        if cmd == "completion":
            if rest and rest[0] in ("-h", "--help"):
                print(f"usage: {prog} bash|zsh\n\n{COMMANDS['completion'][1]}")
                return 0
            try:
                print(completion_script(rest[0] if rest else "bash"), end="")
            except ValueError as e:
                print(f"{prog}: {e}", file=sys.stderr)
                return 2
            return 0
        if cmd in OPTIONAL_COMMANDS:
            return _run_optional(cmd, rest)
        if cmd == "prepare":
            from .data.__main__ import main as data_main

            return data_main(["prepare", *rest], prog="bitttt")
        if cmd in ("chat", "run"):
            from .infer import main as infer_main

            return infer_main(rest, prog=prog, chat_mode=cmd == "chat")
        mod = importlib.import_module(COMMANDS[cmd][0])
        return mod.main(rest, prog=prog)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BrokenPipeError:  # `bitttt ... | head`: the reader left; stop quietly, as a shell tool does
        return _broken_pipe()
    except KeyboardInterrupt:  # a command without its own Ctrl+C handling (eval, export): no traceback
        print("\ninterrupted", file=sys.stderr)
        return 130


def _broken_pipe() -> int:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the exit's flush does not fail again
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
