"""The loss-by-position curve as a PNG (matplotlib, the optional extra `plot`: pip install -e ".[plot]").

x: position in the text + 1 (tokens read when the token is predicted), log scale; y: nats/token.
Each read (continuous, reset every N) is drawn as its smoothed curve (bitttt.positions curve bins)
and its bucket means (a horizontal segment across each bucket).
"""
from __future__ import annotations

import io
import os

from .fileio import atomic_write_bytes

COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red")
MISSING = "--plot needs matplotlib, which is not installed: pip install 'bitttt[plot]' (or pip install matplotlib)"


def require_matplotlib() -> None:
    """ValueError with the install command when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
    except ImportError:
        raise ValueError(MISSING) from None


def check_plot_path(path: str) -> None:
    """ValueError unless `path` names a .png file in an existing folder (checked before any work)."""
    if not path.lower().endswith(".png"):
        raise ValueError(f"--plot {path}: the plot is a PNG; give a file name ending in .png")
    if os.path.isdir(path):
        raise ValueError(f"--plot {path}: a folder; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--plot {path}: no such folder {folder}")


def plot_positions(runs: dict[str, dict], path: str, title: str = "") -> None:
    """Write the PNG of `runs` ({name: loss_by_position result}) to `path` (atomically)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for color, (name, r) in zip(COLORS, runs.items()):
        if r["curve"]:
            x = [c[0] + 1 for c in r["curve"]]
            ax.plot(x, [c[1] for c in r["curve"]], color=color, lw=1, alpha=0.6, label=f"{name} (smoothed)")
        for i, b in enumerate(r["buckets"]):
            ax.hlines(b["loss"], b["start"] + 1, b["end"] + 1, colors=color, lw=2.5,
                      label=f"{name}: bucket means, whole {r['loss']:.3f}" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("position in the text + 1 (tokens read), log scale")
    ax.set_ylabel("next-token loss (nats/token)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
