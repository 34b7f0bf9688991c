"""pitvit: PiT, the Pooling-based Vision Transformer (Heo et al., ICCV 2021, arXiv 2103.16302), on PyTorch."""
from .models import (PiT, PiTConfig, PretrainedCfg, create_model, get_model_config, get_pretrained_cfg,
                     list_models)

__version__ = "0.1.0"
__all__ = ["PiT", "PiTConfig", "PretrainedCfg", "create_model", "list_models", "get_model_config",
           "get_pretrained_cfg", "load_weights", "save_weights", "save_pretrained", "read_checkpoint",
           "model_from_checkpoint", "__version__"]


def __getattr__(name: str):
    if name in ("load_weights", "save_weights", "save_pretrained", "read_checkpoint", "model_from_checkpoint"):
        from .models import weights

        return getattr(weights, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
