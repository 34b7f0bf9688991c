"""pitvit: PiT, the Pooling-based Vision Transformer (Heo et al., ICCV 2021, arXiv 2103.16302), on PyTorch."""
from .models import (PiT, PiTConfig, PretrainedCfg, create_model, get_model_config, get_pretrained_cfg, list_models,
                     load_weights, model_from_checkpoint, read_checkpoint, read_state_dict, register_with_timm,
                     save_pretrained, save_weights)

__version__ = "0.1.0"
__all__ = ["PiT", "PiTConfig", "PretrainedCfg", "create_model", "list_models", "get_model_config",
           "get_pretrained_cfg", "load_weights", "save_weights", "save_pretrained", "read_checkpoint",
           "read_state_dict", "model_from_checkpoint", "register_with_timm", "__version__"]
