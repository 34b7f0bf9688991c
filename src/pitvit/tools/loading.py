"""The model that eval, predict, export and the inference backends run: :func:`load_model` turns a model name
and/or a weights file into a model in evaluation mode, with its preprocessing metadata (``model.pretrained_cfg``,
read by :func:`pitvit.models.resolve_preprocessing`) and class names (``model.class_names``, when the checkpoint
carries them).
``convert`` reads weights without building a model for inference, and ``benchmark`` times fresh models by name.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from pitvit.models import PiT, create_model
from pitvit.utils.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["load_model"]


def load_model(model_name: str | None = None, weights: str | os.PathLike | None = None, *, ema: bool = False,
               allow_nonfinite: bool = False, **create_kwargs: Any) -> PiT:
    """A registered model, with weights from any format ``pitvit.models.read_weights`` reads, in eval mode.

    Args:
        model_name: a registered variant; may be left out for a pitvit checkpoint or a ``save_pretrained``
            folder, which name their model (given anyway, it must agree).
        weights: a checkpoint file, ``save_pretrained`` folder or ``hf-hub:OWNER/NAME`` reference (fetched
            into the Hugging Face cache on first use); ``None`` keeps the random initialization,
            drawn with seed 0 (and logs a warning saying so).
        ema: take the EMA weights of a pitvit training checkpoint.
        allow_nonfinite: load weights holding NaN or inf instead of refusing them.
        **create_kwargs: passed to ``create_model`` (``img_size``, ``num_classes``, ...).

    Raises:
        ConfigError: ``weights`` does not exist (the message names it), an unknown model name (the message
            lists the registered ones), or neither a name nor weights that name their model.
    """
    if weights is None:
        if not model_name:
            raise ConfigError("give a model name (--model), weights that name their model (--weights), or both")
        if ema:
            raise ConfigError("--ema needs --weights: a training checkpoint holding EMA weights")
        # A fixed seed: every process of a distributed run (and every run) gets the same random weights,
        # without disturbing the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model(model_name, **create_kwargs)
        log.warning("note: no weights given, %s is randomly initialized (seed 0)", model_name)
    else:
        from pitvit.models import is_hub_reference, model_from_checkpoint

        if not is_hub_reference(weights) and not Path(weights).exists():
            raise ConfigError(f"weights not found: {weights}")
        if model_name:
            create_kwargs["model"] = model_name
        # class names: load_weights sets them
        model = model_from_checkpoint(weights, ema=ema, allow_nonfinite=allow_nonfinite, **create_kwargs)
    return model.eval()
