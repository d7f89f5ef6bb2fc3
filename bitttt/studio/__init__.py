"""bitttt Studio: the training GUI in the browser (`python -m bitttt.studio`, `pip install bitttt[studio]`).

    from bitttt.studio import create_app       # FastAPI app: the page at /, the API at /api
    app = create_app("bitttt-projects")

Modules: `projects` (project folders and the names the page may use), `texts` (raw text files),
`tokenizers`, `datasets` (prepared token folders), `presets` (the Train form), `runs` (training
subprocesses, the queue, the trial-step estimate; `trial` is that step's process), `chat` (chat
sessions, memory files, samples, evaluation), `jobs` (background jobs), `api` (the APIRouter),
`app` (create_app, mount), `static/` (the page: plain HTML, CSS and JavaScript).
"""
from __future__ import annotations


def create_app(projects_dir: str = "bitttt-projects"):
    """The Studio's FastAPI app (needs the `studio` extra: fastapi, uvicorn, sse-starlette)."""
    from .app import create_app as _create

    return _create(projects_dir)


__all__ = ["create_app"]
