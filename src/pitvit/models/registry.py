"""The registry of PiT variants: one small function per variant, ``create_model`` and ``list_models``.

Each variant function returns its :class:`PiTConfig`; its preprocessing and provenance live apart, in a
:class:`PretrainedCfg` (what the published weights expect at evaluation, and what the paper reports).
"""
from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any, Callable

from .pit import PiT, PiTConfig

__all__ = ["PretrainedCfg", "register_model", "create_model", "list_models", "get_pretrained_cfg",
           "get_model_config", "is_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """What a variant's weights expect and what the paper measured; not part of the architecture.

    Attributes:
        input_size: (channels, height, width) at evaluation.
        crop_pct: center-crop fraction at evaluation (resize to ``size / crop_pct``, then crop ``size``).
        interpolation: resize filter at evaluation.
        mean: per-channel normalization mean.
        std: per-channel normalization standard deviation.
        num_classes: classes of the published weights.
        timm_name: the same architecture in timm, or ``""``.
        paper_top1: ImageNet top-1 reported in the paper, or ``None``.
        paper_v100_img_s: throughput on one V100 at batch 128 reported in the paper, or ``None``.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 1000
    timm_name: str = ""
    paper_top1: float | None = None
    paper_v100_img_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class _Entry:
    fn: Callable[[], PiTConfig]
    pretrained: PretrainedCfg


_REGISTRY: dict[str, _Entry] = {}


def register_model(pretrained: PretrainedCfg | None = None) -> Callable[[Callable[[], PiTConfig]], Callable[[], PiTConfig]]:
    """Decorator: register a function returning a :class:`PiTConfig` under its own name."""

    def deco(fn: Callable[[], PiTConfig]) -> Callable[[], PiTConfig]:
        if fn.__name__ in _REGISTRY:
            raise ValueError(f"model {fn.__name__!r} is registered twice")
        _REGISTRY[fn.__name__] = _Entry(fn, pretrained or PretrainedCfg())
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
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}"
                         + ("" if close == list(_REGISTRY) else f" (did you mean one of {sorted(close)}?)")) from None


def get_model_config(name: str) -> PiTConfig:
    """The architecture of a registered variant, as registered."""
    return _entry(name).fn()


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """Preprocessing and provenance of a registered variant."""
    return _entry(name).pretrained


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    drop_path_rate: float = 0.0,
    weights: Any = None,
    **overrides: Any,
) -> PiT:
    """Build a registered PiT variant, optionally with weights.

    Args:
        name: a registered variant (``list_models()``).
        num_classes: classifier outputs (default: the variant's, 1000 for the ImageNet variants); with
            weights for another number of classes the head is dropped with a warning and freshly initialized.
        img_size: input size, int or (height, width) (default: the variant's, 224 for the ImageNet variants);
            weights stored for another size have their position embedding resized bicubically.
        in_chans: input channels (default 3).
        drop_path_rate: stochastic depth rate (official per-block rule).
        weights: a checkpoint path, a ``save_pretrained`` directory, or a state dict in any format that
            :func:`pitvit.load_weights` reads.
        **overrides: any other :class:`PiTConfig` field (``drop_rate``, ``depth``, ...).

    Returns:
        The model, in training mode as ``nn.Module`` instances are created.
    """
    cfg = get_model_config(name)
    changes: dict[str, Any] = {"drop_path_rate": drop_path_rate}
    if num_classes is not None:
        changes["num_classes"] = num_classes
    if img_size is not None:
        changes["img_size"] = img_size
    if in_chans is not None:
        changes["in_chans"] = in_chans
    valid = set(PiTConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise TypeError(f"create_model got unknown option(s) {unknown}; valid: {sorted(valid)}")
    changes.update(overrides)
    model = PiT(cfg.replace(**changes))
    model.pretrained_cfg = get_pretrained_cfg(name)
    model.model_name = name
    if weights is not None:
        from .weights import load_weights  # weights import the registry, not the other way round

        load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------- the variants
def _paper(top1: float, img_s: float | None, timm_name: str) -> PretrainedCfg:
    return PretrainedCfg(crop_pct=0.9, timm_name=timm_name, paper_top1=top1, paper_v100_img_s=img_s)


@register_model(_paper(73.0, 3030, "pit_ti_224"))
def pit_ti() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(32, 32, 32), depth=(2, 6, 4), heads=(2, 4, 8))


@register_model(_paper(78.1, 2128, "pit_xs_224"))
def pit_xs() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(2, 4, 8))


@register_model(_paper(80.9, 1266, "pit_s_224"))
def pit_s() -> PiTConfig:
    return PiTConfig(patch_size=16, stride=8, base_dims=(48, 48, 48), depth=(2, 6, 4), heads=(3, 6, 12))


@register_model(_paper(82.0, 348, "pit_b_224"))
def pit_b() -> PiTConfig:
    return PiTConfig(patch_size=14, stride=7, base_dims=(64, 64, 64), depth=(3, 6, 4), heads=(4, 8, 16))


@register_model(_paper(74.6, None, "pit_ti_distilled_224"))
def pit_ti_distilled() -> PiTConfig:
    return pit_ti().replace(distilled=True)


@register_model(_paper(79.1, None, "pit_xs_distilled_224"))
def pit_xs_distilled() -> PiTConfig:
    return pit_xs().replace(distilled=True)


@register_model(_paper(81.9, None, "pit_s_distilled_224"))
def pit_s_distilled() -> PiTConfig:
    return pit_s().replace(distilled=True)


@register_model(_paper(84.0, None, "pit_b_distilled_224"))
def pit_b_distilled() -> PiTConfig:
    return pit_b().replace(distilled=True)


@register_model(PretrainedCfg(input_size=(3, 32, 32), crop_pct=1.0, num_classes=10))
def pit_test() -> PiTConfig:
    """A tiny variant for fast tests: two blocks, widths 16/32/64, 32 px inputs."""
    return PiTConfig(patch_size=4, stride=2, base_dims=(8, 8, 8), depth=(1, 1, 1), heads=(2, 4, 8),
                     img_size=32, num_classes=10)


@register_model(PretrainedCfg(input_size=(1, 28, 28), crop_pct=1.0, mean=(0.2860,), std=(0.3530,),
                              num_classes=10))
def pit_nano() -> PiTConfig:
    """A small PiT for 28 px grayscale images (the Fashion-MNIST demo): 6 px patches at stride 3 (8x8 tokens)."""
    return PiTConfig(patch_size=6, stride=3, base_dims=(16, 16, 16), depth=(1, 2, 2), heads=(2, 4, 8),
                     img_size=28, in_chans=1, num_classes=10)
