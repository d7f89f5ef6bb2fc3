"""`python -m bitttt.studio [--projects DIR] [--host 127.0.0.1] [--port 7860] [--no-browser]`:
serve the Studio and open it in the browser."""
from __future__ import annotations

import argparse
import sys
import threading
import webbrowser


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bitttt.studio", description=__doc__.split("\n\n")[0])
    ap.add_argument("--projects", default="bitttt-projects", help="projects folder (default ./bitttt-projects)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    ap.add_argument("--no-browser", action="store_true", help="do not open the page in a browser")
    args = ap.parse_args(argv)
    try:
        import uvicorn

        from .app import create_app
    except ImportError as e:
        print(f"error: the Studio needs its extra: pip install 'bitttt[studio]' ({e})", file=sys.stderr)
        return 2
    url = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}/"
    print(f"bitttt Studio: {url} (projects in {args.projects}); Ctrl+C stops it (training runs go on)",
          file=sys.stderr)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {args.host}: anyone who can reach it can read files of this machine (Add a "
              "path) and start training; the Studio has no login", file=sys.stderr)
    if not args.no_browser:
        threading.Timer(1.0, lambda: webbrowser.open(url)).start()
    uvicorn.run(create_app(args.projects), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
