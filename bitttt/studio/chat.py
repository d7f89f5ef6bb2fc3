"""Models loaded by the Studio: chat sessions (streaming answers, roles, system prompt, memory
files), the sample shown at each evaluation of a training run, and evaluation on a text.

One lock serializes inference in the Studio process (one CPU thread pool); models are cached by
file and modification time."""
from __future__ import annotations

import datetime
import itertools
import json
import math
import os
import threading
from collections.abc import Iterator

import numpy as np

from ..formats import CheckpointError, MemoryFileError
from ..generation import Model, Session, load
from ..sampling import SamplingParams
from .projects import Project, StudioError, check_name

INFERENCE = threading.Lock()
CURVE_POINTS = 32


class _Cache:
    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._d: dict[str, tuple[float, Model]] = {}
        self._lock = threading.Lock()

    def get(self, path: str) -> Model:
        mt = os.path.getmtime(path)
        with self._lock:
            hit = self._d.get(path)
            if hit and hit[0] == mt:
                return hit[1]
        try:
            m = load(path)
        except (CheckpointError, ValueError) as e:
            raise StudioError(str(e)) from None
        with self._lock:
            self._d[path] = (mt, m)
            while len(self._d) > self.size:
                self._d.pop(next(iter(self._d)))
        return m


MODELS = _Cache()


def sampling_params(d: object) -> dict:
    """The sampling settings of a request, checked (SamplingParams fields)."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise StudioError("sampling must be an object of sampling settings")
    try:
        SamplingParams(**d).validate()
    except TypeError as e:
        raise StudioError(f"unknown sampling setting: {e}") from None
    except ValueError as e:
        raise StudioError(str(e)) from None
    return dict(d)


class ChatSession:
    def __init__(self, sid: str, project: Project, ref: str, path: str, session: Session) -> None:
        self.id, self.project, self.ref, self.path, self.session = sid, project, ref, path, session
        self.system: str | None = None

    def info(self) -> dict:
        cfg = self.session.im.config
        return {"id": self.id, "model": self.ref, "file": os.path.relpath(self.path, self.project.root),
                "memory_tokens": self.session.state.n_tokens,
                "config": {"hidden_size": cfg.hidden_size, "num_layers": cfg.num_layers, "vocab_size": cfg.vocab_size}}


class Chats:
    """Chat sessions by id (kept in the Studio's memory; their state is saved with save_memory)."""

    def __init__(self) -> None:
        self._s: dict[str, ChatSession] = {}
        self._ids = itertools.count(1)

    def open(self, project: Project, ref: object) -> dict:
        path = project.model_ref(ref)
        model = MODELS.get(path)
        sid = f"c{next(self._ids)}"
        self._s[sid] = ChatSession(sid, project, str(ref), path, model.session())
        return self._s[sid].info()

    def get(self, project: Project, sid: str) -> ChatSession:
        cs = self._s.get(sid)
        if cs is None or cs.project.root != project.root:
            raise StudioError(f"no chat session {sid!r} (load a model first)", 404)
        return cs

    def _log(self, project: Project, role: str, text: str) -> None:
        with open(project.chat_log, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": datetime.datetime.now().isoformat(timespec="seconds"), "role": role,
                                "text": text}) + "\n")

    def message(self, cs: ChatSession, text: object, system: object = None, sampling: object = None) -> Iterator[dict]:
        """Checks the request, then returns the iterator of events: {"type": "token", "text"} as
        the answer is made, then {"type": "done", "text", "memory_tokens", "stats"}."""
        if not isinstance(text, str) or not text.strip():
            raise StudioError("type a message first")
        if system is not None and not isinstance(system, str):
            raise StudioError("the system prompt must be text")
        sp = sampling_params(sampling)
        sess = cs.session
        tok = sess.im.tokenizer
        stop_ids = (tok.special_ids["<|user|>"], tok.special_ids["<|system|>"])

        def events() -> Iterator[dict]:
            pieces = []
            with INFERENCE:
                if system and system != cs.system:
                    sess.feed("<|system|>" + system)
                    self._log(cs.project, "system", system)
                    cs.system = system
                self._log(cs.project, "user", text)
                sess.feed("<|user|>" + text + "<|assistant|>")
                gen = sess.stream(stop_ids=stop_ids, **sp)
                try:  # closed at once when the client leaves: the session is free for its next message
                    for piece in gen:
                        pieces.append(piece)
                        yield {"type": "token", "text": piece}
                finally:
                    gen.close()
                answer = "".join(pieces)
                sess.feed_ids([])  # read the last sampled token now (the next turn would), so the count is exact
                self._log(cs.project, "assistant", answer)
                st = sess.stats
                yield {"type": "done", "text": answer, "memory_tokens": sess.state.n_tokens,
                       "stats": {"prefill_tokens": st.prefill_tokens, "decode_tokens": st.decode_tokens,
                                 "decode_tokens_per_s": round(st.decode_tokens / st.decode_s, 1) if st.decode_s else 0,
                                 "stopped_by": st.stopped_by, "seed": st.seed}}
        return events()

    # -- memory ----------------------------------------------------------------------------
    def save_memory(self, cs: ChatSession, name: object, overwrite: bool = False) -> dict:
        name = check_name(name, "memory name")
        path = cs.project.memory_path(name, must_exist=False)
        if os.path.exists(path) and not overwrite:
            raise StudioError(f"memory {name!r} already exists: pick another name, or tick overwrite", 409)
        with INFERENCE:
            cs.session.save_memory(path, note=name)
        return {"name": name, "memory_tokens": cs.session.state.n_tokens}

    def load_memory(self, cs: ChatSession, name: object) -> dict:
        path = cs.project.memory_path(check_name(name, "memory name"))
        try:
            with INFERENCE:
                cs.session.load_memory(path)
        except MemoryFileError as e:
            raise StudioError(str(e)) from None
        cs.system = None
        return {"name": name, "memory_tokens": cs.session.state.n_tokens}

    def reset(self, cs: ChatSession) -> dict:
        with INFERENCE:
            cs.session.reset()
        cs.system = None
        return {"memory_tokens": 0}

    def sleep(self, cs: ChatSession, name: object = "sleep") -> dict:
        """Replay the project's logged conversations into the memory, then save it as `name`."""
        name = check_name(name, "memory name")
        path = cs.project.memory_path(name, must_exist=False)
        with INFERENCE:
            n = cs.session.replay_log(cs.project.chat_log)
            cs.session.save_memory(path, note="sleep")
        return {"name": name, "replayed_tokens": n, "memory_tokens": cs.session.state.n_tokens}


# -- a training run's sample --------------------------------------------------------------------
def newest_checkpoint(run_dir: str) -> str | None:
    d = os.path.join(run_dir, "checkpoints")
    files = [os.path.join(d, n) for n in os.listdir(d) if n.endswith(".safetensors") and not n.startswith(".")] \
        if os.path.isdir(d) else []
    return max(files, key=os.path.getmtime) if files else None


_SAMPLES: dict[tuple[str, float], dict] = {}


def run_sample(run_dir: str, tokens: int = 48, prompt: str = "") -> dict | None:
    """A short generation from the run's newest checkpoint (None before the first one)."""
    path = newest_checkpoint(run_dir)
    if path is None:
        return None
    key = (path, os.path.getmtime(path))
    if key in _SAMPLES:
        return _SAMPLES[key]
    try:
        model = MODELS.get(path)
        with INFERENCE:
            text = model.generate(prompt, max_tokens=tokens, temperature=0.8, top_k=40, seed=0)
    except (StudioError, CheckpointError, OSError) as e:  # the trainer may be replacing the file
        return {"checkpoint": os.path.basename(path), "error": str(e)}
    from ..formats import read_metadata

    try:
        step = int(json.loads(read_metadata(path).get("state", "{}")).get("step", -1))
    except Exception:
        step = -1
    out = {"checkpoint": os.path.basename(path), "step": step, "text": text}
    _SAMPLES[key] = out
    return out


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(project: Project, ref: object, file: object = None, dataset: object = None, reset_every: object = 0,
             max_tokens: object = 20000) -> dict:
    """Loss, perplexity and bits per byte of a model on a raw text file or a dataset's validation
    split (InferenceModel.score), and the loss by position in the stream (mean over CURVE_POINTS
    stretches: does the TTT memory help as it reads?)."""
    path = project.model_ref(ref)
    for k, v in (("reset_every", reset_every), ("max_tokens", max_tokens)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise StudioError(f"{k} must be an integer >= 0, got {v!r}")
    model = MODELS.get(path)
    tok = model.tokenizer
    if (file is None) == (dataset is None):
        raise StudioError("evaluate on one text file or one dataset's validation split")
    if file is not None:
        from .texts import check_text_file

        fpath = project.raw_path(file)
        check_text_file(fpath, str(file))
        from ..data import iter_texts

        ids = [tok.eos_id]
        for t in iter_texts([fpath]):
            ids += tok.encode(t) + [tok.eos_id]
            if max_tokens and len(ids) > max_tokens:
                break
        what = f"raw/{file}"
    else:
        from ..data import TokenData

        try:
            td = TokenData(project.dataset_path(dataset), "val")
        except ValueError as e:
            raise StudioError(str(e)) from None
        if td.tokenizer_sha256 != tok.sha256:
            raise StudioError(f"dataset {dataset} was made with another tokenizer than this model's")
        ids = [tok.eos_id] + [int(i) for i in np.asarray(td.tokens[: max_tokens or None])]
        what = f"data/{dataset} (validation split)"
    if max_tokens:
        ids = ids[: max_tokens + 1]
    if len(ids) < 2:
        raise StudioError(f"{what}: no text to evaluate")
    im = model.im
    with INFERENCE:
        total, n = im.score(ids, reset_every)
        losses = _token_losses(im, ids, reset_every)
    nbytes = len(tok.decode_bytes(ids[1:]))
    loss = total / n
    edges = np.linspace(0, len(losses), min(CURVE_POINTS, len(losses)) + 1).astype(int)
    curve = [[int((a + b) // 2), float(losses[a:b].mean())] for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return {"model": str(ref), "on": what, "tokens": n, "bytes": nbytes, "loss": loss,
            "perplexity": math.exp(min(loss, 700)), "bits_per_byte": total / math.log(2) / max(nbytes, 1),
            "loss_by_position": curve}


def _token_losses(im, ids: list[int], reset_every: int, chunk: int = 512) -> np.ndarray:
    """Every next-token loss of the stream, read as InferenceModel.score reads it (an attention
    model in windows of at most its max_position_embeddings)."""
    if im.config.kind != "ttt":
        limit = im.config.max_position_embeddings
        reset_every = min(reset_every, limit) if reset_every else limit
    out = []
    st = im.new_state()
    pos = 0
    while pos < len(ids) - 1:
        if reset_every and pos and pos % reset_every == 0:
            st = im.new_state()
        end = min(pos + chunk, len(ids) - 1)
        if reset_every:
            end = min(end, (pos // reset_every + 1) * reset_every)
        lg = im.feed(st, ids[pos:end], all_logits=True).astype(np.float64)
        tgt = np.asarray(ids[pos + 1:end + 1])
        m = lg.max(axis=1)
        lse = m + np.log(np.exp(lg - m[:, None]).sum(axis=1))
        out.append(lse - lg[np.arange(len(tgt)), tgt])
        pos = end
    return np.concatenate(out)
