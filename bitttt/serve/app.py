"""The HTTP side: FastAPI routes speaking the OpenAI API, in front of one Scheduler.

    from bitttt.serve import create_app
    app = create_app(loader=lambda: bitttt.load("model.safetensors"))   # then uvicorn.run(app)

Routes: GET /health (503 while loading), GET /v1/models, POST /v1/completions,
POST /v1/chat/completions (streaming: `data: {json}` chunks, then `data: [DONE]`), POST /tokenize,
POST /detokenize, GET /metrics (Prometheus text), GET /v1/sessions, GET and POST
/v1/sessions/{id} (action = save | restore | erase | sleep).  Every error has OpenAI's shape,
{"error": {"message", "type", "param", "code"}}.  Handlers never run the model: they tokenize
in a worker thread and wait on the scheduler's events.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import sys
import tempfile
import threading
import time
import traceback
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import APIError, bad_request
from .metrics import Metrics
from .scheduler import Job, Scheduler
from .schemas import ROLES, GenRequest, parse_chat, parse_completion, session_id_of
from .sessions import SessionManager

PUBLIC = {"/health"}


class Server:
    """What the routes share: the model once loaded, its sessions, the scheduler and metrics."""

    def __init__(self, loader: Callable[[], object], name: str, api_keys: tuple[str, ...], parallel: int,
                 sessions_dir: str | None, budget: int, max_tokens: int, prefill_chunk: int, decode: str = "auto"):
        self.loader, self.name, self.api_keys = loader, name, tuple(k for k in api_keys if k)
        self.parallel, self.sessions_dir, self.budget = parallel, sessions_dir, budget
        self.max_tokens, self.prefill_chunk, self.decode = max_tokens, prefill_chunk, decode
        self.metrics = Metrics()
        self.model = self.im = self.tok = self.sessions = self.scheduler = None
        self.ready = threading.Event()
        self.error: str | None = None
        self.on_fail: Callable[[], None] | None = None   # the command line stops the server when loading fails
        self.created = int(time.time())

    def load(self) -> None:
        t0 = time.perf_counter()
        try:
            m = self.loader()
            self.model, self.im, self.tok = m, m.im, m.tokenizer
            self.sessions = SessionManager(self.im, self.budget, self.sessions_dir)
            self.state_bytes = self.im.new_state().nbytes
            self.scheduler = Scheduler(self.im, self.sessions, self.parallel, self.prefill_chunk, self.metrics,
                                       decode=self.decode)
            sp = self.tok.special_ids
            self.role_ids = {r: sp[tag] for r, tag in ROLES.items()}
            self.chat_stop_ids = frozenset(sp[t] for t in ("<|user|>", "<|system|>", "<|assistant|>"))
            self.scheduler.start()
            self.ready.set()
            if self.on_fail is not None:  # the command line: say when the routes answer
                print(f"bitttt.serve: {self.name} loaded in {time.perf_counter() - t0:.1f} s "
                      f"({self.state_bytes / 2**20:.1f} MiB of memory per session)", file=sys.stderr, flush=True)
        except Exception as e:  # reported by /health and every route
            self.error = f"{type(e).__name__}: {e}"
            if self.on_fail is not None:
                self.on_fail()
            else:
                traceback.print_exc()

    def check_ready(self) -> None:
        if self.error:
            raise APIError(503, f"the model failed to load: {self.error}", None, "model_load_failed")
        if not self.ready.is_set():
            raise APIError(503, "Loading model", None, "loading")

    def close(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    # -- prompts -------------------------------------------------------------------------
    def prompt_ids(self, req: GenRequest) -> list[int]:
        """The token ids a request reads (chat: roles as special tokens, then <|assistant|>)."""
        tok = self.tok
        if req.kind == "completion":
            if isinstance(req.prompt, list):
                bad = [t for t in req.prompt if not 0 <= t < tok.vocab_size]
                if bad:
                    raise bad_request(f"'prompt' token id {bad[0]} is outside [0, {tok.vocab_size})", "prompt")
                return list(req.prompt)
            return tok.encode(req.prompt) or [tok.eos_id]  # an empty prompt starts at a document boundary
        ids: list[int] = []
        for role, text in req.messages:
            ids.append(self.role_ids[role])
            known = self.sessions.reply_ids(text) if role == "assistant" else None
            ids.extend(known if known is not None else tok.encode(text))
        ids.append(self.role_ids["assistant"])
        return ids


class _Guard:
    """ASGI middleware: the API key check (every route but /health) and the request counter.
    Plain ASGI, so that the routes see the client's disconnect and streams pass untouched."""

    def __init__(self, app, srv: Server):
        self.app, self.srv = app, srv

    def _authorized(self, scope) -> bool:
        if not self.srv.api_keys or scope["path"] in PUBLIC:
            return True
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        h = headers.get("authorization", "")
        key = h[7:].strip() if h.lower().startswith("bearer ") else headers.get("x-api-key", "")
        return any(hmac.compare_digest(key.encode(), k.encode()) for k in self.srv.api_keys)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [500]
        if not self._authorized(scope):
            resp = JSONResponse(APIError(401, "Incorrect API key provided: send it as 'Authorization: Bearer KEY'",
                                         None, "invalid_api_key").body(), status_code=401)
            await resp(scope, receive, send)
            status[0] = 401
        else:
            async def counted(msg):
                if msg["type"] == "http.response.start":
                    status[0] = msg["status"]
                await send(msg)

            await self.app(scope, receive, counted)
        route = scope.get("route")
        self.srv.metrics.request(getattr(route, "path", "other"), status[0])


def _usage(info: dict) -> dict:
    p, c = info["prompt_tokens"], info["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": info["cached_tokens"]}}


async def _body(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError as e:
        raise bad_request(f"the request body is not valid JSON ({e})", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, "invalid_json")
    return body


class _Events:
    """The scheduler's events for one job, read on the event loop; notices a client that left."""

    def __init__(self, srv: Server, request: Request, req: GenRequest, prompt: list[int], stop_ids):
        loop = asyncio.get_running_loop()
        self.q: asyncio.Queue = asyncio.Queue()

        def emit(ev):
            try:
                loop.call_soon_threadsafe(self.q.put_nowait, ev)
            except RuntimeError:  # the loop is closed: nobody is listening
                pass

        self.srv, self.request = srv, request
        self.job = Job(req, prompt, stop_ids, emit)
        self._get = None
        self._checked = time.monotonic()

    async def next(self, watch: bool = True):
        """The next event; None when the client has gone (the job is cancelled then)."""
        while True:
            now = time.monotonic()
            if watch and now - self._checked > 0.25:  # events may flow without pause: look at the client too
                self._checked = now
                if await self.request.is_disconnected():
                    self.cancel()
                    return None
            if self._get is None:
                self._get = asyncio.ensure_future(self.q.get())
            done, _ = await asyncio.wait({self._get}, timeout=0.25)
            if done:
                ev, self._get = self._get.result(), None
                return ev

    def cancel(self) -> None:
        if self._get is not None:
            self._get.cancel()
            self._get = None
        self.srv.scheduler.cancel(self.job)


def create_app(model=None, *, loader: Callable[[], object] | None = None, name: str = "bitttt",
               api_keys: tuple[str, ...] | list[str] = (), parallel: int = 8, sessions_dir: str | None = None,
               budget_bytes: int = 1 << 30, max_tokens: int = 256, prefill_chunk: int = 512,
               decode: str = "auto") -> FastAPI:
    """The server's ASGI app over `model` (a bitttt.generation.Model) or, loaded in a thread at
    start-up so that /health answers 503 meanwhile, over `loader()`.  decode: auto | batched |
    serial, how the generating sessions' tokens are read each step (the scheduler's _choose)."""
    if (model is None) == (loader is None):
        raise ValueError("create_app needs a model or a loader (one of them)")
    srv = Server(loader or (lambda: model), name, tuple(api_keys), parallel, sessions_dir, budget_bytes, max_tokens,
                 prefill_chunk, decode)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        if model is not None:
            srv.load()
        else:
            threading.Thread(target=srv.load, name="bitttt-load", daemon=True).start()
        yield
        srv.close()

    app = FastAPI(title="bitttt", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = srv

    app.add_middleware(_Guard, srv=srv)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        msg = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, msg, None, "not_found" if e.status_code == 404 else None).body(),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        traceback.print_exc()
        return JSONResponse(APIError(500, f"internal error: {type(e).__name__}: {e}", None, "internal_error").body(),
                            status_code=500)

    # -- plain routes ------------------------------------------------------------------
    @app.get("/health")
    async def health():
        try:
            srv.check_ready()
        except APIError as e:
            return JSONResponse(e.body(), status_code=e.status)
        return {"status": "ok"}

    def model_card() -> dict:
        c = srv.im.config
        return {"id": srv.name, "object": "model", "created": srv.created, "owned_by": "bitttt",
                "meta": {"model_id": srv.im.model_id, "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
                         "num_layers": c.num_layers, "ternary": c.ternary, "memory_bytes": srv.state_bytes,
                         "context": "unbounded (TTT memory)"}}

    @app.get("/v1/models")
    @app.get("/models")
    async def models():
        srv.check_ready()
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name}")
    async def model_get(name: str):
        srv.check_ready()
        if name != srv.name:
            raise APIError(404, f"The model '{name}' does not exist (this server has '{srv.name}')", "model",
                           "model_not_found")
        return model_card()

    @app.get("/metrics")
    async def metrics():
        gauges = srv.scheduler.gauges() if srv.scheduler is not None else {}
        gauges["ready"] = (1 if srv.ready.is_set() else 0, "1 once the model is loaded")
        return PlainTextResponse(srv.metrics.text(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/tokenize")
    async def tokenize(request: Request):
        srv.check_ready()
        body = await _body(request)
        content = body.get("content")
        if not isinstance(content, str):
            raise bad_request("'content' must be a string", "content", "invalid_type")
        def work():
            ids = srv.tok.encode(content)
            if body.get("with_pieces"):
                return {"tokens": [{"id": i, "piece": srv.tok.token_bytes(i).decode("utf-8", "replace")} for i in ids]}
            return {"tokens": ids}

        return await asyncio.to_thread(work)

    @app.post("/detokenize")
    async def detokenize(request: Request):
        srv.check_ready()
        body = await _body(request)
        ids = body.get("tokens")
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise bad_request("'tokens' must be a list of token ids", "tokens", "invalid_type")
        v = srv.tok.vocab_size
        bad = [i for i in ids if not 0 <= i < v]
        if bad:
            raise bad_request(f"token id {bad[0]} is outside [0, {v})", "tokens")
        return {"content": await asyncio.to_thread(srv.tok.decode, ids)}

    # -- sessions ----------------------------------------------------------------------
    async def on_scheduler(fn):
        return await asyncio.wrap_future(srv.scheduler.call(fn))

    @app.get("/v1/sessions")
    async def sessions_list():
        srv.check_ready()
        data = await on_scheduler(srv.sessions.listing)
        return {"object": "list", "data": data, "budget_bytes": srv.sessions.budget,
                "directory": srv.sessions.directory}

    @app.get("/v1/sessions/{sid}")
    async def session_get(sid: str):
        srv.check_ready()
        sid = session_id_of(sid)

        def fn():
            s = srv.sessions.get(sid, load=False)
            if s is not None:
                return s.info()
            for row in srv.sessions.listing():
                if row["id"] == sid:
                    return row
            raise APIError(404, f"no session {sid}", None, "session_not_found")

        return await on_scheduler(fn)

    @app.post("/v1/sessions/{sid}")
    async def session_action(sid: str, request: Request):
        srv.check_ready()
        sid = session_id_of(sid)
        body = await _body(request)
        action = body.get("action")
        if action not in ("save", "restore", "erase", "sleep"):
            raise bad_request(f"'action' must be one of save, restore, erase, sleep; got {action!r}", "action")

        def fn():
            mgr = srv.sessions
            if mgr.busy(sid):
                raise APIError(409, f"session {sid} is generating; try again when it is done", None, "session_busy")
            if action == "erase":
                if not mgr.erase(sid):
                    raise APIError(404, f"no session {sid}", None, "session_not_found")
                return {"id": sid, "action": "erase", "erased": True}
            if action == "restore":
                s = mgr.restore(sid)
                return {"id": sid, "action": "restore", "session": s.info()}
            s = mgr.get(sid)
            if s is None:
                raise APIError(404, f"no session {sid}", None, "session_not_found")
            if action == "save":
                return {"id": sid, "action": "save", "path": mgr.write(s), "session": s.info()}
            n = _sleep(srv, s)
            out = {"id": sid, "action": "sleep", "replayed_tokens": n, "session": s.info()}
            if mgr.directory:
                out["path"] = mgr.write(s)
            return out

        return await on_scheduler(fn)

    # -- generation --------------------------------------------------------------------
    @app.post("/v1/completions")
    @app.post("/completions")
    async def completions(request: Request):
        srv.check_ready()
        req = parse_completion(await _body(request), srv.max_tokens)
        return await _generate(srv, request, req)

    @app.post("/v1/chat/completions")
    @app.post("/chat/completions")
    async def chat_completions(request: Request):
        srv.check_ready()
        body = await _body(request)
        req = parse_chat(body, srv.max_tokens)
        if req.session_id is None:
            req.session_id = session_id_of(request.headers.get("x-session-id"), "X-Session-Id")
        return await _generate(srv, request, req)

    return app


def _sleep(srv: Server, s) -> int:
    """Replay the session's conversation into its memory, as the chat's /sleep does
    (generation.Session.replay_log); the next request starts a new conversation on it."""
    from ..generation import Session

    sess = Session(srv.model, s.state)
    fd, path = tempfile.mkstemp(suffix=".jsonl", prefix="bitttt-sleep-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for role, text in s.turns:
                f.write(json.dumps({"role": "system" if role == "developer" else role, "text": text}) + "\n")
        n = sess.replay_log(path)
    finally:
        os.remove(path)
    s.logits = sess.last_logits
    s.ids, s.snapshots, s.turns = [], [], []
    return n


async def _generate(srv: Server, request: Request, req: GenRequest):
    if req.session_id is None and req.kind == "completion":
        req.session_id = session_id_of(request.headers.get("x-session-id"), "X-Session-Id")
    prompt = await asyncio.to_thread(srv.prompt_ids, req)
    ev = _Events(srv, request, req, prompt, srv.chat_stop_ids if req.kind == "chat" else frozenset())
    srv.scheduler.submit(ev.job)
    first = await ev.next()
    if first is None:
        return JSONResponse(APIError(499, "client closed the request", None, "cancelled").body(), status_code=499)
    if first[0] == "error":
        raise first[1]
    start = first[1]
    chat = req.kind == "chat"
    rid = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    headers = {"X-Session-Id": start["session_id"]}
    base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
            "model": req.model or srv.name, "system_fingerprint": "bitttt-" + srv.im.model_id[:12]}
    echo = req.prompt if (not chat and req.echo and isinstance(req.prompt, str)) else ""

    if not req.stream:
        pieces = [echo]
        while True:
            e = await ev.next()
            if e is None:
                return JSONResponse(APIError(499, "client closed the request", None, "cancelled").body(),
                                    status_code=499)
            if e[0] == "text":
                pieces.append(e[1])
            elif e[0] == "error":
                raise e[1]
            elif e[0] == "done":
                info = e[1]
                break
        text = "".join(pieces)
        choice = {"index": 0, "logprobs": None, "finish_reason": info["finish_reason"]}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            obj = "chat.completion"
        else:
            choice["text"] = text
            obj = "text_completion"
        return JSONResponse({**base, "object": obj, "choices": [choice], "usage": _usage(info),
                             "session_id": info["session_id"]}, headers=headers)

    def chunk(delta_or_text, finish=None, token=None) -> dict:
        c = {"index": 0, "logprobs": None, "finish_reason": finish}
        if token is not None and req.return_token_ids:
            c["token_ids"] = [token]
        if chat:
            c["delta"] = delta_or_text
        else:
            c["text"] = delta_or_text
        d = {**base, "choices": [c], "session_id": start["session_id"]}
        if req.include_usage:
            d["usage"] = None
        return {"data": json.dumps(d)}

    async def events():
        try:
            if chat:
                yield chunk({"role": "assistant", "content": ""})
            elif echo:
                yield chunk(echo)
            while True:
                e = await ev.next(watch=False)  # sse-starlette cancels this generator when the client leaves
                if e[0] == "text":
                    yield chunk({"content": e[1]} if chat else e[1], token=e[2])
                elif e[0] == "error":
                    yield {"data": json.dumps(e[1].body())}
                    break
                elif e[0] == "done":
                    info = e[1]
                    yield chunk({} if chat else "", info["finish_reason"])
                    if req.include_usage:
                        yield {"data": json.dumps({**base, "choices": [], "usage": _usage(info),
                                                   "session_id": info["session_id"]})}
                    break
            yield {"data": "[DONE]"}
        finally:
            if ev.job.finish_reason is None:
                ev.cancel()

    return EventSourceResponse(events(), headers=headers, ping=15)
