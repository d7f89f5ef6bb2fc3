"""`prepare`: text files -> a prepared data folder (tokenizer training, encoding, manifest, atomic install).

Everything is written into a temporary folder next to the output (`<out>.tmp-*`) and renamed into place at the
end, so a failure leaves nothing behind.  A prepare holds the output's lock (`.<out>.lock` beside it, bitttt.locks)
while it works: a second prepare of the same output is refused, and the temp folders a killed prepare left are
removed when the next one starts. The folder's files are described in `bitttt.data.layout` and `bitttt.data.writer`.
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Sequence
from typing import Callable

from .. import locks
from ..fileio import atomic_write_bytes
from ..tokenizer import Tokenizer
from .layout import FORMAT, FORMAT_VERSION, MANIFEST, TOKENIZER_FILE, DataError
from .readers import check_errors, check_inputs, iter_texts
from .writer import encode_corpus

_ACTIVE: set[str] = set()  # temp folders of the prepares running in this process
_ACTIVE_LOCK = threading.Lock()


class _Progress:
    """A tqdm bar on stderr of the bytes of `paths` read (a context manager); nothing unless `enabled` and tqdm
    is installed."""

    def __init__(self, paths: list[str], desc: str, enabled: bool) -> None:
        self.bar = None
        total = sum(os.path.getsize(p) for p in paths)
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # progress is a nicety
                return
            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                            dynamic_ncols=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


def train_tokenizer(
    files: Sequence[str | os.PathLike],
    vocab_size: int = 4096,
    model_type: str = "unigram",
    *,
    max_sentence_bytes: int = 4096,
    input_sentence_size: int = 1_000_000,
    seed: int = 0,
    text_field: str = "text",
    errors: str = "strict",
    num_threads: int | None = None,
    on_bytes: Callable[[int], None] | None = None,
) -> Tokenizer:
    """Train a tokenizer on the documents of `files` (.txt, .md, .jsonl, optionally .gz; read as prepare reads
    them) with `Tokenizer.train_from_iterator`. `on_bytes(n)` is called with the number of file bytes read.

    Nothing is written to disk; call `save` to keep the model.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("no input files given to train the tokenizer on")
    return Tokenizer.train_from_iterator(
        iter_texts(files, text_field=text_field, errors=errors, on_bytes=on_bytes),
        vocab_size,
        model_type,
        max_sentence_bytes=max_sentence_bytes,
        input_sentence_size=input_sentence_size,
        seed=seed,
        num_threads=num_threads,
    )


def expand_inputs(inputs: Sequence[str | os.PathLike], include: Sequence[str] | None = None) -> list[str]:
    """Files given as they are; a folder -> the files under it (recursively, in name order, hidden
    files and folders skipped) whose names match a pattern of `include` (shell globs such as
    "*.txt"; default: every kind prepare reads: .txt, .md, .jsonl, each optionally .gz).
    DataError for a folder that holds no such file."""
    import fnmatch

    from .readers import JSONL_EXTENSIONS, TEXT_EXTENSIONS

    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    pats = list(include) if include else [f"*{e}{gz}" for e in TEXT_EXTENSIONS + JSONL_EXTENSIONS for gz in ("", ".gz")]
    out: list[str] = []
    for p in (os.fspath(x) for x in inputs):
        if not os.path.isdir(p):
            out.append(p)
            continue
        found = []
        for root, dirs, files in os.walk(p):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found += [os.path.join(root, f) for f in sorted(files)
                      if not f.startswith(".") and any(fnmatch.fnmatch(f.lower(), q.lower()) for q in pats)]
        if not found:
            raise DataError(f"{p}: the folder holds no file matching {', '.join(pats)}"
                            + (" (--include chooses the patterns)" if include is None else ""))
        out += found
    return out


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    vocab_size: int = 4096,
    model_type: str = "unigram",
    val_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    errors: str = "strict",
    progress: bool = True,
    force: bool = False,
    input_sentence_size: int = 1_000_000,
    include: Sequence[str] | None = None,
) -> dict:
    """Tokenize `inputs` into `out_dir` (see `bitttt.data`); returns the manifest written there.

    `tokenizer`: a Tokenizer or the path of a tokenizer.model; None trains one (`vocab_size`, `model_type`,
    at most `input_sentence_size` lines sampled with `seed`). `force` replaces an existing prepared folder.
    A folder in `inputs` stands for its files (recursively) that match `include` (see expand_inputs).
    """
    paths = check_inputs(expand_inputs(inputs, include))
    check_errors(errors)
    if not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    _check_out_dir(out_dir, paths, force)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    # one prepare per output folder at a time (the lock is `.<out>.lock` beside it): under it, the
    # `<out>.tmp-*` folders of a killed prepare are stale and go
    with locks.hold(out_dir, "output folder", beside=True):
        _remove_stale_tmp(out_dir)
        tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
        with _ACTIVE_LOCK:
            _ACTIVE.add(tmp)
        try:
            return _prepare_into(tmp, out_dir, paths, tokenizer, vocab_size, model_type, val_fraction, seed,
                                 text_field, errors, progress, force, input_sentence_size)
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE.discard(tmp)


def _remove_stale_tmp(out_dir: str) -> None:
    """Remove the `<out>.tmp-*` folders left by a killed prepare (called under the output's lock;
    the temp folder of a prepare running in this process stays)."""
    parent, base = os.path.split(out_dir)
    for name in os.listdir(parent):
        p = os.path.join(parent, name)
        if name.startswith(base + ".tmp-") and os.path.isdir(p) and not os.path.islink(p):
            with _ACTIVE_LOCK:
                if p in _ACTIVE:
                    continue
            shutil.rmtree(p, ignore_errors=True)


def _prepare_into(tmp: str, out_dir: str, paths: list[str], tokenizer, vocab_size: int, model_type: str,
                  val_fraction: float, seed: int, text_field: str, errors: str, progress: bool, force: bool,
                  input_sentence_size: int) -> dict:
    """prepare's work: the tokenizer and token files into `tmp`, then `tmp` installed as `out_dir`."""
    try:
        if tokenizer is None:
            with _Progress(paths, "training tokenizer", progress) as bar, warnings.catch_warnings():
                warnings.simplefilter("ignore")  # replaced bytes are reported once, by the second pass
                tok = train_tokenizer(paths, vocab_size, model_type, input_sentence_size=input_sentence_size,
                                      seed=seed, text_field=text_field, errors=errors, on_bytes=bar.update)
        elif isinstance(tokenizer, Tokenizer):
            tok = tokenizer
        else:
            tok = Tokenizer.load(tokenizer)
        tok.save(os.path.join(tmp, TOKENIZER_FILE))
        with _Progress(paths, "tokenizing", progress) as bar:
            body = encode_corpus(paths, tok, tmp, val_fraction=val_fraction, seed=seed, text_field=text_field,
                                 errors=errors, on_bytes=bar.update)
        from .. import __version__

        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bitttt_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": {
                "file": TOKENIZER_FILE,
                "sha256": tok.sha256,
                "vocab_size": tok.vocab_size,
                "model_type": tok.model_type,
                "eos_id": tok.eos_id,
                "pad_id": tok.pad_id,
                "special_ids": tok.special_ids,
            },
            **body,
            "val_fraction": val_fraction,
            "seed": seed,
            "split_rule": "document i >= 1 to val when blake2b(f'{seed}:{i}') / 2**64 < val_fraction; document 0 "
                          "to train; with >= 2 documents and none in val, the last one to val; a single document "
                          "gives its last single_document_val_tokens tokens to val",
            "text_field": text_field,
            "errors": errors,
        }
        atomic_write_bytes(os.path.join(tmp, MANIFEST), (json.dumps(manifest, indent=2) + "\n").encode("utf-8"))
        _install(tmp, out_dir, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_out_dir(out_dir: str, inputs: list[str], force: bool) -> None:
    for p in inputs:
        if os.path.commonpath([os.path.abspath(p), out_dir]) == out_dir:
            raise DataError(f"input {p} is inside the output folder {out_dir}: choose another --out")
    if os.path.commonpath([os.getcwd(), out_dir]) == out_dir:
        raise DataError(f"the output folder {out_dir} contains the current directory: choose another --out")
    if not os.path.lexists(out_dir):
        return
    if not os.path.isdir(out_dir) or os.path.islink(out_dir):
        raise DataError(f"{out_dir} exists and is not a folder: choose another --out")
    entries = os.listdir(out_dir)
    if not entries:
        return
    if not force:
        raise DataError(f"{out_dir} already exists and is not empty: choose another --out, or pass --force "
                        "to replace a folder made by prepare")
    if MANIFEST not in entries:
        raise DataError(f"{out_dir} is not empty and holds no {MANIFEST}: --force only replaces a folder made by "
                        "prepare; delete it yourself if you mean to")


def _install(tmp: str, out_dir: str, force: bool) -> None:
    """Rename the finished `tmp` folder to `out_dir` (replacing an old prepared folder when `force`)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp and mkstemp make private files; give them the usual permissions
    for name in os.listdir(tmp):
        os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
    if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
    if not os.path.lexists(out_dir):
        os.rename(tmp, out_dir)
        return
    _check_out_dir(out_dir, [], force)  # it may have changed while we worked
    old = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".old-", dir=os.path.dirname(out_dir))
    os.rmdir(old)
    os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        os.rename(old, out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)

