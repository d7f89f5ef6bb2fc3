"""Tokenizers of a project (`data/tokenizers/NAME.model`, statistics beside it in NAME.json):
trained with `bitttt.data.train_tokenizer` on the project's text files."""
from __future__ import annotations

import datetime
import json
import os
from collections import Counter

from ..data import DataError, iter_texts, train_tokenizer
from ..fileio import atomic_write_bytes
from ..tokenizer import MIN_VOCAB_SIZE, MODEL_TYPES, Tokenizer
from .projects import Project, StudioError, check_name

MAX_VOCAB_SIZE = 1 << 20
STATS_CHARS = 1 << 20  # statistics are measured on the first MiB-ish of text
SAMPLE_CHARS = 240


def _sample_text(paths: list[str], chars: int) -> str:
    out, n = [], 0
    for t in iter_texts(paths):
        out.append(t[: chars - n])
        n += len(out[-1])
        if n >= chars:
            break
    return "\n".join(out)


def statistics(tok: Tokenizer, paths: list[str]) -> dict:
    """Bytes per token on the texts, the commonest pieces and a short sample split into pieces."""
    text = _sample_text(paths, STATS_CHARS)
    ids = tok.encode(text)
    counts = Counter(ids)
    top = []
    for i, c in counts.most_common(30):
        top.append({"id": i, "piece": tok.token_bytes(i).decode("utf-8", "replace"), "count": c,
                    "share": round(c / max(len(ids), 1), 4)})
    sample = text[:SAMPLE_CHARS]
    pieces = [{"id": i, "piece": tok.token_bytes(i).decode("utf-8", "replace")} for i in tok.encode(sample)]
    return {"vocab_size": tok.vocab_size, "model_type": tok.model_type, "sha256": tok.sha256,
            "measured_bytes": len(text.encode("utf-8")), "measured_tokens": len(ids),
            "bytes_per_token": round(len(text.encode("utf-8")) / max(len(ids), 1), 3),
            "pieces_used": len(counts), "top": top, "sample": pieces}


def train(project: Project, name: object, files: object, vocab_size: object, model_type: object = "unigram") -> dict:
    """Train and save tokenizer `name` on raw files `files`; returns its statistics.  Every argument is
    checked first, and nothing is written unless training succeeds."""
    name = check_name(name, "tokenizer name")
    path = project.tokenizer_path(name, must_exist=False)
    if os.path.exists(path):
        raise StudioError(f"tokenizer {name!r} already exists in project {project.name}: pick another name", 409)
    if not isinstance(files, list) or not files:
        raise StudioError("choose at least one text file to train the tokenizer on")
    paths = [project.raw_path(f) for f in files]
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise StudioError(f"vocabulary size must be an integer, got {vocab_size!r}")
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise StudioError(f"vocabulary size must be between {MIN_VOCAB_SIZE} (the reserved ids and 256 byte pieces "
                          f"plus one) and {MAX_VOCAB_SIZE}, got {vocab_size}")
    if model_type not in MODEL_TYPES:
        raise StudioError(f"tokenizer type must be one of {', '.join(MODEL_TYPES)}, got {model_type!r}")
    try:
        tok = train_tokenizer(paths, vocab_size, model_type)
        stats = statistics(tok, paths)
    except DataError as e:
        raise StudioError(str(e)) from None
    except ValueError as e:  # sentencepiece's refusals (vocabulary too large / too small for the text)
        raise StudioError(str(e)) from None
    stats.update(name=name, files=list(files),
                 created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    os.makedirs(project.tokenizer_dir, exist_ok=True)
    tok.save(path)
    atomic_write_bytes(os.path.join(project.tokenizer_dir, name + ".json"),
                       (json.dumps(stats, indent=1) + "\n").encode("utf-8"))
    return stats


def load_stats(project: Project, name: str) -> dict:
    """The saved statistics of a tokenizer (measured again when the side file is missing)."""
    path = project.tokenizer_path(name)
    side = os.path.join(project.tokenizer_dir, name + ".json")
    try:
        with open(side, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        tok = Tokenizer.load(path)
        return {"name": name, **statistics(tok, [p for p in (os.path.join(project.dir("raw"), f["name"])
                                                             for f in project.raw_files())])}
