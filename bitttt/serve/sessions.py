"""Conversations that keep their TTT memory: live sessions, per-turn snapshots, an LRU bounded
by bytes, spilled to memory files.

A session holds the TTT state, the token ids it has read (`ids`) and the logits after the last
one.  Clients resend the whole history every turn; `acquire(session_id, prompt)` finds what the
memory has read already and returns how many prompt tokens are cached, so that only the rest is
fed:

  * the session's ids are a prefix of the prompt: continue in place (feed the rest);
  * they part somewhere (an edited or regenerated turn): go back to the newest snapshot at or
    before the point where they part (a snapshot is taken after each prompt is read and after
    each reply) and feed from there; an unnamed session is forked there, the original kept.

Without a name, the prompt is matched against every idle unnamed session (live or spilled) and
the longest usable prefix wins, as llama-server picks a slot.  Every method runs on the
scheduler's thread; `replies` (reply text -> the token ids that made it) is shared with the
request handlers under a lock.
"""
from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..formats import MemoryFileError
from ..model import TTTState
from .errors import APIError

SUFFIX = ".mem.safetensors"


class Snapshot(NamedTuple):
    n: int                   # ids read when it was taken
    state: TTTState
    logits: np.ndarray       # after the n-th token [V]


def _lcp(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n and a[:n] == b[:n]:
        return n
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class LiveSession:
    """One conversation: `state` (None while spilled), `ids` read, `logits` after the last one."""

    def __init__(self, sid: str, named: bool, state: TTTState | None, ids: list[int] | None = None):
        self.id, self.named, self.state = sid, named, state
        self.ids: list[int] = list(ids or [])
        self.logits: np.ndarray | None = None
        self.snapshots: list[Snapshot] = []
        self.turns: list[tuple[str, str]] = []   # the last chat history it answered, for sleep
        self.busy = False
        self.created = self.last_used = time.time()

    @property
    def nbytes(self) -> int:
        if self.state is None:
            return 0
        return self.state.nbytes + sum(s.state.nbytes + s.logits.nbytes for s in self.snapshots)

    def snapshot(self, keep: int) -> None:
        """Remember the state as it is now (after len(ids) tokens); at most `keep` kept."""
        if self.state is None or self.logits is None:
            return
        n = len(self.ids)
        self.snapshots = [s for s in self.snapshots if s.n != n]
        self.snapshots.append(Snapshot(n, self.state.copy(), self.logits.copy()))
        self.snapshots.sort(key=lambda s: s.n)
        del self.snapshots[:-keep]

    def usable(self, prompt: list[int]) -> tuple[int, Snapshot | None, bool]:
        """(cached tokens, snapshot to go back to or None, in_place) for reading `prompt`."""
        k = _lcp(self.ids, prompt)
        if k == len(self.ids) and (len(prompt) > k or self.logits is not None):
            return k, None, True
        best = None
        for s in self.snapshots:
            if s.n <= k:
                best = s
        return (best.n, best, False) if best is not None else (0, None, False)

    def info(self) -> dict:
        return {"id": self.id, "object": "session", "named": self.named, "live": self.state is not None,
                "busy": self.busy, "history_tokens": len(self.ids),
                "tokens_read": self.state.n_tokens if self.state is not None else None,
                "snapshots": [s.n for s in self.snapshots], "bytes": self.nbytes, "created": int(self.created),
                "last_used": int(self.last_used)}


class SessionManager:
    """Live sessions in LRU order, their bytes (states and snapshots) bounded by `budget`;
    the least recently used idle ones are spilled to `directory` as memory files (dropped
    without one)."""

    def __init__(self, im, budget: int = 1 << 30, directory: str | None = None, max_snapshots: int = 16,
                 max_replies: int = 4096):
        self.im, self.budget, self.directory, self.max_snapshots = im, int(budget), directory, max_snapshots
        self.live: OrderedDict[str, LiveSession] = OrderedDict()
        self.spilled: dict[str, dict] = {}      # id -> {"ids": [...], "named": bool}
        self.replies: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self.replies_lock = threading.Lock()
        self.max_replies = max_replies
        self.evicted = self.spills = self.loads = 0
        if directory:
            os.makedirs(directory, exist_ok=True)
            for name in sorted(os.listdir(directory)):
                if name.endswith(SUFFIX):
                    sid = name[: -len(SUFFIX)]
                    try:
                        self.spilled[sid] = self._note(self._read(sid))
                    except MemoryFileError:
                        continue  # another model's memory or a damaged file: left alone

    # -- files -----------------------------------------------------------------------------
    def path(self, sid: str) -> str:
        if not self.directory:
            raise APIError(400, "this server keeps no session files: start it with --sessions DIR", "action",
                           "no_sessions_dir")
        return os.path.join(self.directory, sid + SUFFIX)

    def _read(self, sid: str):
        from ..formats import read_memory

        return read_memory(self.path(sid), model_id=self.im.model_id, config=self.im.config)

    @staticmethod
    def _note(m) -> dict:
        try:
            d = json.loads(m.note) if m.note else {}
        except ValueError:
            d = {}
        ids = d.get("ids") if isinstance(d, dict) else None
        ok = isinstance(ids, list) and all(isinstance(i, int) for i in ids)
        return {"ids": ids if ok else [], "named": bool(d.get("named", True)) if isinstance(d, dict) else True,
                "turns": d.get("turns", []) if isinstance(d, dict) else []}

    def write(self, s: LiveSession) -> str:
        """Save the session's state and history to DIR/<id>.mem.safetensors (atomic)."""
        path = self.path(s.id)
        note = json.dumps({"ids": s.ids, "named": s.named, "turns": s.turns})
        self.im.save_memory(s.state, path, note=note)
        return path

    def _load(self, sid: str) -> LiveSession:
        m = self._read(sid)
        a, meta = m.arrays, self._note(m)
        s = LiveSession(sid, meta["named"], TTTState(a["W0"], a["b0"], a["Kb"], a["Gb"], a["Sb"], m.pos, m.n_tokens),
                        meta["ids"])
        s.turns = [tuple(t) for t in meta["turns"] if isinstance(t, list) and len(t) == 2]
        self.loads += 1
        return s

    # -- finding a session -------------------------------------------------------------
    def get(self, sid: str, load: bool = True) -> LiveSession | None:
        s = self.live.get(sid)
        if s is None and load and sid in self.spilled:
            try:
                s = self._load(sid)
            except MemoryFileError as e:
                raise APIError(500, f"session {sid}: its memory file cannot be read ({e})", None, "bad_memory_file")\
                    from None
            del self.spilled[sid]
            self.live[sid] = s
        return s

    def acquire(self, sid: str | None, prompt: list[int]) -> tuple[LiveSession, int]:
        """The session to read `prompt` into, marked busy, and the prompt tokens it has read
        already (its state and ids are set back to that point).  APIError(409) when the named
        session is busy (the scheduler waits for it instead of calling)."""
        if sid is not None:
            s = self.get(sid)
            if s is None:
                s = LiveSession(sid, True, self.im.new_state())
                self.live[sid] = s
            cached, snap, in_place = s.usable(prompt)
            if not in_place:
                self._rewind(s, snap)
        else:
            s, cached = self._match(prompt)
        s.busy, s.last_used = True, time.time()
        self.live.move_to_end(s.id)
        return s, cached

    def busy(self, sid: str | None) -> bool:
        s = self.live.get(sid) if sid is not None else None
        return s is not None and s.busy

    def reset(self, s: LiveSession) -> None:
        """Forget what the session has read (a fresh state, no snapshots)."""
        s.state, s.ids, s.logits, s.snapshots = self.im.new_state(), [], None, []

    def _rewind(self, s: LiveSession, snap: Snapshot | None) -> None:
        if snap is None:
            s.state, s.ids, s.logits = self.im.new_state(), [], None
        else:
            s.state, s.ids, s.logits = snap.state.copy(), list(s.ids[: snap.n]), snap.logits.copy()
        s.snapshots = [x for x in s.snapshots if x.n <= len(s.ids)]

    def _match(self, prompt: list[int]) -> tuple[LiveSession, int]:
        best, best_k, best_snap, best_in_place = None, 0, None, False
        for s in self.live.values():
            if s.named or s.busy:
                continue
            k, snap, in_place = s.usable(prompt)
            if k > best_k or (k == best_k and k > 0 and in_place and not best_in_place):
                best, best_k, best_snap, best_in_place = s, k, snap, in_place
        for sid, meta in self.spilled.items():
            if meta["named"]:
                continue
            ids = meta["ids"]
            if len(ids) > best_k and _lcp(ids, prompt) == len(ids) and len(prompt) > len(ids):
                best, best_k, best_snap, best_in_place = sid, len(ids), None, True
        if isinstance(best, str):
            return self.get(best), best_k
        if best is None or best_k == 0:
            s = LiveSession(self.new_id(), False, self.im.new_state())
            self.live[s.id] = s
            return s, 0
        if best_in_place:
            return best, best_k
        s = LiveSession(self.new_id(), False, best_snap.state.copy(), best.ids[: best_snap.n])  # fork
        s.logits = best_snap.logits.copy()
        s.snapshots = [x for x in best.snapshots if x.n <= best_snap.n]  # shared, read-only: copied when restored
        self.live[s.id] = s
        return s, best_k

    def new_id(self) -> str:
        while True:
            sid = "sess-" + secrets.token_hex(6)
            if sid not in self.live and sid not in self.spilled:
                return sid

    # -- after a request ---------------------------------------------------------------
    def release(self, s: LiveSession) -> None:
        s.busy, s.last_used = False, time.time()
        self.enforce_budget()

    def remember_reply(self, text: str, ids: list[int]) -> None:
        """The token ids that made an assistant reply, reused when the client sends it back."""
        if not text:
            return
        with self.replies_lock:
            self.replies[text] = tuple(ids)
            self.replies.move_to_end(text)
            while len(self.replies) > self.max_replies:
                self.replies.popitem(last=False)

    def reply_ids(self, text: str) -> tuple[int, ...] | None:
        with self.replies_lock:
            return self.replies.get(text)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in list(self.live.values()))  # /metrics reads it from another thread

    def enforce_budget(self) -> None:
        """Spill (or drop, without a directory) idle sessions, least recently used first, until
        the live bytes fit the budget."""
        total = self.nbytes
        for sid in list(self.live):
            if total <= self.budget:
                break
            s = self.live[sid]
            if s.busy:
                continue
            total -= s.nbytes
            self.evict(s)

    def evict(self, s: LiveSession) -> None:
        del self.live[s.id]
        self.evicted += 1
        if self.directory and s.state is not None:
            self.write(s)
            self.spilled[s.id] = {"ids": list(s.ids), "named": s.named, "turns": s.turns}
            self.spills += 1

    # -- actions ---------------------------------------------------------------------------
    def erase(self, sid: str) -> bool:
        """Forget the session: live state, snapshots and its memory file."""
        found = self.live.pop(sid, None) is not None
        found = self.spilled.pop(sid, None) is not None or found
        if self.directory:
            p = os.path.join(self.directory, sid + SUFFIX)
            if os.path.exists(p):
                os.remove(p)
                found = True
        return found

    def restore(self, sid: str) -> LiveSession:
        """Replace the live session by its memory file (APIError 404 without one)."""
        p = self.path(sid)
        if not os.path.exists(p):
            raise APIError(404, f"session {sid} has no memory file in {self.directory}", None, "session_not_found")
        try:
            s = self._load(sid)
        except MemoryFileError as e:
            raise APIError(400, f"session {sid}: {e}", None, "bad_memory_file") from None
        self.spilled.pop(sid, None)
        self.live[sid] = s
        self.live.move_to_end(sid)
        self.enforce_budget()
        return s

    def listing(self) -> list[dict]:
        out = [s.info() for s in reversed(self.live.values())]
        for sid, meta in self.spilled.items():
            out.append({"id": sid, "object": "session", "named": meta["named"], "live": False, "busy": False,
                        "history_tokens": len(meta["ids"]), "tokens_read": None, "snapshots": [], "bytes": 0})
        return out
