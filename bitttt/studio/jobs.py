"""Background jobs of the Studio process (preparing token files): a thread each, with a state
the page polls: {id, kind, state: running|done|error, progress 0..1, message, result, error}."""
from __future__ import annotations

import itertools
import threading
import time
import traceback
from typing import Callable


class Job:
    def __init__(self, jid: str, kind: str, project: str) -> None:
        self.id, self.kind, self.project = jid, kind, project
        self.state = "running"
        self.progress = 0.0
        self.message = ""
        self.result: dict | None = None
        self.error: str | None = None
        self.started = time.time()
        self.ended: float | None = None

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "project": self.project, "state": self.state,
                "progress": round(self.progress, 4), "message": self.message, "result": self.result,
                "error": self.error, "started": self.started, "ended": self.ended}


class Jobs:
    """Runs `fn(job)` in a thread; `fn` sets job.progress / job.message and returns the result dict.
    A ValueError (or subclass) is the job's error message; anything else is reported with its type."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, kind: str, project: str, fn: Callable[[Job], dict]) -> Job:
        with self._lock:
            job = Job(str(next(self._ids)), kind, project)
            self._jobs[job.id] = job

        def body():
            try:
                job.result = fn(job)
                job.progress, job.state = 1.0, "done"
            except ValueError as e:
                job.error, job.state = str(e), "error"
            except Exception as e:  # reported, never silent
                job.error, job.state = f"{type(e).__name__}: {e}", "error"
                traceback.print_exc()
            job.ended = time.time()

        threading.Thread(target=body, name=f"studio-job-{job.id}", daemon=True).start()
        return job

    def get(self, jid: str) -> Job | None:
        return self._jobs.get(jid)

    def busy(self, project: str, kind: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.project == project and j.kind == kind and j.state == "running"]

    def wait(self, jid: str, timeout: float = 60.0) -> Job:
        """Block until the job ends (for tests and scripts)."""
        t0 = time.monotonic()
        job = self._jobs[jid]
        while job.state == "running" and time.monotonic() - t0 < timeout:
            time.sleep(0.02)
        return job
