"""PiT models: the architecture, the registry of variants, and weight formats.

This package imports nothing from training, data or tools: a downstream project can use it alone.
"""
from .pit import PiT, PiTConfig, resize_pos_embed, token_grid
from .registry import (PretrainedCfg, create_model, get_model_config, get_pretrained_cfg, is_model,
                       list_models, register_model)

__all__ = ["PiT", "PiTConfig", "PretrainedCfg", "create_model", "list_models", "get_model_config",
           "get_pretrained_cfg", "is_model", "register_model", "resize_pos_embed", "token_grid",
           "load_weights", "save_weights", "save_pretrained", "read_checkpoint", "model_from_checkpoint"]


def __getattr__(name: str):
    # The weight formats are loaded on first use, keeping `import pitvit.models` light.
    if name in ("load_weights", "save_weights", "save_pretrained", "read_checkpoint", "model_from_checkpoint"):
        from . import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
