"""Training runs of a project: `python -m bitttt.train` subprocesses, one at a time per project,
with a queue.

A run lives in `runs/NAME/` (the trainer's run directory).  The Studio adds `studio.json` (the
command, pid, state: running | finished | stopped | killed | failed | interrupted) and
`console.log` (the trainer's stdout and stderr).  Stop touches `runs/NAME/STOP` (the trainer
saves a checkpoint and exits), kill sends SIGKILL to the run's process group (the last
checkpoint stays intact).  The subprocess is started in its own session, so closing the page or
the Studio never stops or corrupts it; a Studio started later finds it by its pid.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import threading
import time

import psutil

from ..config import BitLlamaConfig
from ..fileio import atomic_write_bytes
from ..formats.runs import checkpoint_step, step_checkpoints
from ..trainer import TrainConfig
from .presets import FIELD_KEYS, defaults
from .projects import Project, Projects, StudioError, check_name

RESUME_KEYS = ("max_steps", "max_time")
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- the form -> a TrainConfig and its command line ---------------------------------------------
def build_config(project: Project, form: object) -> tuple[TrainConfig, list[str]]:
    """{"name": run, "data": dataset, "fields": {key: value}} -> (TrainConfig, `python -m bitttt.train`
    arguments); StudioError naming the field for anything invalid."""
    if not isinstance(form, dict):
        raise StudioError("the run form must be a JSON object")
    name = check_name(form.get("name"), "run name")
    data = form.get("data")
    if not isinstance(data, str) or not data:
        raise StudioError("choose a prepared dataset (Data tab: prepare token files first)")
    dpath = project.dataset_path(data)
    flds = form.get("fields") or {}
    if not isinstance(flds, dict):
        raise StudioError("fields must be an object of training fields")
    unknown = sorted(set(flds) - set(FIELD_KEYS))
    if unknown:
        raise StudioError(f"unknown training field(s): {', '.join(unknown)}")
    dflt = defaults()
    changed = {}
    for k, v in flds.items():
        if isinstance(dflt[k], float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)  # the page sends 1 for 1.0
        if v != dflt[k] or type(v) is not type(dflt[k]):
            changed[k] = v
    try:
        cfg = TrainConfig().with_overrides({"data": f"data/{data}", "out_dir": "runs", "name": name, **changed})
        with open(os.path.join(dpath, "manifest.json"), encoding="utf-8") as f:
            vocab = int(json.load(f)["tokenizer"]["vocab_size"])
        BitLlamaConfig.from_dict({**cfg.model, "vocab_size": vocab})
    except (ValueError, TypeError) as e:
        raise StudioError(str(e)) from None
    args = [f"data=data/{data}", "out_dir=runs", f"name={name}"]
    args += [f"{k}={json.dumps(v)}" for k, v in changed.items()]
    return cfg, args + ["--no-progress"]


def shown_command(project: Project, args: list[str]) -> str:
    """The command line the Studio runs, as a user would type it."""
    return f"cd {shlex.quote(project.root)} && " + shlex.join(["python", "-m", "bitttt.train", *args])


# -- reading a run ----------------------------------------------------------------------------
def read_log(run_dir: str, offset: int = 0) -> tuple[list[dict], int]:
    """The records of `run_dir`/log.jsonl from byte `offset` on (complete lines only), and the offset
    after the last one read."""
    path = os.path.join(run_dir, "log.jsonl")
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n") + 1
    recs = []
    for line in data[:end].splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict):
            recs.append(r)
    return recs, offset + end


def checkpoints(run_dir: str) -> list[dict]:
    """The run's checkpoints, newest step first, then best.safetensors (with the step it holds)."""
    from ..formats import read_metadata

    out = []
    for p in step_checkpoints(run_dir):
        st = os.stat(p)
        out.append({"name": os.path.basename(p), "step": checkpoint_step(p), "bytes": st.st_size, "mtime": st.st_mtime})
    best = os.path.join(run_dir, "checkpoints", "best.safetensors")
    if os.path.isfile(best):
        st = os.stat(best)
        try:
            step = int(json.loads(read_metadata(best).get("state", "{}")).get("step", -1))
        except Exception:
            step = -1
        out.append({"name": "best.safetensors", "step": step, "bytes": st.st_size, "mtime": st.st_mtime, "best": True})
    return out


def console_tail(run_dir: str, nbytes: int = 16384) -> str:
    """The end of the run's console.log (what the trainer printed)."""
    try:
        with open(os.path.join(run_dir, "console.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json(path: str, d: dict) -> None:
    atomic_write_bytes(path, (json.dumps(d, indent=1) + "\n").encode("utf-8"))


def _alive(job: dict) -> bool:
    try:
        p = psutil.Process(int(job["pid"]))
        return abs(p.create_time() - float(job["create_time"])) < 0.5 and p.status() != psutil.STATUS_ZOMBIE
    except (KeyError, TypeError, ValueError, psutil.Error):
        return False


def _console_error(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "console.log"), "rb") as f:
            f.seek(max(0, os.path.getsize(f.name) - 8192))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        if line.startswith("error:") or "Error" in line:
            return line
    return lines[-1] if lines else ""


class Runs:
    """Starts, stops, kills, resumes and queues the training runs of every project."""

    def __init__(self, projects: Projects, poll_s: float = 0.25) -> None:
        self.projects = projects
        self._procs: dict[tuple[str, str], subprocess.Popen] = {}
        self._killed: set[tuple[str, str]] = set()
        self._queue: dict[str, list[dict]] = {}  # loaded from and saved to <project>/queue.json
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._poll_s = poll_s
        self._thread: threading.Thread | None = None

    # -- the queue, kept in <project>/queue.json so that closing the Studio loses none of it --------
    def _q(self, pname: str) -> list[dict]:
        if pname not in self._queue:
            path = os.path.join(self.projects.root, pname, "queue.json")
            items = []
            try:
                with open(path, encoding="utf-8") as f:
                    items = [it for it in json.load(f) if isinstance(it, dict) and {"id", "run", "args"} <= set(it)]
            except FileNotFoundError:
                pass
            except (OSError, ValueError, TypeError) as e:
                print(f"studio: ignoring unreadable {path}: {e}", file=sys.stderr)
            self._queue[pname] = items
        return self._queue[pname]

    def _save_queue(self, pname: str) -> None:
        path = os.path.join(self.projects.root, pname, "queue.json")
        if os.path.isdir(os.path.dirname(path)):
            atomic_write_bytes(path, (json.dumps(self._q(pname), indent=1) + "\n").encode("utf-8"))

    # -- the watcher ------------------------------------------------------------------
    def open(self) -> None:
        """Start the thread that notices ended runs and starts queued ones (of every project)."""
        for pname in self.projects.names():
            self._q(pname)
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._watch, name="studio-runs", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop watching (running trainings go on by themselves)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _watch(self) -> None:
        while not self._stop.wait(self._poll_s):
            try:
                self.poll()
            except Exception as e:  # the watcher must survive a bad run folder
                print(f"studio: run watcher: {e}", file=sys.stderr)

    def poll(self) -> None:
        """Finish ended runs and start the next queued run of each free project."""
        with self._lock:
            for key, proc in list(self._procs.items()):
                if proc.poll() is not None:
                    self._finish(key, proc.returncode)
            for pname, q in list(self._queue.items()):
                pending = [it for it in q if it["state"] == "queued"]
                if pending and self.active(pname) is None:
                    self._launch_queued(pname, pending[0])

    def _finish(self, key: tuple[str, str], rc: int) -> None:
        del self._procs[key]
        pname, run = key
        rd = os.path.join(self.projects.root, pname, "runs", run)
        job = _read_json(os.path.join(rd, "studio.json"))
        recs, _ = read_log(rd, int(job.get("log_offset", 0)))
        summ = next((r["summary"] for r in reversed(recs) if "summary" in r), None)
        if key in self._killed:
            self._killed.discard(key)
            state = "killed"
        elif rc == 0 and summ is not None:
            state = "finished" if summ.get("stopped_by") in ("max_steps", "max_time") else "stopped"
        else:
            state = "failed"
            job["error"] = _console_error(rd) or f"exit status {rc}"
        try:
            os.unlink(os.path.join(rd, "STOP"))
        except OSError:
            pass
        job.update(state=state, returncode=rc, ended=time.time())
        _write_json(os.path.join(rd, "studio.json"), job)

    # -- state --------------------------------------------------------------------------
    def active(self, pname: str) -> str | None:
        """The run of the project that is training now (started by this Studio or an earlier one)."""
        with self._lock:
            for (p, run), proc in self._procs.items():
                if p == pname and proc.poll() is None:
                    return run
            rdir = os.path.join(self.projects.root, pname, "runs")
            for run in os.listdir(rdir) if os.path.isdir(rdir) else []:
                job = _read_json(os.path.join(rdir, run, "studio.json"))
                if job.get("state") == "running" and _alive(job):
                    return run
        return None

    def status(self, project: Project, run: str) -> dict:
        """Everything the page shows about a run."""
        rd = project.run_path(run)
        job = _read_json(os.path.join(rd, "studio.json"))
        state = job.get("state", "")
        alive = (project.name, run) in self._procs or (state == "running" and _alive(job))
        recs, _ = read_log(rd)
        summ = next((r["summary"] for r in reversed(recs) if "summary" in r), None)
        if state == "running" and not alive:
            state = "interrupted" if summ is None else ("finished" if summ.get("stopped_by") in
                                                        ("max_steps", "max_time") else "stopped")
        elif not state:
            state = "finished" if summ else "unknown"
        steps = [r for r in recs if "loss" in r and "step" in r]
        evals = [r for r in recs if "val_loss" in r]
        tc = _read_json(os.path.join(rd, "train_config.json"))
        step = max([r["step"] for r in recs if isinstance(r.get("step"), int)]
                   + ([summ["step"]] if summ and isinstance(summ.get("step"), int) else []), default=0)
        return {"name": run, "state": state, "pid": job.get("pid") if alive else None,
                "step": step, "max_steps": job.get("max_steps") or tc.get("max_steps"),
                "loss": steps[-1]["loss"] if steps else None,
                "val_loss": evals[-1]["val_loss"] if evals else None,
                "best_val_loss": min((e["val_loss"] for e in evals), default=None),
                "tokens": steps[-1].get("tokens") if steps else 0, "model": tc.get("model"), "data": tc.get("data"),
                "command": job.get("command", ""), "error": job.get("error"), "started": job.get("started"),
                "ended": job.get("ended"), "stop_requested": os.path.exists(os.path.join(rd, "STOP")),
                "checkpoints": checkpoints(rd)}

    def list(self, project: Project) -> list[dict]:
        return [self.status(project, r) for r in project.run_names()]

    def queue(self, pname: str) -> list[dict]:
        with self._lock:
            return [dict(it) for it in self._q(pname)]

    def unqueue(self, pname: str, qid: str) -> None:
        with self._lock:
            q = self._q(pname)
            for it in q:
                if it["id"] == qid:
                    q.remove(it)
                    self._save_queue(pname)
                    return
        raise StudioError(f"nothing queued with id {qid!r} in project {pname}", 404)

    # -- actions ------------------------------------------------------------------------
    def command(self, project: Project, form: object) -> dict:
        """The checked form's command line (the page shows it as the form changes)."""
        cfg, args = build_config(project, form)
        return {"command": shown_command(project, args), "config": cfg.to_dict()}

    def _busy_message(self, pname: str, run: str) -> str:
        return (f"project {pname} is busy: run {run} is training. Stop it (or wait for it) before starting "
                f"another, or add this one to the queue")

    def _check_free_name(self, project: Project, run: str) -> None:
        if os.path.exists(project.run_path(run, must_exist=False)):
            raise StudioError(f"run {run!r} already exists in project {project.name}: resume it from the Runs tab, "
                              "or pick another name", 409)
        if any(it["run"] == run and it["state"] == "queued" for it in self._q(project.name)):
            raise StudioError(f"a run named {run!r} is already in the queue of project {project.name}", 409)

    def start(self, project: Project, form: object, queue: bool = False) -> dict:
        """Start a new run (or queue it when `queue`); 409 when the project is busy and not `queue`."""
        cfg, args = build_config(project, form)
        with self._lock:
            self._check_free_name(project, cfg.name)
            item = {"kind": "start", "run": cfg.name, "args": args, "command": shown_command(project, args),
                    "max_steps": cfg.max_steps}
            return self._start_or_queue(project, item, queue)

    def resume(self, project: Project, run: str, checkpoint: object = None, overrides: object = None,
               queue: bool = False) -> dict:
        """Continue `run` from `checkpoint` (a file name in its checkpoints/, default its newest intact
        step checkpoint); `overrides` may set max_steps / max_time."""
        rd = project.run_path(run)
        if checkpoint in (None, ""):
            if not step_checkpoints(rd):
                raise StudioError(f"run {run} has no checkpoint to resume from", 409)
            src = f"runs/{run}"
        else:
            project.checkpoint_path(run, checkpoint)
            src = f"runs/{run}/checkpoints/{checkpoint}"
        ov = overrides or {}
        if not isinstance(ov, dict):
            raise StudioError("overrides must be an object")
        bad = sorted(set(ov) - set(RESUME_KEYS))
        if bad:
            raise StudioError(f"cannot change {', '.join(bad)} when resuming (it would change the run); "
                              f"allowed: {', '.join(RESUME_KEYS)}")
        args = ["--resume", src]
        for k, v in ov.items():
            ok = (isinstance(v, int) and v >= 1) if k == "max_steps" else \
                (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0)
            if isinstance(v, bool) or not ok:
                raise StudioError(f"{k} must be {'an integer >= 1' if k == 'max_steps' else 'a number >= 0'}, "
                                  f"got {v!r}")
            args.append(f"{k}={json.dumps(v)}")
        args.append("--no-progress")
        max_steps = ov.get("max_steps")
        if max_steps is None:  # the run's length as its checkpoint has it (an earlier resume may have changed it)
            from ..formats import read_metadata

            ck = project.checkpoint_path(run, checkpoint) if checkpoint else step_checkpoints(rd)[0]
            try:
                max_steps = json.loads(read_metadata(ck).get("train", "{}")).get("max_steps")
            except Exception:
                max_steps = None
        with self._lock:
            if self.active(project.name) == run:
                raise StudioError(f"run {run} is training now: stop it before resuming it", 409)
            if any(it["run"] == run and it["state"] == "queued" for it in self._q(project.name)):
                raise StudioError(f"run {run} is already in the queue", 409)
            item = {"kind": "resume", "run": run, "args": args, "command": shown_command(project, args),
                    "max_steps": max_steps}
            return self._start_or_queue(project, item, queue)

    def _start_or_queue(self, project: Project, item: dict, queue: bool) -> dict:
        busy = self.active(project.name)
        if busy is None and not [it for it in self._q(project.name) if it["state"] == "queued"]:
            self._launch(project, item)
            return {"state": "running", "run": item["run"], "command": item["command"]}
        if not queue:
            raise StudioError(self._busy_message(project.name, busy or "(queued runs first)"), 409)
        item.update(id=f"{int(time.time() * 1000):x}-{next(self._ids)}", state="queued", queued_at=time.time())
        self._q(project.name).append(item)
        self._save_queue(project.name)
        return {"state": "queued", "run": item["run"], "command": item["command"], "id": item["id"]}

    def _launch_queued(self, pname: str, item: dict) -> None:
        try:
            project = self.projects.get(pname)
            if item["kind"] == "start":
                self._check_free_name_outside_queue(project, item["run"])
            self._launch(project, item)
            self._queue[pname].remove(item)
        except (StudioError, OSError) as e:
            item.update(state="failed", error=str(e))
        self._save_queue(pname)

    def _check_free_name_outside_queue(self, project: Project, run: str) -> None:
        if os.path.exists(project.run_path(run, must_exist=False)):
            raise StudioError(f"run {run!r} already exists in project {project.name}", 409)

    def _launch(self, project: Project, item: dict) -> None:
        run = item["run"]
        rd = project.run_path(run, must_exist=False)
        os.makedirs(rd, exist_ok=True)
        try:
            os.unlink(os.path.join(rd, "STOP"))  # a leftover would stop the run at its first step
        except OSError:
            pass
        log_offset = os.path.getsize(os.path.join(rd, "log.jsonl")) if os.path.exists(os.path.join(rd, "log.jsonl")) \
            else 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH", "")) if p)
        with open(os.path.join(rd, "console.log"), "ab") as con:
            con.write(f"\n$ {item['command']}\n".encode())
            con.flush()
            proc = subprocess.Popen([sys.executable, "-m", "bitttt.train", *item["args"]], cwd=project.root,
                                    stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        try:
            ct = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            ct = time.time()
        self._procs[(project.name, run)] = proc
        _write_json(os.path.join(rd, "studio.json"),
                    {"state": "running", "kind": item["kind"], "pid": proc.pid, "create_time": ct,
                     "command": item["command"], "started": time.time(), "log_offset": log_offset,
                     "max_steps": item.get("max_steps")})

    def stop(self, project: Project, run: str) -> dict:
        """Ask the run to save a checkpoint and exit (the trainer checks for runs/RUN/STOP every step)."""
        rd = project.run_path(run)
        if self.active(project.name) != run:
            raise StudioError(f"run {run} is not training", 409)
        with open(os.path.join(rd, "STOP"), "w"):
            pass
        return {"state": "stopping", "run": run}

    def kill(self, project: Project, run: str) -> dict:
        """SIGKILL the run's process group now; its last checkpoint stays as it was."""
        project.run_path(run)
        with self._lock:
            if self.active(project.name) != run:
                raise StudioError(f"run {run} is not training", 409)
            key = (project.name, run)
            proc = self._procs.get(key)
            pid = proc.pid if proc else int(_read_json(os.path.join(project.run_path(run), "studio.json"))["pid"])
            self._killed.add(key)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if proc is not None:
                proc.wait(10)
                self._finish(key, proc.returncode)
            else:  # a run of an earlier Studio: not our child, nothing to reap
                self._killed.discard(key)
                rd = project.run_path(run)
                job = _read_json(os.path.join(rd, "studio.json"))
                job.update(state="killed", ended=time.time())
                _write_json(os.path.join(rd, "studio.json"), job)
        return {"state": "killed", "run": run}

    def wait(self, pname: str, run: str, timeout: float = 60.0) -> None:
        """Block until the run's process has ended and been recorded (tests and scripts)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            with self._lock:
                proc = self._procs.get((pname, run))
                if proc is None:
                    return
                if proc.poll() is not None:
                    self._finish((pname, run), proc.returncode)
                    return
            time.sleep(0.05)
        raise TimeoutError(f"run {run} still training after {timeout} s")


def estimate(project: Project, form: object, steps: int = 3, timeout: float = 300.0) -> dict:
    """Time a few training steps of the form's run in a fresh process (bitttt.studio.trial): time per
    step, peak RAM, and the whole run's time at that speed."""
    cfg, _ = build_config(project, form)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PKG_PARENT, env.get("PYTHONPATH", "")) if p)
    try:
        r = subprocess.run([sys.executable, "-m", "bitttt.studio.trial"], cwd=project.root, env=env,
                           input=json.dumps({"config": cfg.to_dict(), "steps": steps}), capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StudioError(f"the trial steps took longer than {timeout:.0f} s: this model is too large to train "
                          "here at a useful speed") from None
    lines = r.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise StudioError(f"the trial step failed: {(r.stderr.strip().splitlines() or ['no output'])[-1]}") from None
    if "error" in out:
        raise StudioError(f"the trial step failed: {out['error']}")
    n_evals = cfg.max_steps // cfg.eval_interval
    total = cfg.max_steps * out["step_s"] + n_evals * cfg.eval_batches * out["eval_batch_s"]
    capped = bool(cfg.max_time) and total > cfg.max_time
    if capped:
        total = cfg.max_time
    out.update(total_s=round(total, 1), capped=capped, max_steps=cfg.max_steps,
               tokens_per_s=round(out["tokens_per_step"] / max(out["step_s"], 1e-9), 1))
    return out
