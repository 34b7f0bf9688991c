"""PiT models: the architecture, the registry of variants, weight formats, and building models with weights.

This package imports nothing from data, training or tools: a downstream project can use it alone.

Modules, each with one job (imports only run down this list):

* ``pit``: the architecture (:class:`PiT`, :class:`PiTConfig`).
* ``registry``: the variants, their architectures and preprocessing (:class:`PretrainedCfg`).
* ``layouts``: every key rename and transpose between official, timm and Paddle layouts; detection.
* ``hub``: ``hf-hub:`` references, fetched with ``huggingface_hub`` into its cache.
* ``serialization``: the one safe reader of any file that may hold weights, the writers, content hashes.
* ``loading``: PiT weights into a model (layout, position-embedding resize, head surgery).
* ``factory``: :func:`create_model` and :func:`model_from_checkpoint`.
* ``timm_adapter``: :func:`register_with_timm`, pitvit's variants in timm's registry.
"""
from pitvit.utils.errors import CheckpointError

from .factory import create_model, model_from_checkpoint, pretrained_reference
from .hub import HUB_PREFIX, is_hub_reference
from .layouts import LAYOUTS, convert_state_dict, inspect_state_dict
from .loading import (LoadResult, Weights, describe_differences, load_weights, read_weights,
                      state_dict_differences)
from .pit import Attention, DropPath, PiT, PiTConfig, keyed_drop_path, resize_pos_embed, token_grid
from .registry import (PretrainedCfg, get_model_config, get_pretrained_cfg, is_model, list_models, register_model,
                       resolve_preprocessing)
from .serialization import (DIGEST_KEY, DIGESTS_KEY, SAVE_FORMATS, read_checkpoint, read_state_dict, save_pretrained,
                            save_weights, state_dict_digest, with_digests)
from .timm_adapter import register_with_timm

__all__ = ["PiT", "PiTConfig", "Attention", "DropPath", "keyed_drop_path", "PretrainedCfg", "create_model",
           "list_models", "get_model_config",
           "get_pretrained_cfg", "resolve_preprocessing", "is_model", "register_model", "resize_pos_embed",
           "token_grid", "pretrained_reference", "HUB_PREFIX", "is_hub_reference", "CheckpointError", "Weights",
           "LoadResult", "LAYOUTS", "SAVE_FORMATS", "convert_state_dict", "inspect_state_dict", "read_weights",
           "read_checkpoint", "read_state_dict", "load_weights", "save_weights", "save_pretrained",
           "model_from_checkpoint", "state_dict_differences", "describe_differences", "state_dict_digest",
           "with_digests", "DIGEST_KEY", "DIGESTS_KEY", "register_with_timm"]
