"""The demo: train a small PiT on Fashion-MNIST on a CPU in a few minutes, then say where everything is.

Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) comes from Debian's ``dataset-fashion-mnist`` package
(``make data``); the data layer reads it from ``/usr/share/datasets/fashion-mnist`` unless ``data`` is given.
The recipe is :data:`DEMO_RECIPE`; ``configs/demo.yaml`` holds the same values for ``pitvit train``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

__all__ = ["DEMO_RECIPE", "run_demo"]

# The recipe (configs/demo.yaml mirrors it; a test keeps the two equal).
DEMO_RECIPE: dict[str, Any] = {
    "name": "demo",
    "model": {"name": "pit_nano", "drop_path": 0.0},
    "data": {"kind": "fashion_mnist", "val_split": "test", "batch_size": 128, "num_workers": 1},
    "aug": {"preset": "none", "mixup": 0.0, "cutmix": 0.0, "smoothing": 0.1},
    "optim": {"name": "adamw", "lr": 2e-3, "lr_base_batch": 0, "weight_decay": 0.05},
    "sched": {"warmup_epochs": 0.5, "warmup_lr": 1e-4, "min_lr": 1e-5, "stepping": "step"},
    "train": {"epochs": 6, "amp": "none", "threads": 1, "output": "runs/demo",
              "best_metric": "val_top1"},
    "ema": {"enabled": False},
    "log": {"interval": 100},
}


def run_demo(output: str | None = None, data: str | None = None, epochs: int | None = None,
             overrides: list[str] | None = None) -> dict[str, Any]:
    """Train the demo recipe from scratch and print the test top-1, the time and the run's files.

    Args:
        output: the run folder (default ``runs/demo``); an earlier demo there is replaced.
        data: a folder with the Fashion-MNIST IDX files (default: the Debian package's).
        epochs: train this many epochs instead of the recipe's.
        overrides: ``key=value`` config overrides, as ``pitvit train --set``.

    Returns:
        ``{"top1", "seconds", "run_dir", "checkpoint", "curves"}``.
    """
    from pitvit.train.config import apply_overrides, config_from_dict
    from pitvit.train.runner import fit

    cfg = config_from_dict(DEMO_RECIPE)
    extra = list(overrides or []) + ["train.resume=false"]
    if output:
        extra.append(f"train.output={output}")
    if data:
        extra.append(f"data.path={data}")
    if epochs is not None:
        extra.append(f"train.epochs={epochs}")
    cfg = apply_overrides(cfg, extra)
    import torch

    gpu = cfg.train.device == "cuda" or (cfg.train.device == "auto" and torch.cuda.is_available())
    print(f"pitvit demo: training {cfg.model.name} on Fashion-MNIST for {cfg.train.epochs} epoch(s) on the "
          f"{'GPU' if gpu else 'CPU'} (6-9 minutes on 2 CPU cores); progress goes to stderr", flush=True)
    t0 = time.perf_counter()
    res = fit(cfg)
    seconds = time.perf_counter() - t0
    run_dir = Path(res["run_dir"])
    top1 = res.get("ema_top1", res.get("val_top1"))
    curves = run_dir / "curves.png"
    out = {"top1": top1, "seconds": seconds, "run_dir": str(run_dir), "checkpoint": str(run_dir / "best.pt"),
           "curves": str(curves) if curves.exists() else None}
    if res.get("stopped"):
        print(f"stopped early; rerun `pitvit train --config configs/demo.yaml --output {run_dir}` to finish")
        return out
    print()
    print(f"  test top-1   {top1:.2f}%  (Fashion-MNIST test set, 10,000 images)")
    print(f"  time         {seconds / 60:.1f} min ({seconds:.0f} s)")
    print(f"  run folder   {run_dir}")
    print(f"  checkpoint   {run_dir / 'best.pt'}  (and last.pt)")
    print(f"  curves       {curves if curves.exists() else '(matplotlib missing: not drawn)'}")
    print(f"  metrics      {run_dir / 'metrics.csv'}")
    print(f"  evaluate it  pitvit eval --weights {run_dir / 'best.pt'} --kind fashion_mnist --split test")
    return out
