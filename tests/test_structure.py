"""The package's shape: no import cycles between its modules (imports inside functions count),
and no layer or model module that reaches the C bridge or pycuda instead of a backend."""
import ast
import os

import bitttt

PKG = os.path.dirname(os.path.abspath(bitttt.__file__))
BRIDGE = {"bitttt._core", "bitttt.kernels", "bitttt.runtime", "bitttt.backend.cpu", "pycuda"}


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith((".py", ".pyx")):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG))
                name = rel.rsplit(".", 1)[0].replace(os.sep, ".")
                out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = os.path.join(root, f)
    return out


def _imports(name: str, path: str, known: set[str]) -> set[str]:
    """Modules of the package (or outside names such as pycuda) that `name` imports anywhere."""
    if path.endswith(".pyx"):
        return set()
    is_pkg = path.endswith("__init__.py")
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            for a in node.names:  # `from . import x` / `from .pkg import mod` name modules too
                if f"{mod}.{a.name}" in known:
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    g = {}
    for name, path in mods.items():
        deps = set()
        for m in _imports(name, path, known):
            # a module imports its parent packages' __init__ too; keep only package modules
            while m and m not in known and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in known and m != name:
                deps.add(m)
        g[name] = deps
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    g = _graph()
    # a package __init__ that re-exports its submodules is a parent of them, not a dependency
    # cycle: drop the edge from a submodule to its own package's __init__
    for name in g:
        g[name] = {d for d in g[name] if not name.startswith(d + ".")}
    cycles = _cycles(g)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_and_model_use_a_backend():
    mods = _modules()
    known = set(mods)
    bad = []
    for name, path in mods.items():
        if name.startswith("bitttt.layers") or name == "bitttt.model":
            for m in _imports(name, path, known):
                if any(m == b or m.startswith(b + ".") for b in BRIDGE):
                    bad.append(f"{name} imports {m}")
    assert not bad, bad


def test_checker_sees_cycles_and_bridge_imports(tmp_path):
    """The checker itself: a two-module cycle and a bridge import are found."""
    g = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(g) == [["a", "b"]]
    p = tmp_path / "m.py"
    p.write_text("def f():\n    from .. import _core\n    import pycuda.driver\n")
    got = _imports("bitttt.layers.m", str(p), {"bitttt._core"})
    assert "bitttt._core" in got and "pycuda.driver" in got


def test_unbuilt_source_tree_says_what_to_run(tmp_path):
    """A copy of the package without the compiled core: the import error names the build command."""
    import shutil
    import subprocess
    import sys

    dst = tmp_path / "bitttt"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("_core*.so", "_core*.pyd", "__pycache__", "models"))
    code = ("import sys\n"  # an editable install elsewhere must not answer for the missing module
            "sys.meta_path = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]\n"
            "import bitttt\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "is not built" in last and "pip install -e ." in last and "circular" not in last, last
