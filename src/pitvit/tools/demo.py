"""The demo: train a small PiT on Fashion-MNIST on a CPU in a few minutes, then say where everything is.

Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) comes from Debian's ``dataset-fashion-mnist`` package
(``make data``); the data layer reads it from ``/usr/share/datasets/fashion-mnist`` unless ``data`` is given.
The recipe is the shipped ``demo`` recipe (``pitvit/configs/demo.yaml``), the one ``pitvit train --config
demo`` runs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pitvit.train.config import Config, load_config

__all__ = ["demo_config", "run_demo"]


def demo_config(output: str | None = None, data: str | None = None, epochs: int | None = None,
                overrides: list[str] | None = None) -> Config:
    """The demo recipe with the demo's options, always trained from scratch (``train.resume=false``).

    Args:
        output: the run folder (default: the recipe's ``runs/demo``); an earlier demo there is replaced.
        data: a folder with the Fashion-MNIST IDX files (default: the Debian package's).
        epochs: train this many epochs instead of the recipe's.
        overrides: ``key=value`` config overrides, as ``pitvit train --set``.
    """
    extra = list(overrides or []) + ["train.resume=false"]
    if output:
        extra.append(f"train.output={output}")
    if data:
        extra.append(f"data.path={data}")
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    return load_config("demo", extra)


def run_demo(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` (see :func:`demo_config`) and say what came out.

    Returns:
        ``{"top1", "seconds", "stopped", "run_dir", "checkpoint", "curves", "metrics"}``; ``top1`` is the last
        evaluation's (EMA when enabled), ``curves`` is ``None`` when matplotlib could not draw them.
    """
    from pitvit.train.runner import fit

    t0 = time.perf_counter()
    res = fit(cfg)
    seconds = time.perf_counter() - t0
    run_dir = Path(res["run_dir"])
    curves = run_dir / "curves.png"
    return {"top1": res.get("ema_top1", res.get("val_top1")), "seconds": seconds,
            "stopped": bool(res.get("stopped")), "run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"),
            "curves": str(curves) if curves.exists() else None, "metrics": str(run_dir / "metrics.csv")}
