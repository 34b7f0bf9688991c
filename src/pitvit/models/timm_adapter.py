"""pitvit's variants in timm's registry, so timm-based code (feature extractors, ``features_only=True``, timm's
training script, ``timm.data.resolve_data_config``) builds pitvit models by name.

After :func:`register_with_timm`, ``timm.create_model("pitvit_ti", ...)`` builds ``pit_ti`` through timm's own
builder (``build_model_with_cfg``): timm's keyword arguments (``num_classes``, ``in_chans``, ``img_size``,
``drop_path_rate``, ``global_pool``, ``device``, ``dtype``, ...), its ``pretrained=True`` (the same Hub
weights as ``pitvit.create_model(..., pretrained=True)``, moved to pitvit's layout on load) and its
``features_only=True`` (timm's ``FeatureGetterNet`` over ``forward_intermediates``) all work. Each variant
``pit_X`` is registered as ``pitvit_X``, beside timm's own ``pit_*`` (a separate implementation).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .factory import create_model
from .layouts import convert_state_dict, detect_layout
from .loading import fit_pos_embed
from .pit import PiT
from .registry import PretrainedCfg, get_pretrained_cfg, list_models

__all__ = ["TIMM_PREFIX", "timm_name", "register_with_timm"]

TIMM_PREFIX = "pitvit_"
_PITVIT_ONLY = ("timm_name", "paper_top1")  # PretrainedCfg fields timm's PretrainedCfg does not have

# timm's register_model reads the registering module's `default_cfgs` (one pretrained config per name).
default_cfgs: dict[str, dict[str, Any]] = {}
_registered: list[str] = []


def timm_name(name: str) -> str:
    """The name a pitvit variant has in timm's registry: ``pit_ti`` -> ``pitvit_ti``."""
    return TIMM_PREFIX + name[len("pit_"):] if name.startswith("pit_") else TIMM_PREFIX + name


def _timm_cfg(pre: PretrainedCfg) -> dict[str, Any]:
    cfg = {k: v for k, v in pre.items() if k not in _PITVIT_ONLY}
    cfg.update(hf_hub_id=pre.hf_hub_id or None, license="apache-2.0", pool_size=None)
    return cfg


def _checkpoint_filter(state_dict: dict[str, torch.Tensor], model: PiT) -> dict[str, torch.Tensor]:
    """What timm's loader calls on downloaded weights: to pitvit's layout, position embedding to the model's
    grid. Heads and the stem are left to timm (it drops or adapts them by ``classifier``/``first_conv``)."""
    sd = convert_state_dict(state_dict, detect_layout(state_dict), "official")
    return fit_pos_embed(sd, model)[0]


def _entry_point(name: str) -> Callable[..., Any]:
    def entry(pretrained: bool = False, **kwargs: Any) -> Any:
        from timm.models import build_model_with_cfg

        out_indices = kwargs.pop("out_indices", (0, 1, 2))
        return build_model_with_cfg(
            lambda **model_kwargs: create_model(name, **model_kwargs), timm_name(name), pretrained,
            pretrained_filter_fn=_checkpoint_filter,
            feature_cfg={"feature_cls": "getter", "out_indices": out_indices},
            **kwargs)

    entry.__name__ = entry.__qualname__ = timm_name(name)
    entry.__module__ = __name__
    entry.__doc__ = f"pitvit's {name} built by timm (see pitvit.models.timm_adapter)."
    return entry


def register_with_timm() -> list[str]:
    """Register every pitvit variant in timm's model registry (once; later calls change nothing).

    Returns:
        The timm names registered, e.g. ``["pitvit_b", ..., "pitvit_ti", ...]``.
    """
    if _registered:
        return list(_registered)
    from timm.models import register_model

    for name in list_models():
        tname = timm_name(name)
        default_cfgs[tname] = _timm_cfg(get_pretrained_cfg(name))
        entry = _entry_point(name)
        globals()[tname] = entry  # timm lists the name in this module's __all__; keep the attribute there too
        register_model(entry)
        _registered.append(tname)
    return list(_registered)
