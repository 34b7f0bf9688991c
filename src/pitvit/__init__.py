"""pitvit: PiT, the Pooling-based Vision Transformer (Heo et al., ICCV 2021, arXiv 2103.16302), on PyTorch.

The model API is re-exported here from :mod:`pitvit.models`, imported on first use so that ``import pitvit``
(and the command line's ``--help``) stays light.
"""
from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

__all__ = ["PiT", "PiTConfig", "PretrainedCfg", "create_model", "list_models", "get_model_config",
           "get_pretrained_cfg", "load_weights", "save_weights", "save_pretrained", "read_checkpoint",
           "read_state_dict", "model_from_checkpoint", "register_with_timm", "__version__"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".models", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
