"""``fit(cfg)``: a training run conducted on one process or many (torchrun).

:func:`fit` reads top to bottom and hands each concern to its module: the objects come from
:mod:`.builders`, what a checkpoint holds and what may change on resume from :mod:`.checkpoint`, the batches
from :mod:`.engine`, the record of the run from :mod:`.metrics`. Every epoch ends with ``last.pt`` written
atomically (and ``best.pt`` when the named metric improves), so a run killed at any moment resumes from its
folder and ends with the same weights.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pitvit.utils.distributed import (DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed,
                                      requeue_slurm_job)
from pitvit.utils.errors import NonFiniteLossError, OutputError, TrainingError
from pitvit.utils.io import make_dir, remove_stale_temps, save_torch, write_with
from pitvit.utils.logs import Progress, setup_logging, start_log_file
from pitvit.utils.precision import precision_name
from pitvit.utils.provenance import provenance

from .builders import Data, Training, build_data, build_model, build_train_step, build_training, head_width
from .checkpoint import check_resume, load_resume, make_checkpoint, restore_training
from .config import Config, resolve_best_metric
from .engine import TrainStep, evaluate, train_one_epoch
from .guards import StopFlag, lock_run_folder
from .metrics import MetricsLog
from .recipes import save_config

__all__ = ["fit", "run_dir_of"]

log = logging.getLogger("pitvit.train")


# ---------------------------------------------------------------------------- the run folder
def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.train.output or os.path.join("runs", cfg.name or cfg.model.name))


# ---------------------------------------------------------------------------- the loop
def _set_epoch(loader: Any, epoch: int) -> None:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
        return
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
            return


def _skipped(loader: Any) -> int:
    s = getattr(loader, "skipped", 0)
    if isinstance(s, dict):
        s = sum(s.values())
    return int(s or 0)


def _improved(name: str, value: float, best: dict[str, Any]) -> bool:
    if best.get("value") is None:
        return True
    return value < best["value"] if name.endswith("loss") else value > best["value"]


@dataclass
class _Run:
    """One run's objects, built by :func:`_prepare`; ``best`` and ``metrics`` change as it goes."""

    cfg: Config
    info: DistInfo
    run_dir: Path
    data: Data
    t: Training
    train_step: TrainStep
    best: dict[str, Any]
    bar: bool
    locked: bool  # the run folder existed and was locked before anything was read from it
    provenance: dict[str, Any] | None = None  # where the run comes from, recorded in config.yaml and checkpoints
    last_row: dict[str, Any] | None = None  # the last finished epoch's metrics, recorded in checkpoints
    metrics: MetricsLog | None = None
    last_good: str = "none (no epoch has finished)"  # names the last checkpoint with finite weights and val loss


def _prepare(cfg: Config, require_resume: bool, datasets: Any,
             locks: contextlib.ExitStack) -> tuple[_Run, dict[str, Any] | None]:
    info = init_distributed(cfg.train.device)
    run_dir = run_dir_of(cfg)
    exists = info.is_main and run_dir.is_dir()  # rank 0's folder decides (other nodes may not share it)
    if info.distributed:
        exists = all_reduce_sum([1.0 if exists else 0.0], info.device)[0] > 0
    if exists:  # before reading its last.pt, which another run may be writing; a new folder waits for _start
        lock_run_folder(run_dir, info, locks)
    setup_logging(info.rank, str(run_dir / "log.txt"), hold=True)  # the folder is made once the run starts
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed only
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt = load_resume(cfg, run_dir, require_resume)
    data = build_data(cfg, info, datasets)
    model = build_model(cfg, head_width(cfg, data.classes), info.device, data.input_size)
    steps = len(data.train)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    t = build_training(cfg, model, steps, info)
    best = {"name": resolve_best_metric(cfg, has_val=data.val is not None), "value": None, "epoch": None}
    bar = cfg.log.progress_bar == "on" or (cfg.log.progress_bar == "auto" and os.isatty(2))
    run = _Run(cfg, info, run_dir, data, t, build_train_step(cfg, t, data, info), best, bar, exists,
               provenance=provenance(info.device, info.world_size))
    return run, ckpt


def _restore(run: _Run, ckpt: dict[str, Any] | None) -> tuple[int, int, dict[str, float] | None]:
    """Load the checkpoint into the run; returns where to go on: epoch, batch and the epoch's running sums."""
    if ckpt is None:
        return 0, 0, None
    epoch = int(ckpt["epoch"])
    step = check_resume(ckpt, run.cfg, run.run_dir, run.t, run.data)  # in this run's batches
    restore_training(ckpt, run.t)
    if _finite_weights(run.t):
        run.last_good = f"{run.run_dir / 'last.pt'} (epoch {epoch}" + (f", batch {step})" if step else ")")
    run.last_row = ckpt.get("metrics")
    saved = ckpt.get("best_metric") or {}
    if saved.get("name") == run.best["name"]:
        run.best = dict(saved)
    elif saved.get("name"):  # the config now names another metric: best.pt follows it from here on
        log.warning("train.best_metric is now %s (was %s): best.pt is chosen by it from this epoch on",
                    run.best["name"], saved["name"])
    log.info("resuming %s at epoch %d%s", run.run_dir / "last.pt", epoch + 1, f", batch {step + 1}" if step else "")
    return epoch, step, ckpt.get("partial_epoch")


def _start(run: _Run, start_epoch: int, locks: contextlib.ExitStack, resumed: bool) -> None:
    """Make the run folder and write its configuration: only now, with every check passed, does the run write
    anything (a run that cannot start leaves no folder, and an existing folder as it was)."""
    if run.info.is_main:
        make_dir(run.run_dir)
    if not run.locked:  # the folder is new: lock it now
        lock_run_folder(run.run_dir, run.info, locks)
        last = run.run_dir / "last.pt"
        if run.info.is_main and not resumed and run.cfg.train.resume and last.exists():
            raise TrainingError(f"another run wrote {last} while this one was starting (both were started into "
                                f"{run.run_dir} at once); run the same command again to continue that run, or "
                                f"choose another folder (--output)")
    if run.info.is_main:
        remove_stale_temps(run.run_dir)  # checkpoints half-written by a killed run
        save_config(run.cfg, run.run_dir / "config.yaml", provenance=run.provenance)
        start_log_file()
        run.metrics = MetricsLog(run.run_dir, run.cfg.log.tensorboard, run.cfg.log.plot)
        run.metrics.truncate(start_epoch)  # rows past the checkpoint (or all rows of an older run) go
    barrier()


def _finite_weights(t: Training) -> bool:
    models = [t.model] + ([t.ema.module] if t.ema is not None else [])
    return all(bool(torch.isfinite(v).all()) for m in models for v in m.state_dict().values()
               if v.is_floating_point())


def _require_finite_weights(run: _Run, epoch: int) -> None:
    """Stop before a checkpoint of non-finite weights replaces the last good ``last.pt``."""
    if not _finite_weights(run.t):
        raise TrainingError(f"the weights became non-finite in epoch {epoch + 1} (its losses were finite): "
                            f"stopping without saving it; the last good checkpoint is {run.last_good}. {_REMEDY}")


def _save(run: _Run, *, epoch: int, step: int, is_best: bool = False,
          partial: dict[str, float] | None = None) -> None:
    """Write ``last.pt`` (and ``best.pt``); a full disk stops the run with the checkpoints on disk intact."""
    if run.info.is_main:
        last = run.run_dir / "last.pt"
        try:
            save_torch(make_checkpoint(run.cfg, run.t, run.data, epoch=epoch, step=step, best=run.best,
                                       partial=partial, metrics=run.last_row, provenance=run.provenance), last)
            if is_best:
                write_with(run.run_dir / "best.pt", lambda tmp: shutil.copyfile(last, tmp))
        except OutputError as e:
            raise OutputError(e.errno, f"{e.strerror}; training stopped, the checkpoints already in {run.run_dir} "
                                       f"are intact (the last good one: {run.last_good}): make room and run the "
                                       f"same command to resume") from None
    barrier()


def _train_epoch(run: _Run, epoch: int, *, start_step: int, partial: dict[str, float] | None,
                 stop: StopFlag) -> dict[str, Any]:
    """One epoch through the engine; a non-finite loss becomes a :class:`TrainingError` that says what is kept."""
    cfg, t = run.cfg, run.t
    _set_epoch(run.data.train, epoch)
    if not t.schedule.per_step:
        t.schedule.set(epoch)
    progress = Progress(t.steps_per_epoch, f"epoch {epoch + 1}", interval=cfg.log.interval, bar=run.bar,
                        enabled=run.info.is_main, device=run.info.device, logger=log)
    try:
        return train_one_epoch(run.train_step, run.data.train, epoch=epoch, seed=cfg.train.seed, schedule=t.schedule,
                               start_step=start_step, partial=partial, max_steps=cfg.train.max_steps_per_epoch,
                               progress=progress, should_stop=stop)
    except NonFiniteLossError as e:
        raise TrainingError(f"{e}: stopping; the last good checkpoint is {run.last_good}. {_REMEDY}") from e


_REMEDY = "Lower optim.lr, set optim.clip_grad, or try train.amp=fp32."


def _evaluate_all(run: _Run) -> dict[str, float]:
    """Validation loss, top-1 and top-5 of the raw weights, and of the EMA's when there is one."""
    row: dict[str, float] = {}
    if run.data.val is None:
        return row
    models = [("val", run.t.model)] + ([("ema", run.t.ema.module)] if run.t.ema is not None else [])
    for prefix, model in models:
        res = evaluate(model, run.data.val, device=run.info.device, amp_dtype=run.t.amp_dtype,
                       max_steps=run.cfg.train.max_steps_per_epoch)
        row.update({f"{prefix}_loss": res["loss"], f"{prefix}_top1": res["top1"], f"{prefix}_top5": res["top5"]})
    return row


def _end_epoch(run: _Run, epoch: int, total: int, stats: dict[str, Any], t0: float) -> dict[str, Any]:
    """Evaluate when due, record the epoch's row, keep the best, and save ``last.pt`` (and ``best.pt``)."""
    info = run.info
    row = {"epoch": epoch + 1, "lr": stats["lr"], "train_img_s": stats["img_s"],
           "train_loss": all_reduce_sum([stats["loss"]], info.device)[0] / info.world_size}
    if (epoch + 1) % run.cfg.train.eval_every == 0 or epoch + 1 == total:
        row.update(_evaluate_all(run))
    row["skipped_images"] = int(all_reduce_sum([_skipped(run.data.train)], info.device)[0])
    row["epoch_time_s"] = time.perf_counter() - t0
    _require_finite_weights(run, epoch)
    good = all(math.isfinite(row[k]) for k in ("val_loss", "ema_loss") if k in row)
    name = run.best["name"]
    is_best = good and name in row and _improved(name, row[name], run.best)
    if is_best:
        run.best = {"name": name, "value": row[name], "epoch": epoch + 1}
    _log_epoch(row, run.best)
    if run.metrics is not None:
        run.metrics.append(row)
    run.last_row = row
    _save(run, epoch=epoch + 1, step=0, is_best=is_best)
    if good:
        run.last_good = f"{run.run_dir / 'last.pt'} (epoch {epoch + 1})"
    else:
        log.warning("epoch %d: the validation loss is not finite; its checkpoint is not a good one (nor best.pt)",
                    epoch + 1)
        kept = run.best.get("epoch") is not None and (run.run_dir / "best.pt").exists()
        run.last_good = f"{run.run_dir / 'best.pt'} (epoch {run.best['epoch']})" if kept else "none"
    return row


def _run_epochs(run: _Run, start_epoch: int, start_step: int, partial: dict[str, float] | None) -> dict[str, Any]:
    """Epochs ``start_epoch ..`` (the first from batch ``start_step``) until the end or a SIGTERM."""
    cfg, t, info, total = run.cfg, run.t, run.info, run.t.schedule.total_epochs
    log.info("%s: %s, %d classes, %d processes, global batch %d, lr %.3e, %d epochs, %d steps/epoch -> %s",
             cfg.name or cfg.model.name, cfg.model.name, t.model.num_classes, info.world_size, t.global_batch,
             t.schedule.base_lr, total, t.steps_per_epoch, run.run_dir)
    stop = StopFlag(info)
    stop.install()
    row: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, total):
            t0 = time.perf_counter()
            stats = _train_epoch(run, epoch, start_step=start_step, partial=partial, stop=stop)
            start_step, partial = 0, None
            if stats["stopped"]:
                _require_finite_weights(run, epoch)
                _save(run, epoch=epoch, step=stats["next_step"], partial=stats["partial"])
                log.info("stopped by %s at epoch %d, batch %d: saved %s; run the same command to resume",
                         stop.name if stop.flag else "another process's signal", epoch + 1, stats["next_step"],
                         run.run_dir / "last.pt")
                barrier()  # the checkpoint is complete before anyone asks for a requeue
                if cfg.train.requeue and info.is_main:
                    requeue_slurm_job()
                return {**row, "stopped": True}
            row = _end_epoch(run, epoch, total, stats, t0)
    finally:
        stop.uninstall()
        if run.metrics is not None:
            run.metrics.close()
    return {**row, "stopped": False}


def fit(cfg: Config, *, require_resume: bool = False, datasets: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says, in ``run_dir_of(cfg)``; resume from ``last.pt`` there when present.

    Args:
        cfg: the resolved configuration.
        require_resume: fail when there is no ``last.pt`` to resume from (``--resume``).
        datasets: ``(train, val)`` datasets instead of ``data.path`` (tests, notebooks).

    Returns:
        The last metrics row plus ``run_dir``, ``best``, ``stopped`` and ``precision`` (``fp32``, ``bf16`` or
        ``fp16``: what ``train.amp`` resolved to).

    Raises:
        TrainingError: the loss or the weights became non-finite (the last good checkpoint is kept), nothing
            to resume, or the run folder holds a run this configuration cannot continue (nothing is written).
        CheckpointError: the run folder's ``last.pt`` is damaged or unsafe.
        OutputError: the run folder or a checkpoint cannot be written (the checkpoints on disk are intact).
    """
    locks = contextlib.ExitStack()
    try:
        run, ckpt = _prepare(cfg, require_resume, datasets, locks)
        start_epoch, start_step, partial = _restore(run, ckpt)
        if start_epoch >= run.t.schedule.total_epochs and not start_step:
            log.info("%s already holds all %d epochs; nothing to do (raise train.epochs to continue)",
                     run.run_dir / "last.pt", run.t.schedule.total_epochs)
            return {"epoch": start_epoch, "run_dir": str(run.run_dir), "best": run.best, "stopped": False,
                    "done_before": True}
        _start(run, start_epoch, locks, resumed=ckpt is not None)
        result = _run_epochs(run, start_epoch, start_step, partial)
    finally:
        locks.close()
        cleanup_distributed()
    return {**result, "run_dir": str(run.run_dir), "best": run.best, "precision": precision_name(run.t.amp_dtype)}


def _log_epoch(row: dict[str, Any], best: dict[str, Any]) -> None:
    parts = [f"epoch {row['epoch']}", f"train_loss {row['train_loss']:.4f}"]
    for k in ("val_top1", "ema_top1"):
        if k in row:
            parts.append(f"{k} {row[k]:.2f}")
    parts.append(f"{row['epoch_time_s']:.0f}s, {row['train_img_s']:.0f} img/s")
    if row.get("skipped_images"):
        parts.append(f"{row['skipped_images']} corrupt images skipped")
    if best.get("value") is not None:
        parts.append(f"best {best['name']} {best['value']:.2f} (epoch {best['epoch']})")
    log.info(" | ".join(parts))
