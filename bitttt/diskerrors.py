"""The OSErrors a command expects (a full disk, a read-only file system, a path of the wrong kind),
as one line for stderr; any other OSError is unexpected and keeps its traceback."""
from __future__ import annotations

import errno

EXPECTED = {
    errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "not permitted",
    errno.EISDIR: "is a directory", errno.ENOTDIR: "not a directory", errno.ENOENT: "no such file or directory",
    errno.ENAMETOOLONG: "file name too long", errno.EFBIG: "file too large",
}


def describe(e: OSError) -> str | None:
    """'<path>: <what happened>; files written before are intact' for an expected OSError, else None."""
    what = EXPECTED.get(e.errno)
    if what is None:
        return None
    path = f"{e.filename}: " if e.filename else ""
    hint = "; files written before are intact (every file is replaced atomically)" \
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else ""
    return f"{path}{what}{hint}"
