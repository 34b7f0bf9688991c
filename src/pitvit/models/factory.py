"""Building models: a registered variant with :func:`create_model`, or the model a checkpoint holds with
:func:`model_from_checkpoint`. This module sits above the registry (architectures) and the loaders (weights),
the way timm's ``_factory`` sits above its ``_registry``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pitvit.utils.errors import CheckpointError, ConfigError, UnknownOptionError

from .hub import HUB_PREFIX, is_hub_reference, parse_hub_reference
from .layouts import describe_state_dict
from .loading import Source, load_weights, read_weights
from .pit import PiT, PiTConfig
from .registry import PretrainedCfg, get_model_config, get_pretrained_cfg, is_model, list_models

__all__ = ["create_model", "model_from_checkpoint", "pretrained_reference"]

_CFG_FIELDS = tuple(PiTConfig.__dataclass_fields__)


def _arch_changes(options: Mapping[str, Any], caller: str) -> dict[str, Any]:
    """The :class:`PiTConfig` changes among ``options`` (``None`` means "keep"); the one place where an
    unknown keyword is refused."""
    unknown = sorted(set(options) - set(_CFG_FIELDS))
    if unknown:
        raise UnknownOptionError(f"{caller} got unknown option(s) {unknown}; valid: {sorted(_CFG_FIELDS)} "
                                 f"(and device, dtype)")
    return {k: v for k, v in options.items() if v is not None}


def _build(name: str, cfg: PiTConfig, pretrained_cfg: PretrainedCfg | None, device: Any, dtype: Any) -> PiT:
    model = PiT(cfg, device=device, dtype=dtype)
    if pretrained_cfg is not None:
        model.pretrained_cfg = pretrained_cfg
    model.model_name = name
    return model


def pretrained_reference(name: str) -> str:
    """The ``hf-hub:`` reference of a variant's published weights.

    Raises:
        ConfigError: an unknown variant, or one without published weights.
    """
    hub_id = get_pretrained_cfg(name).hf_hub_id
    if not hub_id:
        published = [n for n in list_models() if get_pretrained_cfg(n).hf_hub_id]
        raise ConfigError(f"{name} has no published weights (variants with weights: {', '.join(published)}); "
                          f"pass weights=PATH instead")
    return HUB_PREFIX + hub_id


def _published_as(source: str) -> str | None:
    """The variant whose published weights ``source`` is (an ``hf-hub:`` reference), if any."""
    if not is_hub_reference(source):
        return None
    repo_id, _ = parse_hub_reference(source)
    return next((n for n in list_models() if get_pretrained_cfg(n).hf_hub_id == repo_id), None)


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: Source | None = None,
    num_classes: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    in_chans: int | None = None,
    drop_path_rate: float | None = None,
    device: Any = None,
    dtype: Any = None,
    **overrides: Any,
) -> PiT:
    """Build a registered PiT variant, optionally with weights.

    Args:
        name: a registered variant (``list_models()``).
        pretrained: load the variant's published ImageNet weights (``PretrainedCfg.hf_hub_id``), downloaded
            by ``huggingface_hub`` into its cache on first use; nothing is downloaded otherwise.
        weights: a checkpoint path, a ``save_pretrained`` directory, an ``hf-hub:OWNER/NAME`` reference, or a
            state dict in any format that :func:`pitvit.load_weights` reads.
        num_classes: classifier outputs (default: the variant's, 1000 for the ImageNet variants); with
            weights for another number of classes the head is dropped with a warning and freshly initialized.
        img_size: input size, int or (height, width) (default: the variant's, 224 for the ImageNet variants);
            weights stored for another size have their position embedding resized bicubically.
        in_chans: input channels (default: the variant's).
        drop_path_rate: stochastic depth rate (official per-block rule; default 0).
        device: where to create the parameters (``"meta"``: allocate nothing).
        dtype: the parameters' dtype.
        **overrides: any other :class:`PiTConfig` field (``drop_rate``, ``global_pool``, ``depth``, ...).

    Returns:
        The model, in training mode as ``nn.Module`` instances are created.

    Raises:
        ConfigError: an unknown name, or ``pretrained`` for a variant without published weights.
        TypeError: an unknown keyword.
        CheckpointError: weights that cannot be read, fetched or fitted.
    """
    changes = _arch_changes(dict(overrides, num_classes=num_classes, img_size=img_size, in_chans=in_chans,
                                   drop_path_rate=drop_path_rate), "create_model")
    cfg = get_model_config(name).replace(**changes)
    if pretrained:
        if weights is not None:
            raise ConfigError("give pretrained=True or weights=..., not both")
        weights = pretrained_reference(name)
    model = _build(name, cfg, get_pretrained_cfg(name), device, dtype)
    if weights is not None:
        load_weights(model, weights)
    return model


def model_from_checkpoint(source: Source, *, ema: bool = False, model: str | None = None, device: Any = None,
                          dtype: Any = None, **options: Any) -> PiT:
    """Build the model a checkpoint holds and load it.

    pitvit checkpoints and ``save_pretrained`` directories carry the model's name and architecture, and a
    variant's published weights (``hf-hub:timm/pit_ti_224.in1k``) name it by their reference; for other
    formats pass ``model=NAME``, and the number of classes, input size and channels are read off the
    checkpoint's shapes.

    Args:
        source: a path, directory, ``hf-hub:`` reference, state dict or :class:`~pitvit.models.Weights`.
        ema: build from the EMA weights.
        model: the registered variant, for checkpoints that do not name theirs.
        device: where to create the parameters.
        dtype: the parameters' dtype.
        **options: any :class:`PiTConfig` field (``num_classes``, ``img_size``, ``drop_path_rate``, ...);
            they override what the checkpoint says (``None`` keeps it).
    """
    changes = _arch_changes(options, "model_from_checkpoint")
    weights = read_weights(source, ema=ema)
    stored_cfg = weights.meta.get("model_cfg")
    if stored_cfg and (model is None or model == weights.meta.get("model_name")):
        name = weights.meta.get("model_name") or ""
        cfg = PiTConfig(**{k: v for k, v in stored_cfg.items() if k in _CFG_FIELDS}).replace(**changes)
        stored_pre = weights.meta.get("pretrained_cfg")
        pre = (PretrainedCfg.from_dict(stored_pre) if stored_pre else
               get_pretrained_cfg(name) if is_model(name) else None)
    else:
        name = model or weights.meta.get("model_name") or _published_as(weights.source)
        info = weights.info
        if not name:
            hint = (f"model={info['variant']!r}, or --model {info['variant']} on the command line"
                    if info["variant"] else "model=NAME, or --model NAME on the command line")
            raise CheckpointError(f"{weights.source}: a {weights.container} does not say which model it holds; "
                                  f"name it ({hint}); it looks like {describe_state_dict(info)}")
        base = get_model_config(name)
        found: dict[str, Any] = {"num_classes": info["num_classes"], "in_chans": info["in_chans"]}
        if info["grid"]:
            found["img_size"] = tuple((g - 1) * base.stride + base.patch_size for g in info["grid"])
        cfg = base.replace(**{**found, **changes})
        pre = get_pretrained_cfg(name)
    net = _build(name, cfg, pre, device, dtype)
    load_weights(net, weights)
    return net
