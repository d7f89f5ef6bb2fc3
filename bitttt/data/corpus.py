"""A built-in English corpus that is on every machine without a network: the docstrings of the
Python standard library.

`python -m bitttt.train` with no argument trains on it (corpus name `builtin:python-docs`).
Each standard-library module gives one document: its module docstring followed by the
docstrings of its classes and functions (top-level ones first).  The files are read in sorted
order, so the corpus is the same for the same Python installation.
"""
from __future__ import annotations

import ast
import inspect
import os
import sysconfig
import warnings

BUILTIN = {"builtin:python-docs"}
_SKIP_DIRS = {"test", "tests", "site-packages", "dist-packages", "idle_test", "__pycache__", "lib2to3",
              "turtledemo", "ensurepip", "pydoc_data"}


def _module_docs(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            src = f.read()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(src)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return ""
    parts = []
    for node in ast.walk(tree):  # breadth first: the module, then top-level definitions, then nested ones
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and len(doc.strip()) >= 40:
                parts.append(inspect.cleandoc(doc))
    return "\n\n".join(parts)


def python_docs(max_bytes: int = 4_000_000) -> list[str]:
    """Documents (one per standard-library module) of at most `max_bytes` UTF-8 bytes in all."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS and not x.startswith("."))
        files += [os.path.join(d, n) for n in sorted(names) if n.endswith(".py")]
    docs, total = [], 0
    for path in sorted(files):
        text = _module_docs(path)
        if not text:
            continue
        n = len(text.encode())
        if total + n > max_bytes:
            break
        docs.append(text)
        total += n
    if not docs:
        raise RuntimeError(f"no docstrings found under the Python standard library at {root}")
    return docs


def write_builtin(name: str, path: str) -> str:
    """Write the built-in corpus `name` to `path` as text, documents separated by <|endoftext|>."""
    if name != "builtin:python-docs":
        raise ValueError(f"unknown built-in corpus {name!r}; known: {', '.join(sorted(BUILTIN))}")
    from ..fileio import atomic_write_bytes

    atomic_write_bytes(path, "\n<|endoftext|>\n".join(python_docs()).encode())
    return path
