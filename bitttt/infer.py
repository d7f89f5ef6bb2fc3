"""Run a model: `python -m bitttt.infer [-m MODEL] [-p PROMPT] [-f FILE|-] [-i] [options]`
(also `bitttt run ...` for one-shot generation and `bitttt chat ...` for a chat).

MODEL is a packed model file, a run directory (its best checkpoint), a checkpoint file or the
name of a shipped model (`tinystories`); without -m, the shipped TinyStories model is used.
Text streams to stdout as it is made; timings go to stderr at the end, as llama.cpp prints them.

    python -m bitttt.infer -p "Once upon a time" -n 100 --temp 0.7 -s 42
    python -m bitttt.infer -m runs/default -i --memory me.mem     # chat; the memory is kept in me.mem
    echo "Once upon a time" | python -m bitttt.infer -f - -n -1   # prompt from stdin, until end of text

The prompt is -p, then -f (a UTF-8 file, `-` for stdin); given both, they are joined with a
newline.  A prompt file of any length is read, shown and fed in pieces of about 64 KiB (cut after
a newline: the same tokens as the whole text), in memory independent of its length; Ctrl+C stops
reading it.  -n -1 generates until the model's end-of-text token (Ctrl+C stops it).  In a chat the
prompt is the first user turn (at most 4 MiB of text).

Chat keys: Ctrl+C stops the answer being written and returns to the prompt; Ctrl+C twice at an
empty prompt, Ctrl+D or /quit leave.  Every way out (SIGTERM and SIGHUP too) saves the memory
(the TTT state) atomically: to --memory FILE, else to last.mem.safetensors in the model's memory
folder (`/load last` brings it back).  The conversation is logged beside the memory file
(FILE's name + .conversations.jsonl; without --memory, conversations.jsonl in the memory folder:
<run>/memory, <model>.memory, or $XDG_DATA_HOME/bitttt (~/.local/share/bitttt) for the shipped
model; never inside the installed package); --no-log logs nothing.  /sleep replays the logged
turns the memory has not replayed before (the memory file records what it replayed), /memory
shows what the memory holds.  --reset-every N resets the state whenever it holds N tokens (or,
with --decay F, blends it toward the trained state by F every N tokens), for models that get
worse on long reads; a chat never resets by itself otherwise.  Line editing and history come
from readline (a pasted block of lines is one message); a line of three double quotes opens and
closes a multi-line message, and a line ending in a backslash continues on the next.  /help
lists the commands.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
from collections.abc import Iterator

from .diskerrors import describe
from .formats import CheckpointError, MemoryFileError
from .generation import SHIPPED_MODELS, check_reset_every
from .textstream import iter_text_pieces

SHIPPED_MODEL = SHIPPED_MODELS["tinystories"]
UNTIL_END = -1  # -n / /len value: generate until the end-of-text token
_NO_LIMIT = 1 << 62  # the token bound that stands for UNTIL_END (Ctrl+C stops it)
CHAT_PROMPT_MAX = 1 << 22  # characters of a chat's first message from -f (one message, logged whole)

# slash command -> (sampling key, type, meaning)
SETTINGS = {
    "/temp": ("temperature", float, "sampling temperature (0 = greedy)"),
    "/len": ("max_tokens", int, "at most N tokens per answer (-1 = until end of text)"),
    "/top-k": ("top_k", int, "keep the K likeliest tokens (0 = off)"),
    "/top-p": ("top_p", float, "keep the likeliest tokens up to probability P (1 = off)"),
    "/min-p": ("min_p", float, "drop tokens below P times the likeliest (0 = off)"),
    "/repeat-penalty": ("repeat_penalty", float, "penalty on recent tokens (1 = off)"),
    "/seed": ("seed", int, "seed of the next answer (-1 = random)"),
}

_COMMANDS = [
    ("/reset", "forget the conversation (back to the trained state)"),
    ("/save NAME", "save the memory (TTT state) as NAME in the memory folder"),
    ("/load NAME", "load a saved memory (`last`: the memory saved when the last chat ended)"),
    *((f"{cmd} {'N' if typ is int else 'X'}", what) for cmd, (_, typ, what) in SETTINGS.items()),
    ("/settings", "every sampling setting"),
    ("/sleep", "replay the logged turns not replayed before into the memory, then save it"),
    ("/memory", "what the memory holds: tokens, file, log, what /sleep would replay"),
    ("/help", "this text"),
    ("/quit", "save the memory and leave (Ctrl+D, or Ctrl+C twice at the prompt, too)"),
]
HELP = "\n".join(["commands (a setting given no value shows its current value):",
                  *(f"  {c:<19} {what}" for c, what in _COMMANDS),
                  'keys: Ctrl+C stops an answer; """ opens and closes a multi-line message; a line ending in \\ '
                  "continues"])


def build_parser(prog: str = "python -m bitttt.infer", chat: bool | None = None) -> argparse.ArgumentParser:
    """The argument parser; `chat` True (bitttt chat) or False (bitttt run) drops the -i switch."""
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("-m", "--model", default=None,
                    help="model file, run directory, checkpoint or shipped model name (default: tinystories)")
    ap.add_argument("-p", "--prompt", default=None, help="prompt text (in a chat: the first message)")
    ap.add_argument("-f", "--file", default=None, help="read the prompt from a UTF-8 file, - for stdin "
                                                       "(after -p, joined with a newline)")
    ap.add_argument("-n", "--n-predict", type=int, default=128,
                    help="tokens to generate, -1 = until end of text (default 128)")
    ap.add_argument("--temp", type=float, default=0.8, help="temperature, 0 = greedy (default 0.8)")
    ap.add_argument("--top-k", type=int, default=40, help="top-k, 0 = off (default 40)")
    ap.add_argument("--top-p", type=float, default=0.95, help="top-p (default 0.95)")
    ap.add_argument("--min-p", type=float, default=0.05, help="min-p (default 0.05)")
    ap.add_argument("--repeat-penalty", type=float, default=1.1, help="1 = off (default 1.1)")
    ap.add_argument("--repeat-last-n", type=int, default=64, help="penalty window, -1 = all (default 64)")
    ap.add_argument("-s", "--seed", type=int, default=-1, help="-1 = random (default), printed")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    ap.add_argument("--device", default="cpu", help="where to run: " + ", ".join(available_devices())
                    + " in this build (default cpu)")
    ap.add_argument("--memory", default=None, help="memory (TTT state) file: loaded if it exists, saved at the end")
    ap.add_argument("--reset-every", type=int, default=0, metavar="N",
                    help="reset the state whenever it holds N tokens, before reading more (default 0: never)")
    ap.add_argument("--decay", type=float, default=None, metavar="F",
                    help="with --reset-every N: instead of resetting, blend the state toward the trained one every "
                         "N tokens: inner weights = init + F * (current - init), 0 <= F < 1")
    if chat is None:
        ap.add_argument("-i", "--interactive", action="store_true", help="chat")
    ap.add_argument("--system", default="", help="system message for the chat")
    ap.add_argument("--no-log", action="store_true", help="chat: do not log the conversation (/sleep has nothing "
                                                          "to replay)")
    return ap


def available_devices() -> list[str]:
    """The devices inference can run on in this build: 'cpu', plus 'cuda' when bitttt.backend
    offers a cuda backend that loads on this machine."""
    from . import backend

    out = ["cpu"]
    if "cuda" in getattr(backend, "NAMES", ()):
        try:
            backend.get("cuda")
            out.append("cuda")
        except Exception:  # the module is there but its driver or pycuda is not
            pass
    return out


def _sampling(a) -> dict:
    n = _NO_LIMIT if a.n_predict == UNTIL_END else a.n_predict
    return dict(temperature=a.temp, top_k=a.top_k, top_p=a.top_p, min_p=a.min_p, repeat_penalty=a.repeat_penalty,
                repeat_last_n=a.repeat_last_n, seed=a.seed, max_tokens=n)


def _user_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "bitttt")


def _in_package(path: str) -> bool:
    """True when `path` lies inside the installed bitttt package (links resolved)."""
    pkg = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    p = os.path.realpath(path)
    return os.path.commonpath([pkg, p]) == pkg


def _writable_dir(folder: str) -> bool:
    """True when files can be made in `folder`: it, or the nearest folder above it that exists
    (where it would be made), is a folder this process may write, outside the package."""
    p = os.path.abspath(folder)
    if _in_package(p):
        return False
    while not os.path.exists(p) and os.path.dirname(p) != p:
        p = os.path.dirname(p)
    return os.path.isdir(p) and os.access(p, os.W_OK | os.X_OK)


def _memory_dir(model_path: str) -> str:
    """Where a model's chat keeps its log, history and named memories: <run>/memory,
    <model file>.memory, or (for a shipped model, any model inside the package, or a model in a
    folder we cannot write) ~/.local/share/bitttt/<name>.memory."""
    p = os.path.abspath(model_path)
    if os.path.isdir(p):
        d = os.path.join(p, "memory")
    else:
        d = os.path.splitext(p)[0] + ".memory"
    if not _writable_dir(os.path.dirname(d)):
        d = os.path.join(_user_data_dir(), os.path.basename(d))
    return d


def log_path_for(memory: str | None, memory_dir: str) -> str:
    """The chat log of a chat: beside its --memory FILE (FILE less .safetensors and one more
    extension, + .conversations.jsonl), else, or when FILE's folder cannot be written (or is in
    the package), conversations.jsonl in the model's memory folder."""
    if memory:
        folder, name = os.path.split(os.path.abspath(memory))
        if name.endswith(".safetensors"):
            name = name[:-len(".safetensors")]
        stem = os.path.splitext(name)[0] or name
        if _writable_dir(folder):
            return os.path.join(folder, stem + ".conversations.jsonl")
    return os.path.join(memory_dir, "conversations.jsonl")


def _open_prompt(file: str, stdin=None):
    """The binary stream of a prompt file (`-`: stdin), checked: a regular file, or stdin.  A
    regular file is read through once to check it is UTF-8, so a bad one is refused before anything."""
    if file == "-":
        src = stdin or sys.stdin
        return getattr(src, "buffer", src)
    try:
        if os.path.exists(file) and not os.path.isfile(file) and not os.path.isdir(file):
            raise ValueError(f"{file}: not a regular file")  # /dev/zero, a FIFO: never read whole
        f = open(file, "rb")
    except FileNotFoundError:
        raise ValueError(f"{file}: no such prompt file") from None
    except IsADirectoryError:
        raise ValueError(f"{file}: is a folder, not a prompt file") from None
    try:
        for _ in iter_text_pieces(f, name=file):
            pass
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f


def _file_pieces(f, name: str, close: bool) -> Iterator[str]:
    try:
        yield from iter_text_pieces(f, name=name)
    finally:
        if close:
            f.close()


def prompt_pieces(prompt: str | None, file: str | None, stdin=None) -> Iterator[str]:
    """-p and -f together as text pieces: the -p text, a newline, then the file's text (`-`:
    stdin) in pieces of about 64 KiB cut after a newline (bitttt.textstream.iter_text_pieces).
    The file is opened and checked now (ValueError naming it), read as the pieces are taken."""
    head = [prompt + ("\n" if file else "")] if prompt else []
    if not file:
        return iter(head)
    f = _open_prompt(file, stdin)
    pieces = _file_pieces(f, "stdin" if file == "-" else file, close=file != "-")

    def chained() -> Iterator[str]:
        yield from head
        yield from pieces
    return chained()


def read_prompt(prompt: str | None, file: str | None, stdin=None, limit: int = CHAT_PROMPT_MAX) -> str:
    """-p and -f together as one text (see prompt_pieces), at most `limit` characters (ValueError
    past it: a chat's first message is one message; a one-shot run reads any length in pieces)."""
    out, n = [], 0
    for piece in prompt_pieces(prompt, file, stdin):
        n += len(piece)
        if n > limit:
            raise ValueError(f"{'stdin' if file == '-' else file}: more than {limit:,} characters, too long for a "
                             "chat's first message; `bitttt run -f FILE` reads a prompt of any length")
        out.append(piece)
    return "".join(out)


class _Leave(Exception):
    """SIGTERM / SIGHUP at the prompt: leave, saving."""


class _Signals:
    """While installed: SIGINT during busy work sets `stop` (the answer ends at the next token),
    at the prompt raises KeyboardInterrupt; SIGTERM/SIGHUP set `term` and `stop`, and raise
    _Leave at the prompt.  Restores the old handlers on exit."""

    def __init__(self):
        self.busy = False
        self.stop = False
        self.term: int | None = None
        self.old = {}

    def _int(self, signum, frame):
        if self.busy:
            self.stop = True
        else:
            raise KeyboardInterrupt

    def _term(self, signum, frame):
        self.term = signum
        self.stop = True
        if not self.busy:
            raise _Leave

    def __enter__(self):
        try:
            self.old[signal.SIGINT] = signal.signal(signal.SIGINT, self._int)
            for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
                if s is not None:
                    self.old[s] = signal.signal(s, self._term)
        except ValueError:  # not the main thread: the default behaviour stays
            pass
        return self

    def quiet(self) -> None:
        """Ignore further SIGINT/SIGTERM (while the memory is being saved)."""
        for s in self.old:
            signal.signal(s, signal.SIG_IGN)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        return False


def _describe(model, path: str) -> str:
    c = model.config
    return (f"{os.path.basename(os.path.normpath(path))} (D={c.hidden_size}, {c.num_layers} layers, V={c.vocab_size}, "
            f"{'ternary' if c.ternary else 'float'}, {model.num_params():,} parameters)")


class Chat:
    """The interactive loop: roles <|system|>, <|user|>, <|assistant|>; commands start with /."""

    def __init__(self, model, args, out=None, inp=None, err=None):
        self.model, self.args = model, args
        self.out, self.inp, self.err = out or sys.stdout, inp or sys.stdin, err or sys.stderr
        self.session = model.session(reset_every=getattr(args, "reset_every", 0), decay=getattr(args, "decay", None))
        self.mdir = _memory_dir(args.model)
        self.log_path = None if getattr(args, "no_log", False) else log_path_for(args.memory, self.mdir)
        self.memory_path = args.memory or os.path.join(self.mdir, "last.mem.safetensors")
        self.sampling = _sampling(args)
        tok = model.tokenizer
        self.stop_ids = (tok.special_ids["<|user|>"], tok.special_ids["<|system|>"])
        self.tty = self.inp is sys.stdin and self.inp.isatty()
        self.readline = None
        self.sig = _Signals()
        self.log_failed = False

    # -- input ---------------------------------------------------------------------
    def _setup_readline(self) -> None:
        if not self.tty:
            return
        try:
            import readline
        except ImportError:  # Windows without pyreadline: plain input() still works
            return
        self.readline = readline
        self.history = os.path.join(self.mdir, "history")
        try:
            readline.read_history_file(self.history)
        except OSError:
            pass
        readline.set_history_length(1000)
        # a pasted block (several lines) is one message: readline's bracketed paste, which
        # CPython turns off for its own prompt, is what a chat wants
        readline.parse_and_bind("set enable-bracketed-paste on")

    def _save_history(self) -> None:
        if self.readline is None:
            return
        try:
            os.makedirs(self.mdir, exist_ok=True)
            self.readline.write_history_file(self.history)
        except OSError:
            pass

    def _read(self, prompt: str) -> str:
        """One line without its newline; EOFError at the end of input."""
        if self.tty:
            return input(prompt)
        line = self.inp.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n").rstrip("\r")

    def read_message(self) -> str:
        """A whole message: one line, a \"\"\" block, or lines continued with a trailing backslash."""
        line = self._read("> ")
        if line.strip() == '"""':
            lines = []
            while True:
                try:
                    nxt = self._read("... ")
                except EOFError:  # the input ended inside the block: what was typed is still the message
                    if lines:
                        return "\n".join(lines)
                    raise
                if nxt.strip() == '"""':
                    return "\n".join(lines)
                lines.append(nxt)
        lines = []
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = self._read("... ")
        lines.append(line)
        return "\n".join(lines)

    # -- output --------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _log(self, role: str, text: str) -> None:
        if self.log_failed or self.log_path is None:
            return
        try:
            os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), "role": role,
                                    "text": text}) + "\n")
        except OSError as e:  # a read-only or full disk: the chat goes on without its log
            self.log_failed = True
            print(f"warning: the conversation is not logged ({describe(e) or e})", file=self.err, flush=True)

    def banner(self) -> None:
        s = self.session
        if self.args.memory and os.path.exists(self.args.memory):
            mem = f"{self.args.memory} (holds {s.state.n_tokens:,} tokens read before)"
        elif self.args.memory:
            mem = f"{self.args.memory} (new; saved when the chat ends)"
        else:
            mem = f"none given; saved when the chat ends to {self.memory_path} (/load last)"
        lines = [f"bitttt chat · model {_describe(self.model, self.args.model)}", f"memory: {mem}",
                 f"log: {self._log_state()}"]
        if s.reset_every:
            lines.append(f"state: {self._reset_rule()}")
        if self.args.system:
            lines.append(f"system: {self.args.system}")
        lines.append('Ctrl+C stops an answer; Ctrl+C twice, Ctrl+D or /quit leave; """ for several lines; /help')
        print("\n".join(lines), file=self.err, flush=True)

    # -- commands --------------------------------------------------------------------
    def command(self, line: str) -> bool:
        """Run a slash command; False when the chat should end."""
        from .sampling import SamplingParams

        cmd, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        sp = self.sampling
        try:
            if cmd == "/quit":
                return False
            if cmd == "/help":
                self.say(HELP)
            elif cmd == "/reset":
                self.session.reset()
                self.say("[memory reset]")
            elif cmd in ("/save", "/load"):
                if not arg or "/" in arg or "\\" in arg or arg.startswith("."):
                    self.say(f"[usage: {cmd} NAME (a plain name)]")
                    return True
                path = os.path.join(self.mdir, arg + ".mem.safetensors")
                if cmd == "/save":
                    os.makedirs(self.mdir, exist_ok=True)
                    self.session.save_memory(path, note=arg)
                    self.say(f"[memory saved to {path}]")
                elif not os.path.exists(path):
                    self.say(f"[no memory named {arg} in {self.mdir}]")
                else:
                    self.session.load_memory(path)
                    self.say(f"[memory {arg} loaded] ({self.session.state.n_tokens:,} tokens read)")
            elif cmd in SETTINGS:
                key, typ, what = SETTINGS[cmd]
                if not arg:
                    self.say(f"[{self._show(key)}]  ({cmd} {'N' if typ is int else 'X'}: {what})")
                    return True
                try:
                    v = typ(arg)
                except ValueError:
                    self.say(f"[{cmd} takes {'an integer' if typ is int else 'a number'}, got {arg!r}; "
                             f"{self._show(key)} kept]")
                    return True
                if key == "max_tokens":
                    if v == UNTIL_END:
                        v = _NO_LIMIT
                    elif v < 1:
                        self.say(f"[/len must be >= 1, or -1 for until the end of text; got {v}; "
                                 f"{self._show(key)} kept]")
                        return True
                trial = dict(sp, **{key: v})
                try:
                    SamplingParams(**trial).validate()
                except ValueError as e:
                    self.say(f"[{cmd}: {e}; {self._show(key)} kept]")
                    return True
                sp[key] = v
                self.say(f"[{self._show(key)}]")
            elif cmd == "/settings":
                self.say("[" + "; ".join(self._show(k) for k, _, _ in SETTINGS.values()) + "]")
            elif cmd == "/memory":
                self.say(self.memory_report())
            elif cmd == "/sleep":
                if self.log_path is None:
                    self.say("[nothing to sleep on: nothing is logged (--no-log)]")
                    return True
                r = self.session.consolidate(self.log_path)
                self.save(self.memory_path, note="sleep")
                before = f"; {r.skipped:,} replayed before, skipped" if r.skipped else ""
                what = (f"replayed {r.tokens} tokens of {r.records:,} new logged turn{'s' * (r.records != 1)}"
                        if r.records else "nothing new in the log to replay")
                self.say(f"[slept: {what}{before}; memory saved to {self.memory_path}]")
            else:
                self.say(f"[unknown command {cmd}; /help lists them]")
        except (ValueError, MemoryFileError, OSError) as e:
            self.say(f"[error: {e}]")
        return True

    def _log_state(self) -> str:
        """Where the conversation is logged, and how much of the log /sleep would replay."""
        if self.log_path is None:
            return "off (--no-log): nothing is logged, /sleep has nothing to replay"
        if self.log_failed:
            return f"{self.log_path} (cannot be written: this conversation is not logged)"
        try:
            span = self.session.unreplayed(self.log_path)
        except OSError as e:
            return f"{self.log_path} (unreadable: {describe(e) or e})"
        if not span.records and not span.skipped:
            return f"{self.log_path} (empty)" if os.path.exists(self.log_path) else f"{self.log_path} (new)"
        return (f"{self.log_path} ({span.records:,} turn{'s' * (span.records != 1)} not yet replayed by /sleep, "
                f"{span.skipped:,} replayed before)")

    def _reset_rule(self) -> str:
        s = self.session
        if s.decay is None:
            return f"reset whenever it holds {s.reset_every:,} tokens (--reset-every)"
        return f"blended toward the trained state by {s.decay:g} every {s.reset_every:,} tokens (--decay)"

    def memory_report(self) -> str:
        """The /memory text: tokens held, the file, tokens since the last save, what /sleep would replay."""
        s = self.session
        late = int(s.pending is not None)  # the answer's last token, read with the next message or save
        lines = [f"memory: {s.state.n_tokens + late:,} tokens held, {s.unsaved + late:,} read since the last save "
                 "or load",
                 f"file: {self.memory_path} ({'exists' if os.path.exists(self.memory_path) else 'not written yet'}; "
                 "saved when the chat ends)"]
        if self.log_path is None:
            lines.append("log: off (--no-log): /sleep has nothing to replay")
        else:
            span = s.unreplayed(self.log_path)
            n = len(s.im.tokenizer.encode(span.text)) if span.texts else 0
            lines.append(f"log: {self.log_path}: /sleep would replay {span.records:,} turn"
                         f"{'s' * (span.records != 1)} ({n:,} tokens); {span.skipped:,} replayed before")
        if s.reset_every:
            lines.append(f"state: {self._reset_rule()}; {s.resets:,} so far")
        return "[" + "\n ".join(lines) + "]"

    def _show(self, key: str) -> str:
        v = self.sampling[key]
        if key == "temperature":
            return f"temperature {v}"
        if key == "max_tokens":
            return "until the end of text" if v == _NO_LIMIT else f"at most {v} tokens per answer"
        return f"{key.replace('_', '-')} {v}"

    # -- turns -----------------------------------------------------------------------
    def answer(self, text: str) -> None:
        """Feed a user message and stream the answer; Ctrl+C (sig.stop) ends it at the next token."""
        self._log("user", text)
        pieces = []
        self.sig.stop, self.sig.busy = False, True
        try:
            self.session.feed("<|user|>" + text + "<|assistant|>")
            if not self.sig.stop:
                gen = self.session.stream(stop_ids=self.stop_ids, **self.sampling)
                try:
                    for piece in gen:
                        pieces.append(piece)
                        print(piece, end="", file=self.out, flush=True)
                        if self.sig.stop:
                            break
                finally:
                    gen.close()
        except ValueError as e:  # an attention model's context is full
            print(f"\n[error: {e}]", file=self.out, flush=True)
        finally:
            self.sig.busy = False
        print(file=self.out, flush=True)
        if self.sig.stop and self.sig.term is None:
            self.say("[stopped]")
        self._log("assistant", "".join(pieces))
        if self.sampling["seed"] != -1:
            self.sampling["seed"] += 1  # a fixed seed gives a reproducible conversation, not the same draw each turn

    def save(self, path: str, note: str = "chat") -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.session.save_memory(path, note=note)

    def _save_at_exit(self) -> None:
        """Save the memory to memory_path; when that cannot be written (a full disk, no permission),
        to a new file in the user's data folder instead, and say so: the memory is never dropped."""
        if not self.session.im.has_memory:  # attention layers only: the KV cache is not kept
            return
        try:
            self.save(self.memory_path)
        except OSError as e:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            fallback = os.path.join(_user_data_dir(), f"unsaved-{stamp}.mem.safetensors")
            self.save(fallback)
            print(f"[could not write {self.memory_path} ({e}); the memory is in {fallback}]", file=self.err,
                  flush=True)
            self.memory_path = fallback

    def run(self) -> int:
        """The chat until the user leaves; the memory is saved on every way out.  Returns the exit
        status: 0, or 128 + the signal number after SIGTERM / SIGHUP."""
        s = self.session
        if self.args.memory and os.path.exists(self.args.memory):
            s.load_memory(self.args.memory)
        if self.args.system:
            s.feed("<|system|>" + self.args.system)
        self.banner()
        self._setup_readline()
        first = self.args.first_message
        interrupts = 0
        with self.sig:
            try:
                while self.sig.term is None:
                    try:
                        if first:
                            msg, first = first, None
                            self.say("> " + msg)
                        else:
                            msg = self.read_message()
                        interrupts = 0
                    except KeyboardInterrupt:
                        interrupts += 1
                        if interrupts >= 2:
                            print(file=self.err)
                            break
                        print("\n[Ctrl+C again to leave; /help for commands]", file=self.err, flush=True)
                        continue
                    except EOFError:
                        print(file=self.err)
                        break
                    if not msg.strip():
                        continue
                    if msg.startswith("/") and "\n" not in msg:
                        if not self.command(msg):
                            break
                        continue
                    self.answer(msg)
            except _Leave:
                pass
            finally:
                self.sig.quiet()
                self._save_history()
                self._save_at_exit()
                try:  # after SIGHUP the terminal may be gone; the memory is written already
                    if s.im.has_memory:
                        print(f"[memory saved to {self.memory_path}: {s.state.n_tokens:,} tokens read]",
                              file=self.err, flush=True)
                except OSError:
                    pass
        return 0 if self.sig.term is None else 128 + int(self.sig.term)


def chat(model, args, out=None, inp=None) -> int:
    """Run the chat (see Chat); `args` as parsed by build_parser (first_message optional)."""
    if not hasattr(args, "first_message"):
        args.first_message = None
    return Chat(model, args, out=out, inp=inp).run()


def _shown(pieces, sig: _Signals) -> Iterator[str]:
    """The prompt's pieces, each written to stdout as it is taken; none after Ctrl+C."""
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        yield piece
        if sig.stop:
            return


def _generate(model, args, prompt: str | Iterator[str]) -> int:
    """One-shot generation: the prompt (a str or text pieces, shown as they are read), then the
    continuation streamed to stdout."""
    s = model.session(reset_every=args.reset_every, decay=args.decay)
    if args.memory and os.path.exists(args.memory):
        s.load_memory(args.memory)
    sig = _Signals()
    broken = False  # the reader of stdout left (`bitttt run ... | head`): stop, still save the memory
    with sig:
        sig.busy = True
        gen = s.stream(_shown([prompt] if isinstance(prompt, str) else prompt, sig), **_sampling(args))
        try:
            for piece in gen:
                sys.stdout.write(piece)
                sys.stdout.flush()
                if sig.stop:
                    break
            sys.stdout.write("\n")
            sys.stdout.flush()
        except BrokenPipeError:
            broken = True
        finally:
            gen.close()
            sig.quiet()
        stopped = "Ctrl+C" if sig.stop and sig.term is None else (
            signal.Signals(sig.term).name if sig.term else s.stats.stopped_by)
        if broken:
            stopped = "the reader of stdout closing it"
        print(f"\nseed: {s.stats.seed}; stopped by {stopped}\n{s.stats}", file=sys.stderr)
        if args.memory:
            s.save_memory(args.memory)
            print(f"memory saved to {args.memory}", file=sys.stderr)
    if broken:
        try:  # stdout is gone: the exit's flush must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, as a shell tool ends
    if sig.term:
        return 128 + int(sig.term)
    return 130 if sig.stop else 0


def main(argv: list[str] | None = None, *, prog: str = "python -m bitttt.infer", chat_mode: bool | None = None) -> int:
    """The command: `chat_mode` True for `bitttt chat`, False for `bitttt run`, None for -i."""
    args = build_parser(prog, chat_mode).parse_args(argv)
    interactive = args.interactive if chat_mode is None else chat_mode
    from . import runtime
    from .backend import cuda as cuda_backend
    from .generation import load
    from .locks import hold_for_process

    try:
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            ncpu = os.cpu_count() or 1
            if args.threads > ncpu:
                print(f"warning: {args.threads} threads on {ncpu} CPU(s): the threads will share cores, "
                      "which is usually slower", file=sys.stderr)
            runtime.set_num_threads(args.threads)
        if args.device not in ("cpu", "cuda"):
            raise ValueError(f"--device {args.device}: unknown; available in this build: "
                             f"{', '.join(available_devices())}")
        gpu, why = cuda_backend.for_device(args.device)
        if why:
            print(f"warning: {why}; running on the CPU", file=sys.stderr)
        check_reset_every(args.reset_every, args.decay)
        if args.n_predict < UNTIL_END:
            raise ValueError(f"-n must be >= 0, or -1 for until the end of text; got {args.n_predict}")
        if args.model is None:
            args.model = "tinystories"
        if args.model in SHIPPED_MODELS and not os.path.exists(args.model):
            args.model = SHIPPED_MODELS[args.model]
            if not os.path.exists(args.model):
                raise ValueError(f"the shipped model {args.model} is missing: pass -m MODEL (a run directory such "
                                 "as runs/default after `bitttt train`)")
        if interactive and args.file == "-":
            raise ValueError("-f - reads the prompt from stdin, which the chat reads its messages from: "
                             "use -f FILE or -p TEXT")
        prompt = read_prompt(args.prompt, args.file) if interactive else prompt_pieces(args.prompt, args.file)
        from .sampling import SamplingParams

        SamplingParams(**_sampling(args)).validate()
        if args.memory:  # this process alone reads and writes the memory file until it exits
            try:
                hold_for_process(args.memory, "memory file", wait=5.0)
            except OSError as e:  # its folder cannot be written: the chat saves elsewhere at the end, and says so
                if interactive:
                    print(f"warning: {args.memory}: no lock taken ({describe(e) or e})", file=sys.stderr)
                else:
                    raise
        model = load(args.model)
        if args.memory and not model.im.has_memory:
            raise ValueError("--memory: memory files hold the TTT state, and this model has attention layers only "
                             "(its context is a KV cache, kept for the session only)")
        if gpu is not None:
            gpu.adopt(model.im.model)
        if interactive:
            args.first_message = prompt or None
            return chat(model, args)
        return _generate(model, args, prompt)
    except BrokenPipeError:
        raise  # the caller (bitttt.cli) ends quietly
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


if __name__ == "__main__":
    sys.exit(main())
