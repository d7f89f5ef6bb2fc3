"""The chat driven through a pseudo-terminal, as a user at a keyboard drives it: Ctrl+C stops an
answer, Ctrl+C twice at the prompt leaves with the memory saved, SIGTERM saves, bad slash
values are refused and the chat goes on, arrow keys edit the line (readline)."""
import json
import os
import select
import signal
import sys
import time
from pathlib import Path

import pytest

pty = pytest.importorskip("pty")
pytest.importorskip("readline")

REPO = Path(__file__).resolve().parents[1]
PROMPT = b"> "


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A one-layer checkpoint whose greedy answers never end by themselves: an answer runs until Ctrl+C."""
    from cli_models import never_ending_checkpoint

    return never_ending_checkpoint(tmp_path_factory.mktemp("chatmodel"))


class Term:
    """A child process on a pseudo-terminal; `expect` reads until a byte string shows up."""

    def __init__(self, args, home):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   HOME=str(home), XDG_DATA_HOME=str(Path(home) / "share"), TERM="xterm", INPUTRC="/dev/null",
                   BITTTT_NUM_THREADS="1")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the terminal is its stdin, stdout and stderr
            try:
                os.execve(sys.executable, [sys.executable, "-m", "bitttt.infer", *args], env)
            finally:
                os._exit(127)
        self.buf = b""
        self.status = None

    def read(self, timeout: float) -> bytes:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return b""
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # the child is gone (EIO on Linux)
            return b""
        self.buf += data
        return data

    def expect(self, marker: bytes, timeout: float = 60.0) -> bytes:
        """Read until `marker` appears after the current position; returns the text before it
        and moves past it."""
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {marker!r}; got {self.buf[-2000:]!r}")
            if not self.read(min(left, 0.5)) and self.exited():
                self.read(0.1)
                if marker not in self.buf:
                    raise AssertionError(f"the chat ended before {marker!r}; got {self.buf[-2000:]!r}")
        before, _, self.buf = self.buf.partition(marker)
        return before

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def signal_until(self, send, done, tries: int = 4, wait: float = 5.0) -> None:
        """Deliver a signal (`send()`) until `done()` holds.  A signal that lands between readline
        printing the prompt and its select() stays pending until the next key (CPython's readline
        loop), so a test that signals right at a prompt repeats it; a user never notices."""
        for _ in range(tries):
            try:
                send()
            except OSError:
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if done():
                    return
                self.read(0.1)
        raise AssertionError(f"no effect after {tries} tries; got {self.buf[-2000:]!r}")

    def ctrl_c(self, marker: bytes | None = None) -> None:
        """Ctrl+C at the prompt, until `marker` shows up (None: until the chat exits)."""
        self.signal_until(lambda: self.send(b"\x03"), lambda: self.exited() if marker is None else marker in self.buf)

    def kill(self, sig) -> None:
        self.signal_until(lambda: os.kill(self.pid, sig), self.exited)

    def exited(self) -> bool:
        if self.status is None:
            pid, st = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = st
        return self.status is not None

    def wait(self, timeout: float = 60.0) -> int:
        end = time.monotonic() + timeout
        while not self.exited():
            self.read(0.2)
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                raise AssertionError(f"the chat did not exit; got {self.buf[-2000:]!r}")
        while self.read(0.05):
            pass
        return os.waitstatus_to_exitcode(self.status)

    def close(self) -> None:
        if not self.exited():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


@pytest.fixture
def term(tiny, tmp_path):
    made = []

    def start(*extra):
        t = Term(["-m", str(tiny), "-i", "--temp", "0", *extra], tmp_path)
        made.append(t)
        return t

    yield start
    for t in made:
        t.close()


def _memory_tokens(path):
    from bitttt.formats import read_memory

    return read_memory(str(path)).n_tokens


def test_ctrl_c_stops_the_answer_and_twice_at_the_prompt_leaves_saving(term, tmp_path):
    mem = tmp_path / "me.mem"
    t = term("--memory", str(mem), "-n", "-1")
    banner = t.expect(PROMPT)
    assert b"bitttt chat" in banner and b"m.safetensors" in banner and b"me.mem (new" in banner
    t.send(b"the cat\r")
    t.expect(b"<|assistant|>" * 20)  # the answer streams and would never end by itself
    t.send(b"\x03")
    t.expect(b"[stopped]")
    t.expect(PROMPT)
    t.send(b"/len\r")
    assert b"until the end of text" in t.expect(PROMPT)
    t.ctrl_c(b"Ctrl+C again")
    t.expect(b"Ctrl+C again")
    t.expect(PROMPT)
    t.ctrl_c()
    assert t.wait() == 0
    assert b"[memory saved to" in t.buf
    assert _memory_tokens(mem) > 20  # the message and the part of the answer written before Ctrl+C
    # the next chat starts from that memory and says so
    t2 = term("--memory", str(mem))
    banner = t2.expect(PROMPT)
    assert b"tokens read before" in banner
    t2.send(b"\x04")  # Ctrl+D leaves too
    assert t2.wait() == 0


def test_sigterm_saves_the_memory(term, tmp_path):
    mem = tmp_path / "term.mem"
    t = term("--memory", str(mem), "-n", "5")
    t.expect(PROMPT)
    t.send(b"a red ball\r")
    t.expect(PROMPT)
    t.kill(signal.SIGTERM)
    assert t.wait() == 128 + signal.SIGTERM
    assert mem.exists() and _memory_tokens(mem) >= 8
    # during an answer, too: it stops at the next token and the memory is written whole
    mem2 = tmp_path / "term2.mem"
    t = term("--memory", str(mem2), "-n", "-1")
    t.expect(PROMPT)
    t.send(b"the dog\r")
    t.expect(b"<|assistant|>" * 10)
    os.kill(t.pid, signal.SIGTERM)
    assert t.wait() == 128 + signal.SIGTERM
    assert _memory_tokens(mem2) > 10


def test_bad_values_are_refused_and_the_chat_goes_on(term, tiny, tmp_path):
    t = term("-n", "4")
    t.expect(PROMPT)
    for cmd, expect in ((b"/len -5", b"/len must be >= 1"), (b"/temp abc", b"/temp takes a number"),
                        (b"/temp -1", b"temperature must be"), (b"/temp", b"temperature 0.0"),
                        (b"/len", b"at most 4 tokens per answer"), (b"/len 3", b"at most 3 tokens per answer")):
        t.send(cmd + b"\r")
        out = t.expect(PROMPT)
        assert expect in out, (cmd, out)
        assert b"Traceback" not in out
    t.send(b"the cat\r")
    t.expect(PROMPT)  # an answer of 3 tokens, and the chat is still there
    t.send(b"/quit\r")
    assert t.wait() == 0
    # no --memory: the memory goes to the model's memory folder (a checkpoint in a writable folder)
    assert (tiny.with_suffix(".memory") / "last.mem.safetensors").exists()
    assert not (tmp_path / "share" / "bitttt").exists()


def test_arrow_keys_edit_the_line_and_history_recalls_it(term, tiny):
    t = term("-n", "2")
    t.expect(PROMPT)
    t.send(b"abc\x1b[D\x1b[DX\r")  # left, left, X: "aXbc"
    t.expect(PROMPT)
    t.send(b"\x1b[A\x1b[D!\r")  # up recalls "aXbc"; left, "!": "aXb!c"
    t.expect(PROMPT)
    t.send(b'"""\r')
    t.expect(b"... ")
    t.send(b"line one\r")
    t.expect(b"... ")
    t.send(b'line two\r"""\r')
    t.expect(PROMPT)
    t.send(b"\x1b[200~pasted one\rpasted two\x1b[201~\r")  # a terminal's bracketed paste of two lines
    t.expect(PROMPT)
    t.send(b"\x04")
    assert t.wait() == 0
    log = [json.loads(x) for x in (tiny.with_suffix(".memory") / "conversations.jsonl").read_text().splitlines()]
    users = [r["text"] for r in log if r["role"] == "user"]
    assert users[-4:] == ["aXbc", "aXb!c", "line one\nline two", "pasted one\npasted two"]


def test_prompt_is_the_first_turn(term, tiny):
    t = term("-n", "2", "-p", "hello there", "--system", "be brief")
    banner = t.expect(PROMPT)
    assert b"system: be brief" in banner
    t.expect(PROMPT)  # the first turn is answered, then the prompt comes back
    t.send(b"\x04")
    assert t.wait() == 0
    log = [json.loads(x) for x in (tiny.with_suffix(".memory") / "conversations.jsonl").read_text().splitlines()]
    assert [r["text"] for r in log if r["role"] == "user"][-1] == "hello there"
