"""Projects: folders under the Studio's projects directory, each `DIR/<name>/` with
`raw/` (text files as added), `data/` (tokenizers in `data/tokenizers/`, prepared token folders),
`runs/` (training runs), `models/` (exported packed model files) and `memory/` (memory files and
the chat log `conversations.jsonl`).

Every name the page sends (project, file, run, checkpoint, memory) is checked here to be a plain
name inside its folder, so no request can reach a path outside the project.
"""
from __future__ import annotations

import json
import os
import re

SUBDIRS = ("raw", "data", "runs", "models", "memory")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FILE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._ -]{0,127}")


class StudioError(ValueError):
    """A request the Studio refuses; `status` is the HTTP status (400 bad input, 404 missing, 409 busy/exists)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: object, what: str) -> str:
    """`name` when it is a plain name (letters, digits, . _ -, at most 64, not starting with . or -)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise StudioError(f"{what} must be a plain name (letters, digits, '.', '_', '-'; at most 64 characters, "
                          f"starting with a letter or digit), got {name!r}")
    return name


def check_file_name(name: object, what: str = "file name") -> str:
    """Like check_name, but spaces are allowed and names may be up to 128 characters."""
    if not isinstance(name, str) or not _FILE.fullmatch(name) or ".." in name:
        raise StudioError(f"{what} must be a plain file name (letters, digits, space, '.', '_', '-'), got {name!r}")
    return name


def file_info(path: str) -> dict:
    st = os.stat(path)
    return {"name": os.path.basename(path), "bytes": st.st_size, "mtime": st.st_mtime}


class Project:
    """One project folder (see the module docstring)."""

    def __init__(self, root: str, name: str) -> None:
        self.name = name
        self.root = os.path.join(root, name)

    def dir(self, sub: str) -> str:
        assert sub in SUBDIRS
        return os.path.join(self.root, sub)

    @property
    def tokenizer_dir(self) -> str:
        return os.path.join(self.root, "data", "tokenizers")

    # -- paths the page names --------------------------------------------------------
    def raw_path(self, name: str, must_exist: bool = True) -> str:
        p = os.path.join(self.dir("raw"), check_file_name(name, "text file name"))
        if must_exist and not os.path.isfile(p):
            raise StudioError(f"no text file {name!r} in project {self.name} (raw/)", 404)
        return p

    def tokenizer_path(self, name: str, must_exist: bool = True) -> str:
        p = os.path.join(self.tokenizer_dir, check_name(name, "tokenizer name") + ".model")
        if must_exist and not os.path.isfile(p):
            raise StudioError(f"no tokenizer {name!r} in project {self.name} (data/tokenizers/)", 404)
        return p

    def dataset_path(self, name: str, must_exist: bool = True) -> str:
        check_name(name, "dataset name")
        if name == "tokenizers":
            raise StudioError("'tokenizers' is the folder of the project's tokenizers: pick another dataset name")
        p = os.path.join(self.dir("data"), name)
        if must_exist and not os.path.isfile(os.path.join(p, "manifest.json")):
            raise StudioError(f"no prepared dataset {name!r} in project {self.name} (data/)", 404)
        return p

    def run_path(self, name: str, must_exist: bool = True) -> str:
        p = os.path.join(self.dir("runs"), check_name(name, "run name"))
        if must_exist and not os.path.isdir(p):
            raise StudioError(f"no run {name!r} in project {self.name} (runs/)", 404)
        return p

    def checkpoint_path(self, run: str, ckpt: str) -> str:
        p = os.path.join(self.run_path(run), "checkpoints", check_name(ckpt, "checkpoint name"))
        if not ckpt.endswith(".safetensors") or not os.path.isfile(p):
            raise StudioError(f"run {run} has no checkpoint {ckpt!r}", 404)
        return p

    def model_file_path(self, name: str, must_exist: bool = True) -> str:
        p = os.path.join(self.dir("models"), check_name(name, "model file name"))
        if not name.endswith(".safetensors"):
            raise StudioError(f"a model file name ends with .safetensors, got {name!r}")
        if must_exist and not os.path.isfile(p):
            raise StudioError(f"no model file {name!r} in project {self.name} (models/)", 404)
        return p

    def memory_path(self, name: str, must_exist: bool = True) -> str:
        p = os.path.join(self.dir("memory"), check_name(name, "memory name") + ".mem.safetensors")
        if must_exist and not os.path.isfile(p):
            raise StudioError(f"no memory {name!r} in project {self.name} (memory/)", 404)
        return p

    def model_ref(self, ref: object) -> str:
        """The file a model reference names: 'runs/RUN' (its best, else newest checkpoint),
        'runs/RUN/checkpoints/FILE' or 'models/FILE'."""
        from ..formats import CheckpointError, resolve

        parts = ref.split("/") if isinstance(ref, str) else []
        if len(parts) == 2 and parts[0] == "runs":
            try:
                return resolve(self.run_path(parts[1]))
            except (CheckpointError, FileNotFoundError) as e:
                raise StudioError(f"run {parts[1]} has no checkpoint to load yet ({e})", 404) from None
        if len(parts) == 4 and parts[0] == "runs" and parts[2] == "checkpoints":
            return self.checkpoint_path(parts[1], parts[3])
        if len(parts) == 2 and parts[0] == "models":
            return self.model_file_path(parts[1])
        raise StudioError(f"a model is named 'runs/RUN', 'runs/RUN/checkpoints/FILE' or 'models/FILE', got {ref!r}")

    @property
    def chat_log(self) -> str:
        return os.path.join(self.dir("memory"), "conversations.jsonl")

    # -- listings --------------------------------------------------------------------
    def raw_files(self) -> list[dict]:
        d = self.dir("raw")
        return [file_info(os.path.join(d, n)) for n in sorted(os.listdir(d))
                if not n.startswith(".") and os.path.isfile(os.path.join(d, n))]

    def tokenizers(self) -> list[dict]:
        d = self.tokenizer_dir
        out = []
        for n in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if n.endswith(".model") and not n.startswith("."):
                info = {"name": n[:-6]}
                side = os.path.join(d, n[:-6] + ".json")
                if os.path.isfile(side):
                    try:
                        with open(side, encoding="utf-8") as f:
                            info.update(json.load(f))
                    except (OSError, ValueError):
                        pass
                out.append(info)
        return out

    def datasets(self) -> list[dict]:
        d = self.dir("data")
        out = []
        for n in sorted(os.listdir(d)):
            mp = os.path.join(d, n, "manifest.json")
            if n.startswith(".") or not os.path.isfile(mp):
                continue
            try:
                with open(mp, encoding="utf-8") as f:
                    m = json.load(f)
                out.append({"name": n, "vocab_size": m["tokenizer"]["vocab_size"],
                            "tokenizer_sha256": m["tokenizer"]["sha256"],
                            "train_tokens": m["splits"]["train"]["tokens"], "val_tokens": m["splits"]["val"]["tokens"],
                            "created": m.get("created", "")})
            except (OSError, ValueError, KeyError, TypeError):
                out.append({"name": n, "error": "damaged manifest.json"})
        return out

    def run_names(self) -> list[str]:
        d = self.dir("runs")
        return sorted(n for n in os.listdir(d) if not n.startswith(".") and os.path.isdir(os.path.join(d, n)))

    def model_files(self) -> list[dict]:
        d = self.dir("models")
        return [file_info(os.path.join(d, n)) for n in sorted(os.listdir(d))
                if n.endswith(".safetensors") and not n.startswith(".")]

    def memories(self) -> list[dict]:
        from ..formats import read_metadata

        d = self.dir("memory")
        out = []
        for n in sorted(os.listdir(d)):
            if not n.endswith(".mem.safetensors") or n.startswith("."):
                continue
            info = file_info(os.path.join(d, n))
            info["name"] = n[: -len(".mem.safetensors")]
            try:
                meta = read_metadata(os.path.join(d, n))
                info.update(note=meta.get("note", ""), n_tokens=int(meta.get("n_tokens", 0)))
            except Exception:  # a damaged file is listed; loading it says what is wrong
                info["error"] = "unreadable"
            out.append(info)
        return out


class Projects:
    """The projects directory."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = os.path.abspath(os.fspath(root))

    def names(self) -> list[str]:
        if not os.path.isdir(self.root):
            return []
        return sorted(n for n in os.listdir(self.root)
                      if _NAME.fullmatch(n) and os.path.isdir(os.path.join(self.root, n, "raw")))

    def get(self, name: str) -> Project:
        check_name(name, "project name")
        p = Project(self.root, name)
        if not os.path.isdir(os.path.join(p.root, "raw")):
            raise StudioError(f"no project {name!r} in {self.root}", 404)
        for sub in SUBDIRS:  # a folder removed by hand comes back empty
            os.makedirs(p.dir(sub), exist_ok=True)
        return p

    def create(self, name: object) -> Project:
        name = check_name(name, "project name")
        p = Project(self.root, name)
        if os.path.exists(p.root):
            raise StudioError(f"project {name!r} already exists in {self.root}", 409)
        os.makedirs(self.root, exist_ok=True)
        tmp = os.path.join(self.root, f".new-{name}")
        os.makedirs(tmp, exist_ok=True)
        for sub in SUBDIRS:
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        os.rename(tmp, p.root)
        return p
