"""Crash-safe file writing: nothing a user made is ever left half-written."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: str | os.PathLike) -> int:
    """The permission bits a rewritten `path` gets: those of the file it replaces, else 0666 less
    the process umask (0644 under the usual umask 022), as open() would give a new file."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """`with atomic_writer(path) as f: f.write(...)`: the bytes go to a temporary file in the same
    folder, which is fsync'ed and renamed over `path` when the block ends without an exception
    (and removed when it raises).  A crash at any moment leaves the old file or the new one."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".part", dir=folder)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600; a user's file gets the usual permissions
            os.fchmod(fd, new_file_mode(path))
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno is not None and e.filename is None:
            e.filename = path  # a failed write (a full disk) names the file it was for
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, rename."""
    with atomic_writer(path) as f:
        f.write(data)
