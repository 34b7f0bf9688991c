"""Evaluation of a model on a labelled dataset: top-1, top-5 and loss, on 1..N processes.

Also :func:`load_model`, the one way every tool (eval, predict, export, benchmark) turns a model name and
a weights file into a model in evaluation mode, with its preprocessing metadata (``model.pretrained_cfg``)
and class names (``model.class_names``, when the checkpoint carries them).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pitvit.models import PiT, create_model

__all__ = ["load_model", "preprocessing", "evaluate_model"]


def load_model(model_name: str | None = None, weights: str | os.PathLike | None = None, *, ema: bool = False,
               **create_kwargs: Any) -> PiT:
    """A registered model, with weights from any format ``pitvit.models.weights`` reads, in eval mode.

    Args:
        model_name: a registered variant; may be left out for a pitvit checkpoint or a ``save_pretrained``
            folder, which name their model (given anyway, it must agree).
        weights: a checkpoint file or ``save_pretrained`` folder; ``None`` keeps the random initialization
            (a note goes to stderr).
        ema: take the EMA weights of a pitvit training checkpoint.
        **create_kwargs: passed to ``create_model`` (``img_size``, ``num_classes``, ...).

    Raises:
        FileNotFoundError: ``weights`` does not exist (the message names it).
        ValueError: an unknown model name (the message lists the registered ones), or neither a name nor
            weights that name their model.
    """
    if weights is None:
        if not model_name:
            raise ValueError("give a model name (--model), weights that name their model (--weights), or both")
        if ema:
            raise ValueError("--ema needs --weights: a training checkpoint holding EMA weights")
        model = create_model(model_name, **create_kwargs)
        print(f"note: no weights given, {model_name} is randomly initialized", file=sys.stderr)
    else:
        path = Path(weights)
        if not path.exists():
            raise FileNotFoundError(f"weights not found: {path}")
        from pitvit.models.weights import model_from_checkpoint

        if model_name:
            create_kwargs["model"] = model_name
        model = model_from_checkpoint(path, ema=ema, **create_kwargs)
        if model_name and getattr(model, "model_name", model_name) != model_name:
            raise ValueError(f"{path} holds a {model.model_name}, not a {model_name}")
        if getattr(model, "class_names", None) is None and path.is_file():
            model.class_names = _checkpoint_class_names(path)
    return model.eval()


def _checkpoint_class_names(path: Path) -> list[str] | None:
    """``class_names`` of a pitvit checkpoint, if ``path`` is one (other formats carry none)."""
    from pitvit.models.weights import read_checkpoint

    try:
        ckpt = read_checkpoint(path)
    except Exception:  # a format read_checkpoint does not know: no names, the loader already read it
        return None
    names = ckpt.get("class_names") if isinstance(ckpt, dict) else None
    return [str(n) for n in names] if names else None


def preprocessing(model: nn.Module) -> dict[str, Any]:
    """The evaluation preprocessing a model's weights expect, read from ``model.pretrained_cfg``.

    Returns:
        ``input_size`` (C, H, W), ``crop_pct``, ``interpolation``, ``mean``, ``std``, as plain data: the
        keyword arguments of ``pitvit.data.build_transform`` for evaluation.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None:
        raise ValueError("the model carries no pretrained_cfg (build it with pitvit.create_model)")
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {"input_size": tuple(d["input_size"]), "crop_pct": float(d["crop_pct"]),
            "interpolation": str(d["interpolation"]), "mean": tuple(d["mean"]), "std": tuple(d["std"])}
