"""Builders: each turns one section of the training configuration into the objects a run needs.

``build_data`` (the ``data`` and ``aug`` sections: datasets, loaders, mixing), ``build_model`` (``model``),
``build_training`` (``optim``, ``sched``, ``train.amp``, ``ema``, ``distill``: optimizer, schedule, precision,
EMA, loss, wrapping) and ``build_train_step`` (the engine's step over them). :func:`pitvit.train.runner.fit`
composes them.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from pitvit.utils.distributed import DistInfo
from pitvit.utils.errors import ConfigError, MissingPathError
from pitvit.utils.precision import amp_dtype

from .config import Config
from .distill import ClassificationLoss, DistillationLoss, build_teacher
from .ema import ModelEma
from .engine import TrainStep
from .optim import build_optimizer, scaled_lr
from .sched import LRSchedule

log = logging.getLogger("pitvit.train")

__all__ = ["Data", "Training", "build_data", "head_width", "build_model", "build_training", "build_train_step"]


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
    """Input size and normalization: the configuration's, else the variant's (``resolve_preprocessing``)."""
    from pitvit.models import resolve_preprocessing

    d = cfg.data
    pre = resolve_preprocessing(cfg.model.name, input_size=d.input_size or cfg.model.img_size, crop_pct=d.crop_pct,
                                interpolation=d.interpolation, mean=d.mean, std=d.std)
    return {**pre, "in_chans": pre["input_size"][0], "input_size": pre["input_size"][-1], "mean": list(pre["mean"]),
            "std": list(pre["std"])}


def _aug_dict(cfg: Config) -> dict[str, Any]:
    """The data layer's augmentation settings: the preset plus the fields the config sets (the ``aug`` section's
    other fields are mixing, smoothing and sampling, which are not the transforms')."""
    from pitvit.data import AUG_SETTINGS

    return {k: v for k, v in asdict(cfg.aug).items() if (k == "preset" or k in AUG_SETTINGS) and v is not None}


def _read_datasets(cfg: Config, pre: dict[str, Any]) -> tuple[Any, Any]:
    """The training and validation datasets of ``data.path`` (``data.holdout``: both from the training split)."""
    from pitvit import data as D

    if not cfg.data.path and cfg.data.format != "fashion_mnist":
        raise ConfigError("no dataset: pass --data DIR (or set data.path)")
    common = {k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "in_chans")}
    staged = cfg.data.pipeline != "cpu"  # the GPU and memory stages apply the transforms themselves
    tf_train = None if staged else D.build_transform(True, **common, aug=_aug_dict(cfg))
    tf_val = None if staged else D.build_transform(False, **common)
    root = cfg.data.path or None
    opts = dict(kind=cfg.data.format, strict_images=not cfg.data.skip_corrupt, image_column=cfg.data.image_column,
                label_column=cfg.data.label_column)
    train_set = D.build_dataset(root, cfg.data.train_split, transform=tf_train, **opts)
    if not cfg.data.holdout:
        return train_set, D.build_dataset(root, cfg.data.val_split, transform=tf_val, **opts)
    held_set = D.build_dataset(root, cfg.data.train_split, transform=tf_val, **opts)
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
                           repeated_aug=cfg.aug.repeated_aug, shuffle=cfg.data.shuffle,
                           shard_window=cfg.data.shard_window, **common_loader)
    val = None
    if val_set is not None:
        val = D.build_loader(val_set, batch_size=cfg.data.eval_batch_size or cfg.data.batch_size, train=False,
                             drop_last=False, **common_loader)
    a = cfg.aug
    mixup = None
    if a.mixup > 0 or a.cutmix > 0:
        mixup = D.build_mixup(mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mixup_prob,
                              switch_prob=a.mixup_switch_prob, mode=a.mixup_mode, label_smoothing=a.smoothing,
                              num_classes=head_width(cfg, train_set.classes),  # soft targets as wide as the head
                              group=D.mix_group_size(a.mix_group, batch_size=cfg.data.batch_size,
                                                     world_size=info.world_size, accum_steps=cfg.optim.accum_steps))
    pre.pop("in_chans")
    return Data(train, val, mixup, list(train_set.classes), **pre)


# ---------------------------------------------------------------------------- model and training objects
def head_width(cfg: Config, classes: list) -> int:
    """The head's outputs: ``model.num_classes``, or the dataset's classes when unset; a head narrower than the
    dataset is refused (its labels would index past it), before the run folder exists."""
    n = cfg.model.num_classes
    if n is None:
        return len(classes)
    if n < len(classes):
        raise ConfigError(f"model.num_classes={n} is fewer than the {len(classes)} classes of the dataset "
                          f"(e.g. {', '.join(map(str, classes[:3]))}); leave it unset to follow the dataset, "
                          f"or set it to at least {len(classes)}")
    return n


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


def sync_batchnorm(model: nn.Module, info: DistInfo) -> bool:
    """With several processes, BatchNorm layers (the demo's convolutional stem has them) normalize with the
    statistics of the global batch (SyncBatchNorm, in place), so N processes compute what one process does.
    torch implements SyncBatchNorm for GPUs only: on CPU processes they keep per-process statistics, and the
    log says so. Returns whether the layers were converted."""
    if info.world_size <= 1 or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return False
    if info.device.type != "cuda":
        log.warning("BatchNorm layers use each process's own batch statistics: SyncBatchNorm needs GPUs (torch "
                    "has no CPU implementation), so %d CPU processes do not match one process exactly",
                    info.world_size)
        return False
    for name, child in list(model.named_children()):
        setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
    log.info("BatchNorm -> SyncBatchNorm: statistics over the global batch of all %d processes", info.world_size)
    return True


def build_training(cfg: Config, model: nn.Module, steps_per_epoch: int, info: DistInfo) -> Training:
    """Optimizer (with the scaled lr), schedule, precision, EMA, loss (with the teacher) and wrapping."""
    sync_batchnorm(model, info)
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


def build_train_step(cfg: Config, t: Training, data: Data, info: DistInfo) -> TrainStep:
    """The engine's step over the run's objects (accumulation and clipping from the ``optim`` section)."""
    return TrainStep(t.train_model, t.optimizer, t.loss_fn, info.device, amp_dtype=t.amp_dtype, scaler=t.scaler,
                     mixup=data.mixup, accum_steps=cfg.optim.accum_steps, clip_grad=cfg.optim.clip_grad,
                     ema=t.ema, ema_model=t.model)
