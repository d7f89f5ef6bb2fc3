"""Text files of a project (`raw/`): added by upload or from a path on the machine, checked with
the readers `prepare` uses (known kind, UTF-8, at least one document) before they appear, and
previewed.  A refused file leaves nothing in raw/."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable

from ..data import DataError, iter_texts
from ..data.readers import input_kind
from .projects import Project, StudioError, check_file_name

PREVIEW_CHARS = 4000


def check_text_file(path: str, shown: str) -> dict:
    """Read the whole file as prepare will: DataError (with the byte offset of bad UTF-8) -> StudioError
    naming `shown`; returns {documents, chars}."""
    docs = chars = 0
    try:
        for text in iter_texts([path]):
            docs += 1
            chars += len(text)
    except DataError as e:
        msg = str(e).replace(path, shown).split(", or pass --errors replace")[0]
        raise StudioError(msg) from None
    except (OSError, EOFError) as e:  # e.g. a damaged .gz
        raise StudioError(f"{shown}: cannot be read ({e})") from None
    if chars == 0:
        raise StudioError(f"{shown}: holds no text")
    return {"documents": docs, "chars": chars}


def _kind(name: str) -> None:
    try:
        input_kind(name)
    except DataError as e:
        raise StudioError(str(e)) from None


def _install(project: Project, name: str, fill) -> dict:
    """Write into a hidden temporary file in raw/ with `fill(f)`, check it, rename it to `name`."""
    check_file_name(name, "text file name")
    _kind(name)
    final = project.raw_path(name, must_exist=False)
    if os.path.exists(final):
        raise StudioError(f"raw/{name} already exists in project {project.name}: pick another name", 409)
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix="-" + name, dir=project.dir("raw"))
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
        info = check_text_file(tmp, name)
        if os.path.exists(final):
            raise StudioError(f"raw/{name} already exists in project {project.name}: pick another name", 409)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes private files
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return {"name": name, "bytes": os.path.getsize(final), **info}


def add_bytes(project: Project, name: str, chunks: Iterable[bytes]) -> dict:
    """Add a text file from its bytes (an upload)."""
    def fill(f):
        for c in chunks:
            f.write(c)
    return _install(project, name, fill)


async def add_stream(project: Project, name: str, stream: AsyncIterator[bytes]) -> dict:
    """Add an uploaded file whose body arrives as an async stream (kept out of memory)."""
    check_file_name(name, "text file name")
    _kind(name)
    fd, spool = tempfile.mkstemp(prefix=".spool-", dir=project.dir("raw"))
    try:
        with os.fdopen(fd, "wb") as f:
            async for chunk in stream:
                f.write(chunk)
        with open(spool, "rb") as src:
            return _install(project, name, lambda f: shutil.copyfileobj(src, f, 1 << 20))
    finally:
        os.unlink(spool)


def add_path(project: Project, path: object, name: str | None = None) -> dict:
    """Copy a text file from a path on this machine into raw/ (under its own name unless `name`)."""
    if not isinstance(path, str) or not path.strip():
        raise StudioError("give the path of a text file on this machine")
    path = os.path.expanduser(path.strip())
    if not os.path.exists(path):
        raise StudioError(f"{path}: no such file", 404)
    if not os.path.isfile(path):
        raise StudioError(f"{path}: not a file")
    name = name or os.path.basename(path)

    def fill(f):
        with open(path, "rb") as src:
            shutil.copyfileobj(src, f, 1 << 20)
    return _install(project, name, fill)


def preview(project: Project, name: str, chars: int = PREVIEW_CHARS) -> dict:
    """The first `chars` characters of the file's documents (separated by a blank line and the
    end-of-text marker as prepare sees them), with its size."""
    path = project.raw_path(name)
    out, n, docs = [], 0, 0
    truncated = False
    try:
        for text in iter_texts([path]):
            docs += 1
            if n >= chars:
                truncated = True
                break
            piece = text[: chars - n]
            out.append(piece)
            n += len(piece)
            if len(piece) < len(text):
                truncated = True
    except DataError as e:
        raise StudioError(str(e)) from None
    return {"name": name, "bytes": os.path.getsize(path), "text": "\n<|endoftext|>\n".join(out),
            "truncated": truncated}
