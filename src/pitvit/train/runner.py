"""``fit(cfg)``: a training run composed from builders, on one process or many (torchrun).

Each builder turns one section of the configuration into objects; :func:`fit` wires them together and runs
epochs with the engine. Every epoch ends with ``last.pt`` written atomically (and ``best.pt`` when the named
metric improves), so a run killed at any moment resumes from its folder and ends with the same weights.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pitvit.utils.device import amp_dtype
from pitvit.utils.distributed import DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from pitvit.utils.errors import CheckpointError, ConfigError, MissingPathError, OutputError, TrainingError
from pitvit.utils.io import make_dir, remove_stale_temps, save_torch, write_with
from pitvit.utils.logs import Progress, setup_logging, start_log_file

from .checkpoint import capture_rng, load_checkpoint, order_changes, restore_rng, run_differences
from .config import Config, config_to_dict, resolve_best_metric, save_config
from .distill import ClassificationLoss, DistillationLoss, build_teacher
from .ema import ModelEma
from .engine import NonFiniteLossError, TrainStep, evaluate, train_one_epoch
from .metrics import MetricsLog
from .optim import build_optimizer, scaled_lr
from .sched import LRSchedule

__all__ = ["fit", "TrainingError", "Data", "Training", "build_data", "build_model", "build_training",
           "run_dir_of"]

log = logging.getLogger("pitvit.train")


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    train: Any
    val: Any
    mixup: Any
    classes: list[str]
    input_size: int
    mean: list[float]
    std: list[float]
    interpolation: str
    crop_pct: float


def _preprocessing(cfg: Config) -> dict[str, Any]:
    """Input size and normalization: the configuration's, else the variant's ``pretrained_cfg``."""
    from pitvit.models import get_pretrained_cfg

    pc = get_pretrained_cfg(cfg.model.name)
    return {"in_chans": pc.input_size[0],
            "input_size": cfg.data.input_size or cfg.model.img_size or pc.input_size[-1],
            "mean": list(cfg.data.mean or pc.mean), "std": list(cfg.data.std or pc.std),
            "interpolation": cfg.data.interpolation or pc.interpolation,
            "crop_pct": cfg.data.crop_pct if cfg.data.crop_pct is not None else pc.crop_pct}


_MIX_KEYS = ("mixup", "cutmix", "mixup_prob", "mixup_switch_prob", "mixup_mode", "mix_group", "smoothing",
             "repeated_aug")


def _aug_dict(cfg: Config) -> dict[str, Any]:
    """The data layer's augmentation settings: the preset plus the fields the config sets."""
    return {k: v for k, v in asdict(cfg.aug).items() if k not in _MIX_KEYS and v is not None}


def _read_datasets(cfg: Config, pre: dict[str, Any]) -> tuple[Any, Any]:
    """The training and validation datasets of ``data.path`` (``data.holdout``: both from the training split)."""
    from pitvit import data as D

    if not cfg.data.path and cfg.data.kind != "fashion_mnist":
        raise ConfigError("no dataset: pass --data DIR (or set data.path)")
    common = {k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "in_chans")}
    staged = cfg.data.pipeline != "cpu"  # the GPU and memory stages apply the transforms themselves
    tf_train = None if staged else D.build_transform(True, **common, aug=_aug_dict(cfg))
    tf_val = None if staged else D.build_transform(False, **common)
    root, strict, kind = cfg.data.path or None, not cfg.data.skip_corrupt, cfg.data.kind
    train_set = D.build_dataset(root, cfg.data.train_split, kind=kind, transform=tf_train, strict_images=strict)
    if not cfg.data.holdout:
        return train_set, D.build_dataset(root, cfg.data.val_split, kind=kind, transform=tf_val,
                                          strict_images=strict)
    held_set = D.build_dataset(root, cfg.data.train_split, kind=kind, transform=tf_val, strict_images=strict)
    keep, held = D.holdout_indices(len(train_set), cfg.data.holdout)
    return D.Subset(train_set, keep), D.Subset(held_set, held)


def build_data(cfg: Config, info: DistInfo, datasets: tuple[Any, Any] | None = None) -> Data:
    """Datasets, loaders and mixing from the ``data`` and ``aug`` sections.

    Args:
        datasets: ``(train, val)`` datasets to use instead of reading ``data.path`` (their items must already
            be tensors; ``val`` may be ``None``).
    """
    from pitvit import data as D

    pre = _preprocessing(cfg)
    train_set, val_set = _read_datasets(cfg, pre) if datasets is None else datasets
    common_loader = dict(seed=cfg.train.seed, num_workers=cfg.data.num_workers, rank=info.rank,
                         world_size=info.world_size)
    if cfg.data.pipeline == "gpu":  # same batches and loader contract, decoded and augmented on info.device
        from pitvit.data.gpu import GpuStage

        common_loader["stage"] = GpuStage(info.device, aug=_aug_dict(cfg), **{
            k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct")})
    elif cfg.data.pipeline == "memory":  # batches gathered from one uint8 tensor, augmented in the main process
        common_loader["stage"] = D.MemoryStage(aug=_aug_dict(cfg),
                                               **{k: pre[k] for k in ("input_size", "mean", "std")})
    train = D.build_loader(train_set, batch_size=cfg.data.batch_size, train=True, drop_last=True,
                           repeated_aug=cfg.aug.repeated_aug, **common_loader)
    val = None
    if val_set is not None:
        val = D.build_loader(val_set, batch_size=cfg.data.eval_batch_size or cfg.data.batch_size, train=False,
                             drop_last=False, **common_loader)
    a = cfg.aug
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        mixup = D.build_mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                              switch_prob=a.mixup_switch_prob, mode=a.mixup_mode, label_smoothing=a.smoothing,
                              num_classes=len(train_set.classes),
                              group=D.mix_group_size(a.mix_group, batch_size=cfg.data.batch_size,
                                                     world_size=info.world_size, accum_steps=cfg.optim.accum_steps))
    pre.pop("in_chans")
    return Data(train, val, mixup, list(train_set.classes), **pre)


# ---------------------------------------------------------------------------- model and training objects
def build_model(cfg: Config, num_classes: int, device: torch.device, input_size: int | None = None) -> nn.Module:
    """The student from the ``model`` section, optionally starting from weights, in distilled-training mode
    when distilling; ``input_size`` (the data's) is checked against its patches."""
    from pitvit.models import create_model, token_grid

    m = cfg.model
    try:
        model = create_model(m.name, num_classes=num_classes, img_size=m.img_size, drop_path_rate=m.drop_path,
                             drop_rate=m.drop, weights=m.weights or None, **m.arch)
    except ConfigError as e:
        if not m.arch or isinstance(e, MissingPathError):
            raise
        raise ConfigError(f"model.arch {m.arch}: {e}") from e
    if m.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if input_size is not None and min(token_grid(input_size, model.cfg.patch_size, model.cfg.stride)) < 1:
        raise ConfigError(f"data.input_size {input_size} is smaller than {m.name}'s {model.cfg.patch_size} px "
                          f"patches")
    if cfg.distill.mode != "none":
        if not model.cfg.distilled:
            raise ConfigError(f"distill.mode={cfg.distill.mode} needs a distilled model (a *_distilled variant, or "
                              f"model.arch={{distilled: true}}); {m.name} has no distillation token")
        model.set_distilled_training(True)
    return model.to(device)


@dataclass
class Training:
    """The objects the engine needs, built once per run."""

    model: nn.Module  # unwrapped: what is saved and what the EMA follows
    train_model: nn.Module  # possibly DDP-wrapped and compiled: what is stepped
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Any
    ema: ModelEma | None
    loss_fn: nn.Module
    amp_dtype: torch.dtype | None
    global_batch: int
    steps_per_epoch: int


def build_training(cfg: Config, model: nn.Module, steps_per_epoch: int, info: DistInfo) -> Training:
    """Optimizer (with the scaled lr), schedule, precision, EMA, loss (with the teacher) and wrapping."""
    dtype = amp_dtype(cfg.train.amp, info.device)
    o = cfg.optim
    global_batch = cfg.data.batch_size * info.world_size * o.accum_steps
    lr = scaled_lr(o.lr, global_batch, o.lr_base_batch)
    optimizer = build_optimizer(model, o.name, lr, o.weight_decay, tuple(o.betas), o.eps, o.exclude_wd,
                                wd_ratio=o.wd_ratio, nesterov=o.nesterov, delta=o.delta)
    opt_steps = max(steps_per_epoch // o.accum_steps, 1)
    schedule = LRSchedule.from_config(cfg.sched, optimizer, lr, cfg.train.epochs, opt_steps)
    scaler = torch.amp.GradScaler("cuda") if dtype is torch.float16 else None
    ema = ModelEma(model, cfg.ema.decay, cfg.ema.warmup) if cfg.ema.enabled else None
    base = ClassificationLoss(smoothing=cfg.aug.smoothing)
    loss_fn: nn.Module = base
    if cfg.distill.mode != "none":
        teacher = build_teacher(cfg.distill.teacher, model.num_classes, cfg.distill.teacher_weights, info.device)
        loss_fn = DistillationLoss(base, teacher, cfg.distill.mode, cfg.distill.alpha, cfg.distill.tau, dtype)
    train_model: nn.Module = model
    if info.distributed:
        ids = [info.device.index] if info.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.train.compile:
        train_model = torch.compile(train_model)
    return Training(model, train_model, optimizer, schedule, scaler, ema, loss_fn, dtype, global_batch,
                    steps_per_epoch)


def _train_step(cfg: Config, t: Training, data: Data, info: DistInfo) -> TrainStep:
    return TrainStep(t.train_model, t.optimizer, t.loss_fn, info.device, amp_dtype=t.amp_dtype, scaler=t.scaler,
                     mixup=data.mixup, accum_steps=cfg.optim.accum_steps, clip_grad=cfg.optim.clip_grad,
                     ema=t.ema, ema_model=t.model)


# ---------------------------------------------------------------------------- checkpoints
def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.train.output or os.path.join("runs", cfg.name or cfg.model.name))


def _sampler_state(loader: Any, epoch: int, step: int, seed: int) -> dict[str, Any]:
    state: dict[str, Any] = {"epoch": epoch, "step": step, "seed": seed}
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "state_dict"):
        state["sampler"] = sampler.state_dict()
    return state


def make_checkpoint(cfg: Config, t: Training, data: Data, *, epoch: int, step: int, best: dict[str, Any],
                    partial: dict[str, float] | None = None) -> dict[str, Any]:
    """The plain-data checkpoint (``docs/DESIGN.md``): ``epoch`` epochs are done, plus ``step`` batches of the
    next one. It carries the SHA-256 of its weights (``with_digests``), checked whenever it is read."""
    from pitvit.models import with_digests

    model = t.model
    pretrained = model.pretrained_cfg.to_dict()
    pretrained.update(num_classes=model.num_classes, input_size=[model.cfg.in_chans, data.input_size,
                                                                 data.input_size],
                      mean=data.mean, std=data.std, interpolation=data.interpolation, crop_pct=data.crop_pct)
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
    return with_digests(ckpt)


def restore(ckpt: dict[str, Any], t: Training) -> None:
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


def _config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _config_changes(a, b, f"{prefix}{k}.")
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
        return load_checkpoint(last)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; it is the checkpoint this run would continue from: start over in {run_dir} "
                              f"with --set train.resume=false (it is then replaced), or train in another folder "
                              f"(--output)") from None


def _check_resume(run: _Run, ckpt: dict[str, Any], epoch: int, step: int) -> None:
    """Refuse another run's checkpoint, a finished run asked to go on with other settings, and a mid-epoch
    resume that would not see the rest of the batches it stopped between; warn about any other change."""
    last, cfg = run.run_dir / "last.pt", run.cfg
    elsewhere = (f"to train this one, choose another --output, or start over in {run.run_dir} with "
                 f"--set train.resume=false (its checkpoints are then replaced)")
    other = run_differences(ckpt, run.t.model, run.data.classes, run.data.input_size)
    if other:
        config_file = run.run_dir / "config.yaml"
        how = (f"run `pitvit train --config {config_file}`" if config_file.is_file() else
               "rerun it with the settings it ran with")
        raise TrainingError(f"{last} belongs to another run ({'; '.join(other)}): to continue that run, {how}; "
                            f"{elsewhere}")
    changes = _config_changes(ckpt.get("config", {}), config_to_dict(cfg))
    settings = [c for c in changes if not c.startswith("train.epochs:")]
    if settings and epoch >= run.t.schedule.total_epochs and not step:
        raise TrainingError(f"{last} holds a run that finished its {epoch} epochs with other settings "
                            f"({'; '.join(settings)}): to continue it, raise train.epochs; {elsewhere}")
    saved = (ckpt.get("sampler") or {}).get("sampler") or {}
    sampler = getattr(run.data.train, "sampler", None)
    order = order_changes(saved, sampler.state_dict()) if hasattr(sampler, "state_dict") else []
    old_accum = ckpt.get("config", {}).get("optim", {}).get("accum_steps", cfg.optim.accum_steps)
    if old_accum != cfg.optim.accum_steps:
        order.append(f"optim.accum_steps {old_accum} -> {cfg.optim.accum_steps}")
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


# ---------------------------------------------------------------------------- the loop
class _StopFlag:
    """Set by SIGTERM; agreed on by every process before anyone stops."""

    def __init__(self, info: DistInfo) -> None:
        self.info, self.flag, self.calls = info, False, 0
        self.previous = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.flag = True

    def __call__(self) -> bool:
        if not self.info.distributed:
            return self.flag
        self.calls += 1
        if self.calls % 10:  # agreeing costs an all-reduce: do it every 10 optimizer steps
            return False
        return all_reduce_sum([1.0 if self.flag else 0.0], self.info.device)[0] > 0


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
    step: TrainStep
    best: dict[str, Any]
    bar: bool
    metrics: MetricsLog | None = None
    good: str = "none (no epoch has finished)"  # the last checkpoint with finite weights and validation loss


def _prepare(cfg: Config, require_resume: bool, datasets: Any) -> tuple[_Run, dict[str, Any] | None]:
    info = init_distributed(cfg.train.device)
    run_dir = run_dir_of(cfg)
    setup_logging(info.rank, str(run_dir / "log.txt"), hold=True)  # the folder is made once the run starts
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # the initial weights depend on the seed only
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ckpt = load_resume(cfg, run_dir, require_resume)
    data = build_data(cfg, info, datasets)
    model = build_model(cfg, cfg.model.num_classes or len(data.classes), info.device, data.input_size)
    steps = len(data.train)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    t = build_training(cfg, model, steps, info)
    best = {"name": resolve_best_metric(cfg, has_val=data.val is not None), "value": None, "epoch": None}
    bar = cfg.log.progress_bar == "on" or (cfg.log.progress_bar == "auto" and os.isatty(2))
    return _Run(cfg, info, run_dir, data, t, _train_step(cfg, t, data, info), best, bar), ckpt


def _restore(run: _Run, ckpt: dict[str, Any] | None) -> tuple[int, int, dict[str, float] | None]:
    """Load the checkpoint into the run; returns where to go on: epoch, batch and the epoch's running sums."""
    if ckpt is None:
        return 0, 0, None
    epoch, step = int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0))
    _check_resume(run, ckpt, epoch, step)
    restore(ckpt, run.t)
    if _finite_weights(run.t):
        run.good = f"{run.run_dir / 'last.pt'} (epoch {epoch}" + (f", batch {step})" if step else ")")
    saved = ckpt.get("best_metric") or {}
    if saved.get("name") == run.best["name"]:
        run.best = dict(saved)
    elif saved.get("name"):  # the config now names another metric: best.pt follows it from here on
        log.warning("train.best_metric is now %s (was %s): best.pt is chosen by it from this epoch on",
                    run.best["name"], saved["name"])
    log.info("resuming %s at epoch %d%s", run.run_dir / "last.pt", epoch + 1, f", batch {step + 1}" if step else "")
    return epoch, step, ckpt.get("partial_epoch")


def _start(run: _Run, start_epoch: int) -> None:
    """Make the run folder and write its configuration: only now, with every check passed, does the run write
    anything (a run that cannot start leaves no folder, and an existing folder as it was)."""
    if run.info.is_main:
        make_dir(run.run_dir)
        remove_stale_temps(run.run_dir)  # checkpoints half-written by a killed run
        save_config(run.cfg, run.run_dir / "config.yaml")
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
                            f"stopping without saving it; the last good checkpoint is {run.good}. {_REMEDY}")


def _save(run: _Run, *, epoch: int, step: int, is_best: bool = False,
          partial: dict[str, float] | None = None) -> None:
    """Write ``last.pt`` (and ``best.pt``); a full disk stops the run with the checkpoints on disk intact."""
    if run.info.is_main:
        last = run.run_dir / "last.pt"
        try:
            save_torch(make_checkpoint(run.cfg, run.t, run.data, epoch=epoch, step=step, best=run.best,
                                       partial=partial), last)
            if is_best:
                write_with(run.run_dir / "best.pt", lambda tmp: shutil.copyfile(last, tmp))
        except OutputError as e:
            raise OutputError(e.errno, f"{e.strerror}; training stopped, the checkpoints already in {run.run_dir} "
                                       f"are intact (the last good one: {run.good}): make room and run the same "
                                       f"command to resume") from None
    barrier()


def _train_epoch(run: _Run, epoch: int, *, start_step: int, partial: dict[str, float] | None,
                 stop: _StopFlag) -> dict[str, Any]:
    """One epoch through the engine; a non-finite loss becomes a :class:`TrainingError` that says what is kept."""
    cfg, t = run.cfg, run.t
    _set_epoch(run.data.train, epoch)
    if not t.schedule.per_step:
        t.schedule.set(epoch)
    progress = Progress(t.steps_per_epoch, f"epoch {epoch + 1}", interval=cfg.log.interval, bar=run.bar,
                        enabled=run.info.is_main, device=run.info.device, logger=log)
    try:
        return train_one_epoch(run.step, run.data.train, epoch=epoch, seed=cfg.train.seed, schedule=t.schedule,
                               start_step=start_step, partial=partial, max_steps=cfg.train.max_steps_per_epoch,
                               progress=progress, should_stop=stop)
    except NonFiniteLossError as e:
        raise TrainingError(f"{e}: stopping; the last good checkpoint is {run.good}. {_REMEDY}") from e


_REMEDY = "Lower optim.lr, set optim.clip_grad, or try train.amp=none."


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
    _save(run, epoch=epoch + 1, step=0, is_best=is_best)
    if good:
        run.good = f"{run.run_dir / 'last.pt'} (epoch {epoch + 1})"
    else:
        log.warning("epoch %d: the validation loss is not finite; its checkpoint is not a good one (nor best.pt)",
                    epoch + 1)
        kept = run.best.get("epoch") is not None and (run.run_dir / "best.pt").exists()
        run.good = f"{run.run_dir / 'best.pt'} (epoch {run.best['epoch']})" if kept else "none"
    return row


def _run_epochs(run: _Run, start_epoch: int, start_step: int, partial: dict[str, float] | None) -> dict[str, Any]:
    """Epochs ``start_epoch ..`` (the first from batch ``start_step``) until the end or a SIGTERM."""
    cfg, t, info, total = run.cfg, run.t, run.info, run.t.schedule.total_epochs
    log.info("%s: %s, %d classes, %d processes, global batch %d, lr %.3e, %d epochs, %d steps/epoch -> %s",
             cfg.name or cfg.model.name, cfg.model.name, t.model.num_classes, info.world_size, t.global_batch,
             t.schedule.base_lr, total, t.steps_per_epoch, run.run_dir)
    stop = _StopFlag(info)
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
                log.info("stopped by SIGTERM at epoch %d, batch %d: saved %s; run the same command to resume",
                         epoch + 1, stats["next_step"], run.run_dir / "last.pt")
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
    try:
        run, ckpt = _prepare(cfg, require_resume, datasets)
        start_epoch, start_step, partial = _restore(run, ckpt)
        if start_epoch >= run.t.schedule.total_epochs and not start_step:
            log.info("%s already holds all %d epochs; nothing to do (raise train.epochs to continue)",
                     run.run_dir / "last.pt", run.t.schedule.total_epochs)
            return {"epoch": start_epoch, "run_dir": str(run.run_dir), "best": run.best, "stopped": False,
                    "done_before": True}
        _start(run, start_epoch)
        result = _run_epochs(run, start_epoch, start_step, partial)
    finally:
        cleanup_distributed()
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[run.t.amp_dtype]
    return {**result, "run_dir": str(run.run_dir), "best": run.best, "precision": precision}


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
