"""The training configuration's schema: typed sections with their defaults, conversion and checks.

A run's configuration is resolved in three layers, later ones winning: the defaults of the dataclasses
below, a recipe, and ``--set section.key=value`` overrides (:mod:`pitvit.train.recipes` reads the last two).
Values are checked against the declared types: ``5e-4`` in a YAML file (a string to YAML 1.1) becomes a
float, ``0`` and ``false`` override any default, and an unknown key is an error that lists the valid ones.
Every number and word also carries what it may be, declared with its field (``Range``, ``OneOf``, ``Each``,
``Side`` in the field's metadata) and checked by :func:`validate` as soon as a config is built, before a run
writes anything: ``train.epochs=0 is not allowed: it must be >= 1``.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from pitvit.utils.errors import ConfigError
from pitvit.utils.names import (AMP_CHOICES, DATA_PIPELINES, DATASET_KINDS, DEVICE_CHOICES, DISTILL_MODES,
                                 OPTIMIZERS, PROGRESS_BARS, SHUFFLE_CHOICES)

from .sched import SCHEDULES, STEPPINGS

__all__ = ["ModelCfg", "DataCfg", "AugCfg", "OptimCfg", "SchedCfg", "TrainCfg", "DistillCfg", "EmaCfg",
           "LogCfg", "Config", "config_from_dict", "config_to_dict", "BEST_METRICS", "resolve_best_metric",
           "validate", "Check", "Range", "OneOf", "Each", "Side", "renamed_keys"]

log = logging.getLogger("pitvit.train")

# What a run's metrics rows can hold, and so what can pick best.pt: losses lower, top-k higher is better.
BEST_METRICS = ("val_top1", "val_top5", "val_loss", "ema_top1", "ema_top5", "ema_loss", "train_loss")


# ---------------------------------------------------------------------------- what each value may be
class Check:
    """What a config value may be, declared with its field (``field(metadata={"check": ...})``) and checked by
    :func:`validate`; ``None`` (an optional value left unset) always passes."""

    def ok(self, value: Any, cfg: "Config") -> bool:
        raise NotImplementedError

    def text(self, cfg: "Config") -> str:
        """The allowed values in words, for the error line: ``>= 1``, ``in [0, 1)``, ``one of a, b``."""
        raise NotImplementedError


class Range(Check):
    """A finite number in ``[lo, hi]``; ``lo_open``/``hi_open`` exclude the ends; ``None`` leaves a side free."""

    def __init__(self, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
                 hi_open: bool = False) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open

    def ok(self, value: Any, cfg: "Config") -> bool:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def text(self, cfg: "Config") -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        if self.lo is None:
            return f"{'<' if self.hi_open else '<='} {self.hi:g}"
        hi = f"2**{int(self.hi).bit_length() - 1}" if self.hi >= 2 ** 32 else f"{self.hi:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi}{')' if self.hi_open else ']'}"


class OneOf(Check):
    """One of a few words; ``choices`` is a tuple, or a function giving it (a vocabulary kept elsewhere, read
    only when a config is checked)."""

    def __init__(self, choices: tuple[str, ...] | Callable[[], Any]) -> None:
        self.choices = choices

    def _all(self) -> tuple[str, ...]:
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def ok(self, value: Any, cfg: "Config") -> bool:
        return value in self._all()

    def text(self, cfg: "Config") -> str:
        return "one of " + ", ".join(repr(c) if c == "" else str(c) for c in self._all())


class Each(Check):
    """A list of ``length`` values (any length when ``None``), each passing ``check``."""

    def __init__(self, check: Check, length: int | tuple[int, ...] | None = None) -> None:
        self.check = check
        self.lengths = (length,) if isinstance(length, int) else length

    def ok(self, value: Any, cfg: "Config") -> bool:
        return (isinstance(value, list) and (self.lengths is None or len(value) in self.lengths)
                and all(self.check.ok(v, cfg) for v in value))

    def text(self, cfg: "Config") -> str:
        n = "" if self.lengths is None else " or ".join(map(str, self.lengths)) + " "
        return f"a list of {n}values, each {self.check.text(cfg)}"


class Side(Check):
    """An image side in px: at least the model's patch (``model.name``'s stem convolution, or
    ``model.arch.patch_size``)."""

    def _patch(self, cfg: "Config") -> int | None:
        from pitvit.models import get_model_config, is_model

        if not is_model(cfg.model.name):
            return None
        patch = cfg.model.arch.get("patch_size") if isinstance(cfg.model.arch, dict) else None
        return patch if isinstance(patch, int) and patch > 0 else get_model_config(cfg.model.name).patch_size

    def ok(self, value: Any, cfg: "Config") -> bool:
        patch = self._patch(cfg)
        return isinstance(value, int) and value >= (patch or 1)

    def text(self, cfg: "Config") -> str:
        patch = self._patch(cfg)
        return f">= {patch} (the patch of {cfg.model.name})" if patch else ">= 1"


def _registered_models() -> list[str]:
    from pitvit.models import list_models

    return list_models()


def _data_names(module: str, name: str) -> Callable[[], Any]:
    """A vocabulary of the data layer, read when a config is checked (importing it here would import torch)."""
    def get() -> Any:
        import importlib

        return getattr(importlib.import_module(f"pitvit.data.{module}"), name)
    return get


def _f(default: Any, check: Check | None = None) -> Any:
    """A config field: its default and what it may be."""
    meta = {"check": check} if check is not None else {}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


AT_LEAST_0, AT_LEAST_1, PROB, FRACTION = Range(0), Range(1), Range(0, 1), Range(0, 1, hi_open=True)
POSITIVE = Range(0, lo_open=True)
SEED_RANGE = Range(0, 2 ** 63, hi_open=True)  # numpy and torch take seeds below 2**63 (int64)


# ---------------------------------------------------------------------------- the sections
@dataclass
class ModelCfg:
    """The network. ``num_classes``/``img_size`` of ``None`` follow the dataset and the variant."""

    name: str = _f("pit_ti", OneOf(_registered_models))
    num_classes: Optional[int] = _f(None, AT_LEAST_1)  # None: the dataset's classes; never fewer than those
    img_size: Optional[int] = _f(None, Side())
    drop_path: float = _f(0.1, FRACTION)
    drop: float = _f(0.0, FRACTION)
    weights: str = ""  # start from these weights (fine-tuning); the head is re-initialized if classes differ
    grad_checkpointing: bool = False
    arch: dict[str, Any] = _f({})  # PiTConfig fields to change, e.g. {stride: 4}; checked by the model


@dataclass
class DataCfg:
    """Where the images are and how they are batched (``batch_size`` is per process)."""

    path: str = ""
    # auto (detected) | imagefolder | list | fashion_mnist | imagenet | wds | parquet; called data.kind before
    format: str = _f("auto", OneOf(DATASET_KINDS))
    image_column: str = ""  # parquet: the column of image bytes ("": found by name and type)
    label_column: str = ""  # parquet: the integer label column ("": found by name and type)
    # global: one random order of all samples; shards (wds, parquet, imagenet): shards in a random order, samples
    # shuffled within shard_window shards at a time (for storage where a random read costs a seek)
    shuffle: str = _f("global", OneOf(SHUFFLE_CHOICES))
    shard_window: int = _f(8, AT_LEAST_1)
    train_split: str = _f("train", OneOf(_data_names("datasets", "SPLITS")))
    val_split: str = _f("val", OneOf(_data_names("datasets", "SPLITS")))
    batch_size: int = _f(256, AT_LEAST_1)
    eval_batch_size: int = _f(0, AT_LEAST_0)  # 0: same as batch_size
    num_workers: int = _f(8, AT_LEAST_0)
    input_size: Optional[int] = _f(None, Side())  # None: the variant's pretrained_cfg
    crop_pct: Optional[float] = _f(None, Range(0, 1, lo_open=True))
    interpolation: Optional[str] = _f(None, OneOf(_data_names("transforms", "_INTERPOLATIONS")))
    mean: Optional[list[float]] = _f(None, Each(Range(), (1, 3)))
    std: Optional[list[float]] = _f(None, Each(POSITIVE, (1, 3)))
    skip_corrupt: bool = True  # False: a corrupt image stops the run
    # cpu | gpu | memory: decode and augment in CPU workers; on the device (docs/gpu_pipeline.md); or, for a
    # dataset held in memory (Fashion-MNIST), a whole batch at a time in the main process (pad-crop and flip only)
    pipeline: str = _f("cpu", OneOf(DATA_PIPELINES))
    # N > 0: validate on N images held out of train_split (a fixed random choice, pitvit.data.holdout_indices)
    # and train on the rest; val_split is then not read
    holdout: int = _f(0, AT_LEAST_0)


@dataclass
class AugCfg:
    """Training augmentation, mixing and label smoothing.

    ``preset`` names the data layer's pipeline (``official``: DeiT's RandomResizedCrop + flip + RandAugment
    + random erasing; ``paddle``; ``small`` for 28 px images; ``none``); the fields left ``None`` keep the
    preset's value (see ``pitvit.data.AUG_PRESETS``).
    """

    preset: str = _f("official", OneOf(_data_names("transforms", "AUG_PRESETS")))
    crop: Optional[str] = _f(None, OneOf(_data_names("transforms", "_CROPS")))  # rrc | pad | center
    scale: Optional[list[float]] = _f(None, Each(Range(0, 1, lo_open=True), 2))
    ratio: Optional[list[float]] = _f(None, Each(POSITIVE, 2))
    padding: Optional[int] = _f(None, AT_LEAST_0)
    hflip: Optional[float] = _f(None, PROB)
    auto_augment: Optional[str] = None  # "none" disables it; timm's policy strings, checked by timm
    re_prob: Optional[float] = _f(None, PROB)
    re_mode: Optional[str] = _f(None, OneOf(_data_names("transforms", "_RE_MODES")))
    re_count: Optional[int] = _f(None, AT_LEAST_1)
    mixup: float = _f(0.8, AT_LEAST_0)  # Beta(alpha, alpha); 0: off
    cutmix: float = _f(1.0, AT_LEAST_0)
    mixup_prob: float = _f(1.0, PROB)
    mixup_switch_prob: float = _f(0.5, PROB)
    mixup_mode: str = _f("batch", OneOf(_data_names("mixup", "_MODES")))
    # images per mixing group of the global batch (or the global batch when smaller)
    mix_group: int = _f(256, AT_LEAST_1)
    smoothing: float = _f(0.1, FRACTION)
    repeated_aug: bool = False


@dataclass
class OptimCfg:
    """The optimizer; ``lr`` is for a global batch of ``lr_base_batch`` and is scaled linearly."""

    name: str = _f("adamw", OneOf(OPTIMIZERS))
    lr: float = _f(5e-4, AT_LEAST_0)
    lr_base_batch: int = _f(512, AT_LEAST_0)  # 0: use lr as given
    weight_decay: float = _f(0.05, AT_LEAST_0)
    betas: list[float] = _f([0.9, 0.999], Each(FRACTION, 2))
    eps: float = _f(1e-8, AT_LEAST_0)
    exclude_wd: bool = True  # no decay on biases, 1-d params (norms), model.no_weight_decay()
    clip_grad: float = _f(0.0, AT_LEAST_0)  # max global gradient norm; 0: off
    accum_steps: int = _f(1, AT_LEAST_1)
    # AdamP only; the defaults are what timm 0.3.x built for DeiT's --opt adamp (the PiT authors' run)
    wd_ratio: float = _f(0.01, PROB)  # weight-decay factor on weights AdamP finds scale-invariant
    nesterov: bool = True
    delta: float = _f(0.1, POSITIVE)  # scale-invariance threshold on |cos(grad, weight)| x sqrt(dim)


@dataclass
class SchedCfg:
    """Linear warmup, cosine decay to ``min_lr`` over ``train.epochs``, then ``cooldown_epochs`` at min_lr.

    ``stepping`` says where each epoch samples that curve ``lr(t)`` (``pitvit.train.sched``): ``deit``
    (epoch e at lr(e - 1), epochs 0 and 1 at ``warmup_lr``: DeiT's main.py), ``epoch`` (epoch e at lr(e):
    timm's train.py), ``step`` (every optimizer step, at fractional epochs) or ``paddle`` (epoch e at
    lr(e + 1): the Paddle reproduction).
    """

    name: str = _f("cosine", OneOf(SCHEDULES))
    warmup_epochs: float = _f(5, AT_LEAST_0)
    warmup_lr: float = _f(1e-6, AT_LEAST_0)
    min_lr: float = _f(1e-5, AT_LEAST_0)
    cooldown_epochs: int = _f(0, AT_LEAST_0)
    stepping: str = _f("deit", OneOf(STEPPINGS))


@dataclass
class TrainCfg:
    """The run: length, seed, precision, devices, checkpoints."""

    epochs: int = _f(300, AT_LEAST_1)
    seed: int = _f(0, SEED_RANGE)
    # auto | fp32 | bf16 | fp16 (none: fp32; auto: bf16 where the device computes it natively, else fp32;
    # fp16 uses a GradScaler, GPU only)
    amp: str = _f("bf16", OneOf(AMP_CHOICES))
    device: str = _f("auto", OneOf(DEVICE_CHOICES))
    compile: bool = False
    output: str = ""  # the run folder; "" -> runs/<config name>
    resume: bool = True  # continue from output/last.pt when it exists
    requeue: bool = False  # under SLURM: after a SIGUSR1/SIGTERM stop, `scontrol requeue $SLURM_JOB_ID`
    eval_every: int = _f(1, AT_LEAST_1)
    # picks best.pt; "": ema_top1 with EMA, else val_top1 (resolve_best_metric checks it against the run)
    best_metric: str = _f("", OneOf(("",) + BEST_METRICS))
    max_steps_per_epoch: int = _f(0, AT_LEAST_0)  # 0: the whole loader (a smaller value is for smoke tests)
    deterministic: bool = False
    threads: int = _f(0, AT_LEAST_0)  # torch intra-op threads per process; 0: torch's default


@dataclass
class DistillCfg:
    """DeiT-style distillation through the distillation token (needs a ``*_distilled`` model)."""

    mode: str = _f("none", OneOf(DISTILL_MODES))
    teacher: str = ""  # a timm or torchvision model name, or a checkpoint path
    teacher_weights: str = ""  # weights for a teacher given by name
    alpha: float = _f(0.5, PROB)
    tau: float = _f(1.0, POSITIVE)


@dataclass
class EmaCfg:
    """An exponential moving average of the weights, evaluated next to the raw weights."""

    enabled: bool = True
    decay: float = _f(0.99996, FRACTION)
    warmup: bool = False  # decay ramps as (1 + n) / (10 + n), useful for short runs


@dataclass
class LogCfg:
    interval: int = _f(50, AT_LEAST_1)  # steps between progress lines
    tensorboard: bool = False
    plot: bool = True
    progress_bar: str = _f("auto", OneOf(PROGRESS_BARS))  # auto: on a terminal


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


# Keys that were renamed, old -> new, each within its section: a recipe, a run's config.yaml or a checkpoint's
# config that still uses the old name is read as the new one, with a warning.
_RENAMED = {"data.kind": "data.format"}


def renamed_keys(data: Any, *, warn: bool = True, where: str = "") -> Any:
    """``data`` (a nested config dict) with each old key of :data:`_RENAMED` moved to its new name; ``data``
    itself is left as it is. ``warn``: log one warning line per old key found (naming ``where`` it was found).

    Each layer of a config (a recipe, its base, the ``--set`` overrides) is renamed on its own before the layers
    are merged, so that a later layer's new key overrides an earlier layer's old one.

    Raises:
        ConfigError: the old and the new key are both given, with different values.
    """
    if not isinstance(data, dict):
        return data  # _update says what is wrong with it
    for old, new in _RENAMED.items():
        section, old_key = old.split(".")
        new_key = new.split(".")[1]
        values = data.get(section)
        if not isinstance(values, dict) or old_key not in values:
            continue
        values = dict(values)
        value = values.pop(old_key)
        if new_key in values and values[new_key] != value:
            raise ConfigError(f"{old}={value!r} and {new}={values[new_key]!r} disagree: {old} is the older name "
                              f"of {new}; give {new} only")
        values[new_key] = value
        data = {**data, section: values}
        if warn:
            log.warning("%s%s is now called %s: read as %s=%r%s", f"{where}: " if where else "", old, new, new, value,
                        " (rename it there)" if where else "")
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a (possibly partial) nested dict; unknown keys are errors, and keys that were
    renamed (``data.kind``: ``data.format``) are read under their new names with a warning."""
    cfg = Config()
    _update(cfg, renamed_keys(data))
    validate(cfg)
    return cfg


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, numbers, strings, None) of a config."""
    return dataclasses.asdict(cfg)


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
    """Check every value against what its field declares (:class:`Check`), then what only several fields
    together say; the first problem is one line naming the key, the value and what it may be.

    Raises:
        ConfigError: e.g. ``aug.smoothing=1.5 is out of range: it must be in [0, 1)``.
    """
    for section in dataclasses.fields(cfg):
        sub = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(sub):
            continue
        for f in dataclasses.fields(sub):
            check, value = f.metadata.get("check"), getattr(sub, f.name)
            if check is not None and value is not None and not check.ok(value, cfg):
                raise ConfigError(f"{section.name}.{f.name}={value!r} is not allowed: it must be {check.text(cfg)}")
    if cfg.distill.mode != "none" and not cfg.distill.teacher:
        raise ConfigError("distill.mode is set but distill.teacher is empty (a model name or checkpoint path)")
    resolve_best_metric(cfg)  # a metric EMA-off runs never compute fails here, before any work
