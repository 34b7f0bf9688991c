"""Training curves: loss, top-1 and learning rate against epoch, one or several runs overlaid.

Reads ``RUN_DIR/metrics.jsonl`` (one JSON object per epoch, keys in ``docs/DESIGN.md``). Training redraws
``curves.png`` after every epoch, so drawing must be cheap and headless (matplotlib's Agg backend); the
reader skips a line cut short (a file written by an older pitvit, which appended to it).
"""
from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from pitvit.utils.errors import ConfigError
from pitvit.utils.extras import require
from pitvit.utils.io import atomic_write

__all__ = ["read_metrics", "plot_runs"]

# (panel title, y label, [(row key, curve label, line style)])
_PANELS = (
    ("loss", "loss", [("train_loss", "train", "-"), ("val_loss", "val", "--"), ("ema_loss", "ema", ":")]),
    ("top-1", "top-1 (%)", [("val_top1", "val", "--"), ("ema_top1", "ema", ":")]),
    ("learning rate", "lr", [("lr", "lr", "-")]),
)


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` (or of the file itself, if given a file), in file order.

    Raises:
        ConfigError: no metrics file; the message names the path looked for.
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise ConfigError(f"no metrics file: {path}; give a run folder that pitvit train wrote")
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # cut short by a kill
            if isinstance(row, dict) and "epoch" in row:
                rows.append(row)
    return rows


def _label(run_dir: Path, others: Sequence[Path]) -> str:
    """The run's folder name, or more of its path when two runs share a folder name."""
    name = run_dir.name if run_dir.is_dir() else run_dir.parent.name
    if sum(1 for o in others if (o.name if o.is_dir() else o.parent.name) == name) > 1:
        return str(run_dir)
    return name or str(run_dir)


def _matplotlib_cache_outside_home() -> None:
    """matplotlib keeps its font cache in ``~/.cache/matplotlib`` (and makes ``~/.config/matplotlib``); pitvit
    writes nothing under HOME that the user did not ask for, and a read-only or unset HOME made matplotlib warn
    over several lines. Unless ``MPLCONFIGDIR`` is set, the cache goes to a private folder of this user's in the
    temporary folder, kept between runs (the font scan takes seconds)."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    folder = Path(tempfile.gettempdir()) / f"pitvit-matplotlib-{os.getuid() if hasattr(os, 'getuid') else 0}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
            folder = Path(tempfile.mkdtemp(prefix="pitvit-matplotlib-"))  # someone else's name: a fresh one
    except OSError:
        return  # matplotlib then finds a place of its own
    os.environ["MPLCONFIGDIR"] = str(folder)


def plot_runs(run_dirs: Sequence[str | os.PathLike] | str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Draw loss (train/val/ema), top-1 (val/ema) and lr against epoch as a three-panel PNG.

    Args:
        run_dirs: run folders (each with a ``metrics.jsonl``), or a single one.
        out_png: where to write the figure; its folder is created if needed.

    Returns:
        The path written.

    Raises:
        ConfigError: a run folder has no ``metrics.jsonl``.
        OutputError: ``out_png`` cannot be written.
    """
    _matplotlib_cache_outside_home()
    matplotlib = require("matplotlib", "drawing training curves")
    matplotlib.use("Agg", force=False)  # headless; keeps an interactive backend a caller chose
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    paths = [Path(d) for d in run_dirs]
    if not paths:
        raise ConfigError("plot_runs needs at least one run folder")
    runs = [(p, read_metrics(p)) for p in paths]

    # A Figure that is not registered with pyplot: no global state, nothing leaks across epochs.
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for r, (path, rows) in enumerate(runs):
        color = colors[r % len(colors)]
        run_label = _label(path, paths)
        for ax, (_, _, curves) in zip(axes, _PANELS):
            for key, curve, style in curves:
                pts = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
                if not pts:
                    continue
                xs, ys = zip(*pts)
                label = run_label if len(curves) == 1 else f"{run_label} {curve}"
                ax.plot(xs, ys, style, color=color, label=label, marker="o" if len(pts) == 1 else None)
    for ax, (title, ylabel, _) in zip(axes, _PANELS):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    out = Path(out_png)
    with atomic_write(out) as f:  # a viewer polling the file never sees half a PNG
        fig.savefig(f, dpi=100, format="png")
    return out
