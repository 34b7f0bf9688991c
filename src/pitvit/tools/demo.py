"""The demo: train a small PiT on Fashion-MNIST on a CPU in a few minutes, then say where everything is.

Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) comes from Debian's ``dataset-fashion-mnist`` package
(``make data``); the data layer reads it from ``/usr/share/datasets/fashion-mnist`` unless ``data`` is given.
The recipe is the shipped ``demo`` recipe (``pitvit/configs/demo.yaml``), the one ``pitvit train --config
demo`` runs: it selects ``best.pt`` on images held out of the training split, and the demo then evaluates
that checkpoint on the test split once.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pitvit.train.config import Config
from pitvit.train.recipes import load_config

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
    """Train ``cfg`` (see :func:`demo_config`), then evaluate the checkpoint it names on the test split, once.

    The model is selected on ``data.holdout`` images held out of the training split (best validation top-1:
    ``best.pt``); the 10,000 test images are read only after training, for ``best.pt``, by
    :func:`pitvit.tools.evaluate.evaluate_model` with the settings ``pitvit eval`` uses by default, so the
    printed figure is what ``pitvit eval --weights best.pt --data-format fashion_mnist --split test`` reports.

    Returns:
        ``{"top1", "val_top1", "best_epoch", "epochs", "seconds", "stopped", "run_dir", "checkpoint",
        "curves", "metrics", "precision"}``: ``top1`` is the test top-1 of ``best.pt`` (``None`` when the run
        stopped early), ``val_top1`` its validation top-1, ``seconds`` the training time (with the per-epoch
        validation), ``precision`` what ``train.amp`` resolved to, ``curves`` ``None`` when matplotlib could
        not draw them.
    """
    from pitvit.tools.evaluate import evaluate_model
    from pitvit.train.runner import fit

    t0 = time.perf_counter()
    res = fit(cfg)
    seconds = time.perf_counter() - t0
    run_dir = Path(res["run_dir"])
    checkpoint = run_dir / "best.pt"
    curves = run_dir / "curves.png"
    out = {"top1": None, "val_top1": res["best"].get("value"), "best_epoch": res["best"].get("epoch"),
           "epochs": cfg.train.epochs, "seconds": seconds, "stopped": bool(res.get("stopped")),
           "run_dir": str(run_dir), "checkpoint": str(checkpoint), "precision": res.get("precision"),
           "curves": str(curves) if curves.exists() else None, "metrics": str(run_dir / "metrics.csv")}
    if not out["stopped"]:
        # evaluate_model's defaults (fp32, batch 64) are the ones `pitvit eval` runs with: the figure is eval's
        test = evaluate_model(None, checkpoint, cfg.data.path or None, split="test", kind="fashion_mnist",
                              workers=0, device=cfg.train.device)
        out["top1"] = test["top1"]
    return out
