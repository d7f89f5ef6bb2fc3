"""Serve a model over the OpenAI API: `python -m bitttt.serve [-m MODEL] [--host H] [--port P] [options]`.

MODEL is a packed model file, a run directory or a checkpoint (default: the shipped model).
Each conversation keeps its TTT memory: name it with `session_id` in the request body (the
`openai` client: extra_body={"session_id": "alice"}) or an X-Session-Id header, or let the
server match the message history against its live sessions.

    python -m bitttt.serve -m runs/stories --port 8080 --parallel 8 --sessions sessions/
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 64}'
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys


def _args(argv):
    ap = argparse.ArgumentParser(prog="python -m bitttt.serve", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("-m", "--model", default=None,
                    help="model file, run directory or checkpoint (default: the shipped model)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    ap.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    keys = ap.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health")
    keys.add_argument("--api-key-file", default=None, help="read the accepted keys from a file, one per line")
    ap.add_argument("--parallel", "-np", type=int, default=8,
                    help="requests generating at once, decoded in one batched step (default 8)")
    ap.add_argument("--decode", choices=["auto", "batched", "serial"], default="auto",
                    help="sessions generating together: one batched pass (batched), one fused step each (serial), "
                         "or whichever is faster here (auto, the default)")
    ap.add_argument("--sessions", default=None, metavar="DIR",
                    help="folder where sessions leaving RAM are kept as memory files (and `save` writes)")
    ap.add_argument("--memory-budget", type=float, default=1024, metavar="MIB",
                    help="RAM for live session memories and their snapshots, in MiB (default 1024)")
    ap.add_argument("-n", "--max-tokens", type=int, default=256,
                    help="tokens per answer when the request sets no max_tokens (default 256)")
    ap.add_argument("--alias", default=None, help="the model's name in /v1/models (default: the file name)")
    ap.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return ap.parse_args(argv)


def _keys(a) -> tuple[str, ...]:
    if a.api_key is not None:
        if not a.api_key.strip():
            raise ValueError("--api-key is empty")
        return (a.api_key.strip(),)
    if a.api_key_file is not None:
        try:
            with open(a.api_key_file, encoding="utf-8") as f:
                keys = tuple(line.strip() for line in f if line.strip() and not line.startswith("#"))
        except OSError as e:
            raise ValueError(f"--api-key-file {a.api_key_file}: {e.strerror}") from None
        if not keys:
            raise ValueError(f"--api-key-file {a.api_key_file} holds no key (one per line)")
        return keys
    return ()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    try:
        import fastapi  # noqa: F401
        import sse_starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        print(f"error: the server needs the serve extra ({e.name} is missing): pip install \"bitttt[serve]\"",
              file=sys.stderr)
        return 2
    from .. import runtime
    from ..infer import SHIPPED_MODEL

    try:
        if not 0 < a.port < 65536:
            raise ValueError(f"--port must be in 1..65535, got {a.port}")
        if a.parallel < 1:
            raise ValueError(f"--parallel must be >= 1, got {a.parallel}")
        if a.max_tokens < 1:
            raise ValueError(f"--max-tokens must be >= 1, got {a.max_tokens}")
        if not a.memory_budget > 0:
            raise ValueError(f"--memory-budget must be > 0 MiB, got {a.memory_budget}")
        if a.threads is not None:
            if a.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {a.threads}")
            runtime.set_num_threads(a.threads)
        keys = _keys(a)
        model_path = a.model or SHIPPED_MODEL
        if not os.path.exists(model_path):
            raise ValueError(f"{model_path}: no such model file or run directory")
        if a.sessions is not None and os.path.exists(a.sessions) and not os.path.isdir(a.sessions):
            raise ValueError(f"--sessions {a.sessions} is a file, not a folder")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.device == "cuda":
        print("warning: the CUDA backend is not available in this build; serving on the CPU", file=sys.stderr)
    if not keys and not _loopback(a.host):
        print(f"warning: listening on {a.host} without an API key: anyone who can reach this address can use the "
              "model and read its sessions (pass --api-key KEY or --api-key-file FILE)", file=sys.stderr)
    import uvicorn

    from ..generation import load
    from .app import create_app

    name = a.alias or os.path.splitext(os.path.basename(os.path.normpath(model_path)))[0]
    app = create_app(loader=lambda: load(model_path), name=name, api_keys=keys, parallel=a.parallel,
                     sessions_dir=a.sessions, budget_bytes=int(a.memory_budget * (1 << 20)), max_tokens=a.max_tokens,
                     decode=a.decode)
    print(f"bitttt.serve: {name} on http://{a.host}:{a.port}/v1 ({a.parallel} slots"
          f"{', sessions in ' + a.sessions if a.sessions else ''})", file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level=a.log_level,
                                           timeout_graceful_shutdown=5))
    srv = app.state.server
    srv.on_fail = lambda: setattr(server, "should_exit", True)
    server.run()
    if srv.error:
        print(f"error: {srv.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
