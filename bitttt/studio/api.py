"""The Studio's HTTP API: one APIRouter (mounted at /api by create_app; a server can mount it
under its own prefix).  Every route is a thin call into the Studio's modules; a refused request
is answered {"error": message} with status 400 (bad input), 404 (missing) or 409 (busy, exists)."""
from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Optional

from fastapi import APIRouter, Body, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from ..data import DataError
from ..formats import CheckpointError, MemoryFileError
from . import chat, datasets, presets, texts, tokenizers
from .jobs import Jobs
from .projects import Projects, StudioError
from .runs import Runs, console_tail, estimate, read_log

TAIL_POLL_S = 0.25
BODY = Body(...)
OPT = Body(default=None)


class Studio:
    """The state behind the API: the projects folder, the run manager, jobs and chat sessions."""

    def __init__(self, projects_dir: str | os.PathLike) -> None:
        self.projects = Projects(projects_dir)
        self.runs = Runs(self.projects)
        self.jobs = Jobs()
        self.chats = chat.Chats()

    def open(self) -> None:
        os.makedirs(self.projects.root, exist_ok=True)
        self.runs.open()

    def close(self) -> None:
        self.runs.close()


def validation_response(request, e) -> JSONResponse:
    msgs = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors())
    return JSONResponse({"error": f"bad request ({msgs}): the body must be a JSON object"}, status_code=400)


def error_response(e: Exception) -> JSONResponse:
    status = e.status if isinstance(e, StudioError) else 404 if isinstance(e, FileNotFoundError) else 400
    return JSONResponse({"error": str(e)}, status_code=status)


HANDLED = (StudioError, DataError, CheckpointError, MemoryFileError, ValueError, TypeError, FileNotFoundError)


class StudioRoute(APIRoute):
    """A route that answers the Studio's refusals itself, so that the router brings its error
    handling along wherever it is mounted (and changes nothing of the host app's)."""

    def get_route_handler(self):
        original = super().get_route_handler()

        async def handler(request: Request):
            try:
                return await original(request)
            except RequestValidationError as e:
                return validation_response(request, e)
            except HANDLED as e:
                return error_response(e)

        return handler


def build_router(studio: Studio) -> APIRouter:
    """The API routes of `studio`."""
    r = APIRouter(route_class=StudioRoute)
    P = studio.projects

    def project_summary(name: str) -> dict:
        p = P.get(name)
        return {"name": p.name, "path": p.root, "raw": p.raw_files(), "tokenizers": p.tokenizers(),
                "datasets": p.datasets(), "runs": studio.runs.list(p), "models": p.model_files(),
                "memories": p.memories(), "active_run": studio.runs.active(p.name),
                "queue": studio.runs.queue(p.name)}

    # -- the page's setup -----------------------------------------------------------------
    @r.get("/presets")
    def get_presets():
        return {"presets": presets.PRESETS, "notes": presets.PRESET_NOTES, "fields": presets.fields()}

    @r.get("/projects")
    def list_projects():
        return {"root": P.root, "projects": P.names()}

    @r.post("/projects")
    def create_project(body: dict = BODY):
        p = P.create(body.get("name"))
        return project_summary(p.name)

    @r.get("/projects/{name}")
    def get_project(name: str):
        return project_summary(name)

    # -- Data tab ---------------------------------------------------------------------------
    @r.post("/projects/{name}/raw")
    async def upload_text(name: str, request: Request, filename: str = ""):
        p = P.get(name)
        return await texts.add_stream(p, filename, request.stream())

    @r.post("/projects/{name}/raw/path")
    def add_text_path(name: str, body: dict = BODY):
        return texts.add_path(P.get(name), body.get("path"), body.get("name") or None)

    @r.get("/projects/{name}/raw/{file}")
    def preview_text(name: str, file: str):
        return texts.preview(P.get(name), file)

    @r.post("/projects/{name}/tokenizers")
    def train_tokenizer(name: str, body: dict = BODY):
        return tokenizers.train(P.get(name), body.get("name"), body.get("files"), body.get("vocab_size"),
                                body.get("model_type", "unigram"))

    @r.get("/projects/{name}/tokenizers/{tok}")
    def tokenizer_stats(name: str, tok: str):
        return tokenizers.load_stats(P.get(name), tok)

    @r.post("/projects/{name}/datasets")
    def prepare_dataset(name: str, body: dict = BODY):
        job = datasets.start_prepare(P.get(name), studio.jobs, body.get("name"), body.get("files"),
                                     body.get("tokenizer"), body.get("val_fraction", 0.05), body.get("seed", 0))
        return JSONResponse(job.to_dict(), status_code=202)

    @r.get("/jobs/{jid}")
    def get_job(jid: str):
        job = studio.jobs.get(jid)
        if job is None:
            raise StudioError(f"no job {jid!r}", 404)
        return job.to_dict()

    # -- Train tab --------------------------------------------------------------------------
    @r.post("/projects/{name}/command")
    def command(name: str, body: dict = BODY):
        return studio.runs.command(P.get(name), body)

    @r.post("/projects/{name}/estimate")
    def trial_estimate(name: str, body: dict = BODY):
        p = P.get(name)
        return {**estimate(p, body), "busy": studio.runs.active(p.name)}

    @r.post("/projects/{name}/runs")
    def start_run(name: str, body: dict = BODY):
        return studio.runs.start(P.get(name), body.get("form"), bool(body.get("queue", False)))

    @r.get("/projects/{name}/runs")
    def list_runs(name: str):
        p = P.get(name)
        return {"runs": studio.runs.list(p), "active_run": studio.runs.active(p.name),
                "queue": studio.runs.queue(p.name)}

    @r.delete("/projects/{name}/queue/{qid}")
    def unqueue(name: str, qid: str):
        studio.runs.unqueue(P.get(name).name, qid)
        return {"queue": studio.runs.queue(name)}

    @r.get("/projects/{name}/runs/{run}")
    def run_status(name: str, run: str):
        return studio.runs.status(P.get(name), run)

    @r.post("/projects/{name}/runs/{run}/stop")
    def stop_run(name: str, run: str):
        return studio.runs.stop(P.get(name), run)

    @r.post("/projects/{name}/runs/{run}/kill")
    def kill_run(name: str, run: str):
        return studio.runs.kill(P.get(name), run)

    @r.post("/projects/{name}/runs/{run}/resume")
    def resume_run(name: str, run: str, body: Optional[dict] = OPT):  # noqa: UP045 (FastAPI evaluates it on 3.9)
        body = body or {}
        return studio.runs.resume(P.get(name), run, body.get("checkpoint"), body.get("overrides"),
                                  bool(body.get("queue", False)))

    @r.get("/projects/{name}/runs/{run}/log")
    def run_log(name: str, run: str):
        recs, off = read_log(P.get(name).run_path(run))
        return {"records": recs, "offset": off}

    @r.get("/projects/{name}/runs/{run}/console")
    def run_console(name: str, run: str):
        return {"text": console_tail(P.get(name).run_path(run))}

    @r.get("/projects/{name}/runs/{run}/sample")
    def run_sample(name: str, run: str):
        return chat.run_sample(P.get(name).run_path(run)) or {"text": None}

    @r.get("/projects/{name}/runs/{run}/events")
    async def run_events(name: str, run: str, request: Request, offset: int = 0):
        p = P.get(name)
        rd = p.run_path(run)
        last = request.headers.get("last-event-id")
        pos = int(last) if last and last.isdigit() else max(0, offset)

        async def gen():
            nonlocal pos
            sampled_step = None
            while True:
                recs, new = read_log(rd, pos)
                for rec in recs:
                    yield {"event": "log", "data": json.dumps(rec)}
                if new != pos:
                    pos = new
                    yield {"event": "offset", "id": str(pos), "data": str(pos)}
                ev = next((x for x in reversed(recs) if "val_loss" in x), None)
                if ev is not None and ev.get("step") != sampled_step:
                    sampled_step = ev.get("step")
                    s = await run_in_threadpool(chat.run_sample, rd)
                    if s is not None:
                        yield {"event": "sample", "data": json.dumps({**s, "eval_step": sampled_step})}
                if not recs:
                    st = await run_in_threadpool(studio.runs.status, p, run)
                    if st["state"] not in ("running",):
                        if read_log(rd, pos)[0]:
                            continue
                        yield {"event": "end", "data": json.dumps({"state": st["state"], "error": st["error"]})}
                        return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(TAIL_POLL_S)

        return EventSourceResponse(gen(), ping=10)

    @r.post("/projects/{name}/runs/{run}/export")
    def export(name: str, run: str, body: Optional[dict] = OPT):  # noqa: UP045 (FastAPI evaluates it on 3.9)
        body = body or {}
        from ..formats import export_checkpoint
        from .projects import check_name

        p = P.get(name)
        ck = body.get("checkpoint")
        src = p.checkpoint_path(run, ck) if ck else p.model_ref(f"runs/{run}")
        out_name = check_name(body.get("name") or f"{run}.safetensors", "model file name")
        if not out_name.endswith(".safetensors"):
            out_name += ".safetensors"
        out = p.model_file_path(out_name, must_exist=False)
        if os.path.exists(out):
            raise StudioError(f"models/{out_name} already exists: pick another name", 409)
        head = body.get("head", "int8")
        t0 = time.perf_counter()
        meta = export_checkpoint(src, out, head)
        return {"name": out_name, "bytes": os.path.getsize(out), "head": meta.get("head"),
                "source": meta.get("source"), "step": meta.get("step"), "seconds": round(time.perf_counter() - t0, 3)}

    @r.post("/projects/{name}/eval")
    def evaluate(name: str, body: dict = BODY):
        return chat.evaluate(P.get(name), body.get("model"), body.get("file"), body.get("dataset"),
                             body.get("reset_every", 0), body.get("max_tokens", 20000))

    # -- Chat tab ---------------------------------------------------------------------------
    @r.post("/projects/{name}/chat")
    def open_chat(name: str, body: dict = BODY):
        return studio.chats.open(P.get(name), body.get("model"))

    @r.post("/projects/{name}/chat/{sid}/message")
    def chat_message(name: str, sid: str, body: dict = BODY):
        cs = studio.chats.get(P.get(name), sid)
        events = studio.chats.message(cs, body.get("text"), body.get("system"), body.get("sampling"))
        return EventSourceResponse(({"event": e["type"], "data": json.dumps(e)} for e in events), ping=10)

    @r.post("/projects/{name}/chat/{sid}/memory/{action}")
    def memory(name: str, sid: str, action: str, body: Optional[dict] = OPT):  # noqa: UP045 (FastAPI evaluates it on 3.9)
        body = body or {}
        cs = studio.chats.get(P.get(name), sid)
        if action == "save":
            return studio.chats.save_memory(cs, body.get("name"), bool(body.get("overwrite", False)))
        if action == "load":
            return studio.chats.load_memory(cs, body.get("name"))
        if action == "reset":
            return studio.chats.reset(cs)
        if action == "sleep":
            return studio.chats.sleep(cs, body.get("name") or "sleep")
        raise StudioError(f"unknown memory action {action!r}: save, load, reset or sleep", 404)

    @r.get("/projects/{name}/chat/{sid}")
    def chat_info(name: str, sid: str):
        return studio.chats.get(P.get(name), sid).info()

    return r
