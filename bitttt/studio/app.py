"""The Studio as an ASGI app: `create_app(projects_dir)` (the page at /, the API at /api), or
`mount(app, projects_dir, prefix)` to add it to another FastAPI app (e.g. bitttt.serve's)."""
from __future__ import annotations

import contextlib
import os

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from .api import Studio, build_router

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")


def mount(app: FastAPI, projects_dir: str | os.PathLike, prefix: str = "/studio") -> Studio:
    """Add the Studio's API (`prefix`/api) and page (`prefix`/) to `app`; returns its state (call
    .open() at startup and .close() at shutdown)."""
    studio = Studio(projects_dir)
    prefix = prefix.rstrip("/")
    app.include_router(build_router(studio), prefix=prefix + "/api")
    app.mount(prefix + "/", StaticFiles(directory=STATIC, html=True), name="studio")
    return studio


def create_app(projects_dir: str | os.PathLike = "bitttt-projects") -> FastAPI:
    """The Studio on its own: the page at /, the API at /api; projects in `projects_dir`."""
    holder: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        holder["studio"].open()
        try:
            yield
        finally:
            holder["studio"].close()

    app = FastAPI(title="bitttt Studio", lifespan=lifespan)
    holder["studio"] = mount(app, projects_dir, prefix="")
    app.state.studio = holder["studio"]
    return app
