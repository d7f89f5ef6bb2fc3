"""`python -m bitttt.serve`: an OpenAI-compatible HTTP server whose conversations keep their TTT memory.

    app.py        FastAPI routes (OpenAI's endpoints and error shape, /tokenize, /metrics, /v1/sessions)
    schemas.py    request fields checked into a GenRequest
    sessions.py   live sessions, per-turn snapshots, the LRU byte budget, memory files
    scheduler.py  the one thread that runs the model: batched decode steps over every session
    metrics.py    Prometheus text
    __main__.py   the command line

Needs the `serve` extra: pip install "bitttt[serve]" (fastapi, uvicorn, sse-starlette).
"""
from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    """See bitttt.serve.app.create_app (imported on use: FastAPI is an optional extra)."""
    from .app import create_app as _create

    return _create(*args, **kwargs)
