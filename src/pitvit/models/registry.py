"""The registry of PiT variants: one small function per variant, and the lookups ``list_models`` and friends.

Each variant function returns its :class:`PiTConfig` (the architecture); its preprocessing and where its
published weights live are kept apart, in a :class:`PretrainedCfg`. Building a model, with or without
weights, is :func:`pitvit.models.create_model`'s job (``factory.py``); this module only knows architectures.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterator

from pitvit.utils.errors import ConfigError

from .pit import PiTConfig

__all__ = ["PretrainedCfg", "register_model", "list_models", "get_pretrained_cfg", "get_model_config", "is_model",
           "PREPROCESSING_KEYS", "resolve_preprocessing"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg(Mapping):
    """What a variant's weights expect at evaluation, and where they are published; not the architecture.

    It reads as a dict too (``cfg["input_size"]``, ``cfg.get("crop_pct")``, ``dict(cfg)``), with timm's key
    names, so ``timm.data.resolve_data_config(model=model)`` and other timm-based code take it as it is.

    Attributes:
        input_size: (channels, height, width) at evaluation.
        crop_pct: center-crop fraction at evaluation (resize to ``size / crop_pct``, then crop ``size``).
        interpolation: resize filter at evaluation.
        mean: per-channel normalization mean.
        std: per-channel normalization standard deviation.
        num_classes: classes of the published weights.
        first_conv: the stem convolution's module name (timm adapts it for other ``in_chans``).
        classifier: the head module name(s) (timm drops them for another ``num_classes``).
        fixed_input_size: whether the model only runs at ``input_size`` (never for PiT: any size works).
        hf_hub_id: the Hugging Face Hub repository of the published weights (``""``: none published).
        timm_name: the same architecture in timm, or ``""``.
        paper_top1: ImageNet top-1 reported in the paper, or ``None``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    first_conv: str = "patch_embed.conv"
    classifier: str | tuple[str, ...] = "head"
    fixed_input_size: bool = False
    hf_hub_id: str = ""
    timm_name: str = ""
    paper_top1: float | None = None

    def __getitem__(self, key: str) -> Any:
        if key in self._keys():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @classmethod
    def _keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PretrainedCfg":
        """Build from any mapping (a ``to_dict`` result, timm's dict); keys it does not know are ignored."""
        known = set(cls._keys())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class _Entry:
    fn: Callable[[], PiTConfig]
    pretrained: PretrainedCfg


_REGISTRY: dict[str, _Entry] = {}


def register_model(pretrained_cfg: PretrainedCfg | None = None
                   ) -> Callable[[Callable[[], PiTConfig]], Callable[[], PiTConfig]]:
    """Decorator: register a function returning a :class:`PiTConfig` under its own name."""

    def deco(fn: Callable[[], PiTConfig]) -> Callable[[], PiTConfig]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = _Entry(fn, pretrained_cfg or PretrainedCfg())
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def is_model(name: str) -> bool:
    return name in _REGISTRY


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = [n for n in _REGISTRY if name.split("_")[0] in n] or list(_REGISTRY)
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(list_models())}"
                          + ("" if close == list(_REGISTRY) else f" (did you mean one of {sorted(close)}?)")) from None


def get_model_config(name: str) -> PiTConfig:
    """The architecture of a registered variant, as registered.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones).
    """
    return _entry(name).fn()


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """Preprocessing and published weights of a registered variant."""
    return _entry(name).pretrained


# The fields of a PretrainedCfg that say how images are prepared for the model (build_transform's arguments).
PREPROCESSING_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")


def resolve_preprocessing(source: str | Mapping[str, Any] | Any, **overrides: Any) -> dict[str, Any]:
    """The preprocessing a model expects, resolved in one order: the registry's (``source`` a variant's name), or
    a checkpoint's (``source`` a model built from one, or a stored ``pretrained_cfg`` mapping), then the user's
    ``overrides``.

    Args:
        source: a registered name, a model with ``pretrained_cfg``, or a ``pretrained_cfg`` mapping.
        **overrides: any of :data:`PREPROCESSING_KEYS`; ``None`` (or an empty list or string, or an input size
            of 0) keeps the source's value; an ``int`` input size is a square side at the source's channels.

    Returns:
        ``input_size`` (C, H, W), ``crop_pct``, ``interpolation``, ``mean``, ``std``, as plain data: the keyword
        arguments of ``pitvit.data.build_transform`` for evaluation.

    Raises:
        ConfigError: an unknown variant name.
    """
    if isinstance(source, str):
        cfg: Any = get_pretrained_cfg(source)
    elif isinstance(source, Mapping):
        cfg = source
    else:
        cfg = getattr(source, "pretrained_cfg", None)
        if cfg is None:
            raise ValueError("the model carries no pretrained_cfg (build it with pitvit.create_model)")
    unknown = sorted(set(overrides) - set(PREPROCESSING_KEYS))
    if unknown:
        raise TypeError(f"resolve_preprocessing: unknown option(s) {unknown}; valid: {list(PREPROCESSING_KEYS)}")
    out = {"input_size": tuple(cfg["input_size"]), "crop_pct": float(cfg["crop_pct"]),
           "interpolation": str(cfg["interpolation"]), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}
    for key, value in overrides.items():
        if value is None or value == "" or (isinstance(value, (list, tuple)) and not value) or (
                key == "input_size" and value == 0):
            continue
        if key == "input_size" and isinstance(value, int):
            value = (out["input_size"][0], value, value)
        out[key] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


# ---------------------------------------------------------------------------- the variants
def _paper(top1: float, timm_name: str, distilled: bool = False) -> PretrainedCfg:
    # timm publishes all eight ImageNet-1k checkpoints (converted from the official release) on the Hub.
    return PretrainedCfg(crop_pct=0.9, classifier=("head", "head_dist") if distilled else "head",
                         hf_hub_id=f"timm/{timm_name}.in1k", timm_name=timm_name, paper_top1=top1)


@register_model(_paper(73.0, "pit_ti_224"))
def pit_ti() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4), heads=(2, 4, 8))


@register_model(_paper(78.1, "pit_xs_224"))
def pit_xs() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(2, 4, 8))


@register_model(_paper(80.9, "pit_s_224"))
def pit_s() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(3, 6, 12))


@register_model(_paper(82.0, "pit_b_224"))
def pit_b() -> PiTConfig:
    return PiTConfig(patch_size=14, stride=7, base_dims=(64, 64, 64), depth=(3, 6, 4), heads=(4, 8, 16))


@register_model(_paper(74.6, "pit_ti_distilled_224", distilled=True))
def pit_ti_distilled() -> PiTConfig:
    return pit_ti().replace(distilled=True)


@register_model(_paper(79.1, "pit_xs_distilled_224", distilled=True))
def pit_xs_distilled() -> PiTConfig:
    return pit_xs().replace(distilled=True)


@register_model(_paper(81.9, "pit_s_distilled_224", distilled=True))
def pit_s_distilled() -> PiTConfig:
    return pit_s().replace(distilled=True)


@register_model(_paper(84.0, "pit_b_distilled_224", distilled=True))
def pit_b_distilled() -> PiTConfig:
    return pit_b().replace(distilled=True)


@register_model(PretrainedCfg(input_size=(3, 32, 32), crop_pct=1.0, num_classes=10))
def pit_test() -> PiTConfig:
    """A tiny variant for fast tests: one block per stage (three in all), widths 16/32/64, 32 px inputs."""
    return PiTConfig(patch_size=4, stride=2, base_dims=(8, 8, 8), depth=(1, 1, 1), heads=(2, 4, 8),
                     img_size=32, num_classes=10)


@register_model(PretrainedCfg(input_size=(1, 28, 28), crop_pct=1.0, mean=(0.2860,), std=(0.3530,),
                              num_classes=10))
def pit_nano() -> PiTConfig:
    """A small PiT for 28 px grayscale images (the Fashion-MNIST demo): 6 px patches at stride 3 (8x8 tokens)."""
    return PiTConfig(patch_size=6, stride=3, base_dims=(16, 16, 16), depth=(1, 2, 2), heads=(2, 4, 8),
                     img_size=28, in_chans=1, num_classes=10)
