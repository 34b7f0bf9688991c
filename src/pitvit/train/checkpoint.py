"""Training checkpoints: what one holds (:func:`make_checkpoint`), how it is read (:func:`read_run_checkpoint`,
:func:`load_resume`), put back into a run (:func:`restore_training`), and what may change on resume
(:func:`check_resume`). Checkpoints are plain data (tensors, numbers, strings, lists, dicts), written
atomically by :func:`pitvit.utils.io.save_torch`.

A checkpoint loads with ``torch.load(path, weights_only=True)``: random-number states are stored as tensors and
lists, never as numpy objects or custom classes. The layout is the one in ``docs/DESIGN.md``.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pitvit.utils.errors import CheckpointError, TrainingError, preview_list

from .builders import Data, Training
from .config import Config, config_to_dict, renamed_keys

__all__ = ["make_checkpoint", "read_run_checkpoint", "load_resume", "restore_training", "check_resume",
           "capture_rng", "restore_rng", "run_differences", "order_changes", "config_changes"]

log = logging.getLogger("pitvit.train")


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain data."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [str(np_name), torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    if "python" in state:
        version, s, gauss = state["python"]
        random.setstate((version, tuple(s), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pitvit training checkpoint, read on the CPU by the one safe reader (``pitvit.models.read_checkpoint``:
    no code runs, content hashes are checked).

    Raises:
        MissingPathError: nothing at ``path`` (a ConfigError and a FileNotFoundError).
        CheckpointError: unreadable, unsafe, damaged, or not a pitvit training checkpoint (the message names
            the file).
    """
    from pitvit.models import read_checkpoint

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != "pitvit":
        raise CheckpointError(f"{path}: not a pitvit training checkpoint (it has no 'format': 'pitvit' entry)")
    return ckpt


def run_differences(ckpt: dict[str, Any], model: torch.nn.Module, class_names: list[str],
                    input_size: int) -> list[str]:
    """What makes ``ckpt`` another run's checkpoint than the run these objects would train: another model, other
    classes, another input size, or weights of other names or shapes. Empty when it can be continued."""
    out = []
    name = getattr(model, "model_name", "")
    if ckpt.get("model_name") != name:
        out.append(f"model {ckpt.get('model_name')!r}, this run {name!r}")
    saved = [str(c) for c in ckpt.get("class_names") or []]
    if saved and saved != [str(c) for c in class_names]:
        out.append(f"{len(saved)} classes ({preview_list(saved, 4)}), this run {len(class_names)} "
                   f"({preview_list([str(c) for c in class_names], 4)})")
    size = ((ckpt.get("pretrained_cfg") or {}).get("input_size") or [None])[-1]
    if size is not None and size != input_size:
        out.append(f"{size} px inputs, this run {input_size} px")
    if not out:  # the same model, classes and size: an architecture change (model.arch) shows in the shapes
        from pitvit.models import describe_differences

        out += describe_differences(ckpt.get("state_dict") or {}, model.state_dict(), n=4, owner="this run")
    return out


_ORDER_KEYS = {"global_batch_size": "global batch", "num_samples": "training images", "seed": "seed",
               "num_repeats": "repeated augmentation", "shuffle": "shuffling",
               "shard_window": "shard-wise shuffling window"}


def order_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the sampler states of a checkpoint and of this run differ in what sets an epoch's batches
    (``EpochBatchSampler.state_dict``): ``["global batch 16 -> 8"]``."""
    return [f"{what} {saved[k]} -> {now[k]}" for k, what in _ORDER_KEYS.items()
            if k in saved and k in now and saved[k] != now[k]]


def _sampler_state(loader: Any, epoch: int, step: int, seed: int) -> dict[str, Any]:
    state: dict[str, Any] = {"epoch": epoch, "step": step, "seed": seed}
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "state_dict"):
        state["sampler"] = sampler.state_dict()
        state["processes"] = int(getattr(sampler, "world_size", 1))
        state["batch_size"] = int(getattr(sampler, "batch_size", 0))
    return state


def _scale_changes(ckpt: dict[str, Any], cfg: Config, data: Data) -> tuple[list[str], int, int]:
    """What changed in how the global batch is split (processes, per-process batch, accumulation, workers), and
    the global batches (images per optimizer step) before and now."""
    old_cfg = ckpt.get("config", {})
    state = ckpt.get("sampler") or {}
    sampler = getattr(data.train, "sampler", None)
    old_batch = state.get("batch_size") or old_cfg.get("data", {}).get("batch_size", cfg.data.batch_size)
    old_accum = old_cfg.get("optim", {}).get("accum_steps", cfg.optim.accum_steps)
    old_loader_batch = (state.get("sampler") or {}).get("global_batch_size", old_batch)
    old_procs = state.get("processes", max(old_loader_batch // max(old_batch, 1), 1))
    procs = int(getattr(sampler, "world_size", 1))
    old_workers = old_cfg.get("data", {}).get("num_workers", cfg.data.num_workers)
    pairs = [("processes", old_procs, procs), ("per-process batch", old_batch, cfg.data.batch_size),
             ("accumulation steps", old_accum, cfg.optim.accum_steps),
             ("loader workers", old_workers, cfg.data.num_workers)]
    changes = [f"{what} {a} -> {b}" for what, a, b in pairs if a != b]
    return changes, old_loader_batch * old_accum, procs * cfg.data.batch_size * cfg.optim.accum_steps


def make_checkpoint(cfg: Config, t: Training, data: Data, *, epoch: int, step: int, best: dict[str, Any],
                    partial: dict[str, float] | None = None, metrics: dict[str, Any] | None = None,
                    provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plain-data checkpoint (``docs/DESIGN.md``): ``epoch`` epochs are done, plus ``step`` batches of the
    next one; ``metrics`` is the last finished epoch's row, ``provenance`` where the run comes from
    (:func:`pitvit.utils.provenance.provenance`). It carries the SHA-256 of its weights (``with_digests``),
    checked whenever it is read."""
    from pitvit.models import resolve_preprocessing, with_digests

    model = t.model
    # the variant's pretrained_cfg with what this run trained on: its classes and resolved preprocessing
    pretrained = {**model.pretrained_cfg.to_dict(), "num_classes": model.num_classes,
                  **resolve_preprocessing(model.pretrained_cfg, mean=data.mean,
                                          input_size=(model.cfg.in_chans, data.input_size, data.input_size),
                                          std=data.std, interpolation=data.interpolation, crop_pct=data.crop_pct)}
    pretrained.update(input_size=list(pretrained["input_size"]), mean=list(pretrained["mean"]),
                      std=list(pretrained["std"]))
    ckpt = {
        "format": "pitvit", "version": 1,
        "model_name": model.model_name, "model_cfg": model.cfg.to_dict(), "pretrained_cfg": pretrained,
        "class_names": list(data.classes),
        "state_dict": model.state_dict(),
        "epoch": epoch, "step_in_epoch": step,
        "config": config_to_dict(cfg),
        "optimizer": t.optimizer.state_dict(),
        "scheduler": t.schedule.state_dict(),
        "rng": capture_rng(),
        "sampler": _sampler_state(data.train, epoch, step, cfg.train.seed),
        "best_metric": dict(best),
    }
    if t.ema is not None:
        ckpt["ema_state_dict"] = t.ema.state_dict()
        ckpt["ema_updates"] = t.ema.updates
    if t.scaler is not None:
        ckpt["scaler"] = t.scaler.state_dict()
    if partial is not None:
        ckpt["partial_epoch"] = dict(partial)
    if metrics:
        ckpt["metrics"] = dict(metrics)
    if provenance is not None:
        ckpt["provenance"] = dict(provenance)
    return with_digests(ckpt)


def restore_training(ckpt: dict[str, Any], t: Training) -> None:
    """Put a checkpoint's weights, optimizer, schedule, EMA, scaler and random states into the run's objects."""
    t.model.load_state_dict(ckpt["state_dict"])
    t.optimizer.load_state_dict(ckpt["optimizer"])
    t.schedule.load_state_dict(ckpt["scheduler"])
    if t.ema is not None:
        if "ema_state_dict" in ckpt:
            t.ema.load_state_dict(ckpt["ema_state_dict"])
            t.ema.updates = int(ckpt.get("ema_updates", 0))
        else:
            log.warning("the checkpoint has no EMA weights; the EMA restarts from the current weights")
            t.ema.load_state_dict(ckpt["state_dict"])
    if t.scaler is not None and "scaler" in ckpt:
        t.scaler.load_state_dict(ckpt["scaler"])
    restore_rng(ckpt["rng"])


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``["optim.lr: 0.001 -> 0.002"]``: the settings that differ, except where the run lives and how fast it reads."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b and f"{prefix}{k}" not in ("train.output", "train.resume", "data.path", "data.num_workers"):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def load_resume(cfg: Config, run_dir: Path, require: bool) -> dict[str, Any] | None:
    """The checkpoint to continue from: ``run_dir/last.pt`` unless ``train.resume`` is false (and ``require``,
    the ``--resume`` flag, is not set).

    Raises:
        TrainingError: ``require`` and there is no ``last.pt``.
        CheckpointError: ``last.pt`` is damaged, truncated or unsafe (the message says how to go on).
    """
    last = run_dir / "last.pt"
    if not last.exists():
        if require:
            raise TrainingError(f"--resume: {last} does not exist; run without --resume to start a new run there")
        return None
    if not cfg.train.resume and not require:
        log.warning("%s exists but train.resume is false: starting over", last)
        return None
    try:
        return read_run_checkpoint(last)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; it is the checkpoint this run would continue from: start over in {run_dir} "
                              f"with --set train.resume=false (it is then replaced), or train in another folder "
                              f"(--output)") from None


def check_resume(ckpt: dict[str, Any], cfg: Config, run_dir: Path, t: Training, data: Data) -> int:
    """Refuse another run's checkpoint, a finished run asked to go on with other settings, and a mid-epoch
    resume that would not see the rest of the batches it stopped between; warn about any other change.

    Elastic resume: the same global batch (images per optimizer step) split another way (processes, per-process
    batch, accumulation steps, loader workers) continues the same sample sequence, mid-epoch too; the keyed
    draws make it the same run. Returns the loader batch to resume the epoch at, in this run's batches.

    Raises:
        TrainingError: the checkpoint in ``run_dir`` cannot be continued with ``cfg`` (the message says how).
    """
    epoch, step = int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0))
    last = run_dir / "last.pt"
    elsewhere = (f"to train this one, choose another --output, or start over in {run_dir} with "
                 f"--set train.resume=false (its checkpoints are then replaced)")
    other = run_differences(ckpt, t.model, data.classes, data.input_size)
    if other:
        config_file = run_dir / "config.yaml"
        how = (f"run `pitvit train --config {config_file}`" if config_file.is_file() else
               "rerun it with the settings it ran with")
        raise TrainingError(f"{last} belongs to another run ({'; '.join(other)}): to continue that run, {how}; "
                            f"{elsewhere}")
    scale, old_global, new_global = _scale_changes(ckpt, cfg, data)
    split_keys = ("data.batch_size:", "optim.accum_steps:", "data.num_workers:")
    changes = config_changes(renamed_keys(ckpt.get("config", {}), warn=False), config_to_dict(cfg))
    if old_global == new_global:  # a new split of the same global batch is no change of settings
        changes = [c for c in changes if not c.startswith(split_keys)]
    settings = [c for c in changes if not c.startswith("train.epochs:")]
    if settings and epoch >= t.schedule.total_epochs and not step:
        raise TrainingError(f"{last} holds a run that finished its {epoch} epochs with other settings "
                            f"({'; '.join(settings)}): to continue it, raise train.epochs; {elsewhere}")
    saved = (ckpt.get("sampler") or {}).get("sampler") or {}
    sampler = getattr(data.train, "sampler", None)
    now = sampler.state_dict() if hasattr(sampler, "state_dict") else {}
    order = [c for c in order_changes(saved, now) if not c.startswith("global batch ")]
    if old_global != new_global:
        order.append(f"global batch {old_global} -> {new_global}")
    old_loader_batch = saved.get("global_batch_size", now.get("global_batch_size", 0))
    new_loader_batch = now.get("global_batch_size", old_loader_batch)
    if not order and step and new_loader_batch and (step * old_loader_batch) % new_loader_batch:
        order.append(f"batch {step} of {old_loader_batch} images is not a whole number of batches of "
                     f"{new_loader_batch}")
    if order and step:
        raise TrainingError(
            f"{last} stopped in the middle of epoch {epoch + 1}, after batch {step}, and its remaining batches "
            f"only exist for the settings it ran with ({'; '.join(order)}): resume with those (global batch = "
            f"data.batch_size x processes); {elsewhere}")
    if order:
        log.warning("the batches change at this epoch boundary (%s): the learning rate follows the new global "
                    "batch, and the run no longer matches an uninterrupted one", "; ".join(order))
    if changes:
        log.warning("resuming with a changed configuration: %s", "; ".join(changes))
    if scale and not order:
        log.info("elastic resume: %s; the same global batch of %d and the same sample sequence, so the run goes on "
                 "as it would have", "; ".join(scale), new_global)
    if step and new_loader_batch and old_loader_batch != new_loader_batch:
        return step * old_loader_batch // new_loader_batch
    return step
