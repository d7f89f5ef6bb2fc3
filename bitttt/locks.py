"""Exclusive locks (fcntl.flock) on run directories and memory files, so that two processes never
write one run or one memory at the same time.

    with locks.hold(run_dir, "run directory"):      # a trainer's fit(): refused if another holds it
        ...
    locks.hold_for_process(memory_path, "memory file", wait=5)   # infer --memory: until the process exits

The lock is an flock on a small lock file: `<run_dir>/.lock` for a directory, `.<name>.lock` next to
a file (a memory file is replaced by rename on every save, so the file itself cannot carry it) or,
with `beside=True`, next to a directory that is replaced whole (prepare's output folder).  It
holds the owner's pid, for the message.  The kernel drops the lock when the process ends (even by
SIGKILL), so a stale lock file never blocks anyone.  Locks are re-entrant within one process: a
process that holds a path's lock may take it again (a save inside a held session).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import threading
import time
from collections.abc import Iterator

_held: dict[str, list] = {}  # real path -> [fd, count]
_mutex = threading.Lock()


class LockedError(ValueError):
    """The path is locked by another process (a ValueError, so that every CLI reports it as one line)."""


def lock_file(path: str | os.PathLike, beside: bool = False) -> str:
    """The lock file of a directory (`<dir>/.lock`) or of a file (`.<name>.lock` beside it; for a
    directory too with `beside`)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path) and not beside:
        return os.path.join(path, ".lock")
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.lock")


def _owner(lf: str) -> str:
    try:
        with open(lf, encoding="ascii", errors="replace") as f:
            pid = f.read(32).strip()
        return f"pid {pid}" if pid.isdigit() else "another process"
    except OSError:
        return "another process"


def is_locked(path: str | os.PathLike, beside: bool = False) -> bool:
    """True when some process (this one included) holds the lock of `path`."""
    lf = lock_file(path, beside)
    if os.path.realpath(lf) in _held:
        return True
    try:
        fd = os.open(lf, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def acquire(path: str | os.PathLike, what: str, wait: float = 0.0, beside: bool = False) -> str:
    """Take the exclusive lock of `path` (a directory or a file), waiting up to `wait` seconds;
    LockedError naming the path and the owner when another process keeps it.  -> the lock file."""
    lf = lock_file(path, beside)
    key = os.path.realpath(lf)
    with _mutex:
        if key in _held:
            _held[key][1] += 1
            return lf
        fd = os.open(lf, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    owner = _owner(lf)
                    os.close(fd)
                    waited = f" (waited {wait:g} s)" if wait else ""
                    raise LockedError(f"{os.fspath(path)}: this {what} is in use by {owner}{waited}: wait for it "
                                      "to finish, or use another one") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = [fd, 1]
        return lf


def release(path: str | os.PathLike, beside: bool = False) -> None:
    """Give back one hold of `path`'s lock (the lock goes when the last hold of this process does)."""
    key = os.path.realpath(lock_file(path, beside))
    with _mutex:
        h = _held.get(key)
        if h is None:
            return
        h[1] -= 1
        if h[1] == 0:
            del _held[key]
            os.close(h[0])  # closing the descriptor drops the flock


@contextlib.contextmanager
def hold(path: str | os.PathLike, what: str, wait: float = 0.0, beside: bool = False) -> Iterator[str]:
    """`with hold(path, what):` the lock of `path` for the block (see acquire)."""
    lf = acquire(path, what, wait, beside)
    try:
        yield lf
    finally:
        release(path, beside)


def hold_for_process(path: str | os.PathLike, what: str, wait: float = 0.0, beside: bool = False) -> None:
    """Take the lock of `path` until this process exits (a CLI that reads, then writes, a file)."""
    acquire(path, what, wait, beside)
