"""The training configuration's schema: typed sections with their defaults, conversion and checks.

A run's configuration is resolved in three layers, later ones winning: the defaults of the dataclasses
below, a recipe, and ``--set section.key=value`` overrides (:mod:`pitvit.train.recipes` reads the last two).
Values are checked against the declared types: ``5e-4`` in a YAML file (a string to YAML 1.1) becomes a
float, ``0`` and ``false`` override any default, and an unknown key is an error that lists the valid ones.
"""
from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from pitvit.utils.errors import ConfigError
from pitvit.utils.names import AMP_CHOICES

from .sched import SCHEDULES, STEPPINGS

__all__ = ["ModelCfg", "DataCfg", "AugCfg", "OptimCfg", "SchedCfg", "TrainCfg", "DistillCfg", "EmaCfg",
           "LogCfg", "Config", "config_from_dict", "config_to_dict", "BEST_METRICS", "resolve_best_metric",
           "validate"]

log = logging.getLogger("pitvit.train")

# What a run's metrics rows can hold, and so what can pick best.pt: losses lower, top-k higher is better.
BEST_METRICS = ("val_top1", "val_top5", "val_loss", "ema_top1", "ema_top5", "ema_loss", "train_loss")


@dataclass
class ModelCfg:
    """The network. ``num_classes``/``img_size`` of ``None`` follow the dataset and the variant."""

    name: str = "pit_ti"
    num_classes: Optional[int] = None
    img_size: Optional[int] = None
    drop_path: float = 0.1
    drop: float = 0.0
    weights: str = ""  # start from these weights (fine-tuning); the head is re-initialized if classes differ
    grad_checkpointing: bool = False
    arch: dict[str, Any] = field(default_factory=dict)  # PiTConfig fields to change, e.g. {stride: 4}


@dataclass
class DataCfg:
    """Where the images are and how they are batched (``batch_size`` is per process)."""

    path: str = ""
    kind: str = "auto"  # auto | imagefolder | list | fashion_mnist
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256
    eval_batch_size: int = 0  # 0: same as batch_size
    num_workers: int = 8
    input_size: Optional[int] = None  # None: the variant's pretrained_cfg
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    mean: Optional[list[float]] = None
    std: Optional[list[float]] = None
    skip_corrupt: bool = True  # False: a corrupt image stops the run
    # cpu | gpu | memory: decode and augment in CPU workers; on the device (docs/gpu_pipeline.md); or, for a
    # dataset held in memory (Fashion-MNIST), a whole batch at a time in the main process (pad-crop and flip only)
    pipeline: str = "cpu"
    # N > 0: validate on N images held out of train_split (a fixed random choice, pitvit.data.holdout_indices)
    # and train on the rest; val_split is then not read
    holdout: int = 0


@dataclass
class AugCfg:
    """Training augmentation, mixing and label smoothing.

    ``preset`` names the data layer's pipeline (``official``: DeiT's RandomResizedCrop + flip + RandAugment
    + random erasing; ``paddle``; ``small`` for 28 px images; ``none``); the fields left ``None`` keep the
    preset's value (see ``pitvit.data.AUG_PRESETS``).
    """

    preset: str = "official"
    crop: Optional[str] = None  # rrc | pad | center
    scale: Optional[list[float]] = None
    ratio: Optional[list[float]] = None
    padding: Optional[int] = None
    hflip: Optional[float] = None
    auto_augment: Optional[str] = None  # "none" disables it
    re_prob: Optional[float] = None
    re_mode: Optional[str] = None
    re_count: Optional[int] = None
    mixup: float = 0.8
    cutmix: float = 1.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"
    mix_group: int = 256  # images per mixing group of the global batch (or the global batch when smaller)
    smoothing: float = 0.1
    repeated_aug: bool = False


@dataclass
class OptimCfg:
    """The optimizer; ``lr`` is for a global batch of ``lr_base_batch`` and is scaled linearly."""

    name: str = "adamw"  # adamw | adamp
    lr: float = 5e-4
    lr_base_batch: int = 512  # 0: use lr as given
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    exclude_wd: bool = True  # no decay on biases, 1-d params (norms), model.no_weight_decay()
    clip_grad: float = 0.0  # max global gradient norm; 0: off
    accum_steps: int = 1
    # AdamP only; the defaults are what timm 0.3.x built for DeiT's --opt adamp (the PiT authors' run)
    wd_ratio: float = 0.01  # weight-decay factor on weights AdamP finds scale-invariant
    nesterov: bool = True
    delta: float = 0.1  # scale-invariance threshold on |cos(grad, weight)| x sqrt(dim)


@dataclass
class SchedCfg:
    """Linear warmup, cosine decay to ``min_lr`` over ``train.epochs``, then ``cooldown_epochs`` at min_lr.

    ``stepping`` says where each epoch samples that curve ``lr(t)`` (``pitvit.train.sched``): ``deit``
    (epoch e at lr(e - 1), epochs 0 and 1 at ``warmup_lr``: DeiT's main.py), ``epoch`` (epoch e at lr(e):
    timm's train.py), ``step`` (every optimizer step, at fractional epochs) or ``paddle`` (epoch e at
    lr(e + 1): the Paddle reproduction).
    """

    name: str = "cosine"  # cosine | constant
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    cooldown_epochs: int = 0
    stepping: str = "deit"  # deit | epoch | step | paddle


@dataclass
class TrainCfg:
    """The run: length, seed, precision, devices, checkpoints."""

    epochs: int = 300
    seed: int = 0
    amp: str = "bf16"  # auto | none | bf16 | fp16 (auto: bf16 where the device computes it natively, else fp32;
    # fp16 uses a GradScaler, GPU only)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    output: str = ""  # the run folder; "" -> runs/<config name>
    resume: bool = True  # continue from output/last.pt when it exists
    requeue: bool = False  # under SLURM: after a SIGUSR1/SIGTERM stop, `scontrol requeue $SLURM_JOB_ID`
    eval_every: int = 1
    best_metric: str = ""  # picks best.pt (BEST_METRICS); "": ema_top1 with EMA, else val_top1
    max_steps_per_epoch: int = 0  # 0: the whole loader (a smaller value is for smoke tests)
    deterministic: bool = False
    threads: int = 0  # torch intra-op threads per process; 0: torch's default


@dataclass
class DistillCfg:
    """DeiT-style distillation through the distillation token (needs a ``*_distilled`` model)."""

    mode: str = "none"  # none | hard | soft
    teacher: str = ""  # a timm or torchvision model name, or a checkpoint path
    teacher_weights: str = ""  # weights for a teacher given by name
    alpha: float = 0.5
    tau: float = 1.0


@dataclass
class EmaCfg:
    """An exponential moving average of the weights, evaluated next to the raw weights."""

    enabled: bool = True
    decay: float = 0.99996
    warmup: bool = False  # decay ramps as (1 + n) / (10 + n), useful for short runs


@dataclass
class LogCfg:
    interval: int = 50  # steps between progress lines
    tensorboard: bool = False
    plot: bool = True
    progress_bar: str = "auto"  # auto (on a terminal) | on | off


@dataclass
class Config:
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    log: LogCfg = field(default_factory=LogCfg)
    name: str = ""  # the recipe's name (its file stem unless given)


# ---------------------------------------------------------------------------- typed conversion
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to the declared type ``tp`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if isinstance(value, str):
            text = value.strip()  # "[0.08, 1]" (a recipe's flow list quoted) or "0.08,1"
            bracketed = text.startswith("[") and text.endswith("]")
            value = [v.strip() for v in text[1:-1].split(",") if v.strip()] if bracketed else value.split(",")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[]") for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if value is None:
            return ""
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += _valid_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _update(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = _hints(type(obj))
    for key, value in data.items():
        full = prefix + str(key)
        if key not in hints:
            valid = _valid_keys(type(obj), prefix)
            raise ConfigError(f"unknown config key {full!r}; valid keys: {', '.join(valid)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            _update(getattr(obj, key), value, full + ".")
        else:
            setattr(obj, key, _coerce(value, tp, full))


def config_from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a (possibly partial) nested dict; unknown keys are errors."""
    cfg = Config()
    _update(cfg, data)
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, numbers, strings, None) of a config."""
    return dataclasses.asdict(cfg)


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def resolve_best_metric(cfg: Config, has_val: bool = True) -> str:
    """The metric that picks ``best.pt``: ``train.best_metric``, or by default ``ema_top1`` with EMA, else
    ``val_top1``; ``""`` (no ``best.pt``) by default when the run has no validation split.

    Raises:
        ConfigError: the metric is unknown, or this run never computes it (EMA off, no validation split).
    """
    computed = [m for m in BEST_METRICS
                if m == "train_loss" or (has_val and (cfg.ema.enabled or not m.startswith("ema_")))]
    name = cfg.train.best_metric
    if not name:
        if not has_val:
            log.info("no validation split: no best.pt is kept (train.best_metric=train_loss keeps one)")
            return ""
        return "ema_top1" if cfg.ema.enabled else "val_top1"
    if name not in computed:
        why = ("is not a metric" if name not in BEST_METRICS else
               "needs a validation split" if not has_val else "needs ema.enabled=true")
        raise ConfigError(f"train.best_metric {name!r} {why}; this run computes: {', '.join(computed)}")
    return name


def validate(cfg: Config) -> None:
    """Cross-field checks that the types alone cannot express."""
    _choice("optim.name", cfg.optim.name, ("adamw", "adamp"))
    _choice("sched.name", cfg.sched.name, SCHEDULES)
    _choice("sched.stepping", cfg.sched.stepping, STEPPINGS)
    _choice("train.amp", cfg.train.amp, AMP_CHOICES)
    _choice("train.device", cfg.train.device, ("auto", "cpu", "cuda"))
    _choice("distill.mode", cfg.distill.mode, ("none", "hard", "soft"))
    _choice("log.progress_bar", cfg.log.progress_bar, ("auto", "on", "off"))
    _choice("data.pipeline", cfg.data.pipeline, ("cpu", "gpu", "memory"))
    if cfg.data.holdout < 0:
        raise ConfigError(f"data.holdout must be >= 0 (0: validate on data.val_split), got {cfg.data.holdout}")
    positive = {"data.batch_size": cfg.data.batch_size, "optim.accum_steps": cfg.optim.accum_steps,
                "train.eval_every": cfg.train.eval_every, "log.interval": cfg.log.interval}
    for k, v in positive.items():
        if v < 1:
            raise ConfigError(f"{k} must be >= 1, got {v}")
    not_negative = {"train.epochs": cfg.train.epochs, "sched.warmup_epochs": cfg.sched.warmup_epochs,
                    "sched.cooldown_epochs": cfg.sched.cooldown_epochs, "optim.lr": cfg.optim.lr,
                    "optim.eps": cfg.optim.eps, "optim.weight_decay": cfg.optim.weight_decay,
                    "optim.clip_grad": cfg.optim.clip_grad, "data.num_workers": cfg.data.num_workers,
                    "data.eval_batch_size": cfg.data.eval_batch_size, "optim.lr_base_batch": cfg.optim.lr_base_batch,
                    "sched.warmup_lr": cfg.sched.warmup_lr, "sched.min_lr": cfg.sched.min_lr,
                    "train.max_steps_per_epoch": cfg.train.max_steps_per_epoch, "train.threads": cfg.train.threads}
    for k, v in not_negative.items():
        if not v >= 0:  # also NaN
            raise ConfigError(f"{k} must be >= 0, got {v}")
    for k, v in (("model.drop_path", cfg.model.drop_path), ("model.drop", cfg.model.drop)):
        if not 0.0 <= v < 1.0:
            raise ConfigError(f"{k} must be in [0, 1), got {v}")
    if cfg.distill.mode != "none" and not cfg.distill.teacher:
        raise ConfigError("distill.mode is set but distill.teacher is empty (a model name or checkpoint path)")
    if not 0.0 <= cfg.distill.alpha <= 1.0 or not cfg.distill.tau > 0:
        raise ConfigError(f"distill.alpha must be in [0, 1] and distill.tau > 0, got {cfg.distill.alpha} and "
                          f"{cfg.distill.tau}")
    if not 0.0 <= cfg.ema.decay < 1.0:
        raise ConfigError(f"ema.decay must be in [0, 1), got {cfg.ema.decay}")
    if len(cfg.optim.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas needs two values in [0, 1), got {cfg.optim.betas}")
    if not 0.0 <= cfg.optim.wd_ratio <= 1.0 or cfg.optim.delta <= 0:
        raise ConfigError(f"optim.wd_ratio must be in [0, 1] and optim.delta > 0; got {cfg.optim.wd_ratio} "
                          f"and {cfg.optim.delta}")
    resolve_best_metric(cfg)  # a typo or a metric EMA-off runs never compute fails here, before any work
