"""Evaluation of a model on a labelled dataset: top-1, top-5 and loss, on 1..N processes.

Also :func:`load_model`, the one way eval, predict and export turn a model name and/or a weights file into
a model in evaluation mode, with its preprocessing metadata (``model.pretrained_cfg``) and class names
(``model.class_names``, when the checkpoint carries them). ``convert`` reads weights without building a
model for inference, and ``benchmark`` times fresh models by name.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pitvit.models import PiT, create_model
from pitvit.utils.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["load_model", "preprocessing", "evaluate_model"]


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
        from pitvit.models import is_hub_reference, model_from_checkpoint, read_weights

        if not is_hub_reference(weights) and not Path(weights).exists():
            raise ConfigError(f"weights not found: {weights}")
        read = read_weights(weights, ema=ema)  # read once; its metadata also gives the class names
        if model_name:
            create_kwargs["model"] = model_name
        model = model_from_checkpoint(read, ema=ema, allow_nonfinite=allow_nonfinite, **create_kwargs)
        names = read.meta.get("class_names")
        if names and getattr(model, "class_names", None) is None:
            model.class_names = [str(n) for n in names]
    return model.eval()


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


def evaluate_model(
    model_name: str | None,
    weights: str | os.PathLike | None,
    data: str | os.PathLike | None,
    *,
    split: str = "val",
    kind: str = "auto",
    ema: bool = False,
    allow_nonfinite: bool = False,
    batch_size: int = 64,
    workers: int = 4,
    device: str = "auto",
    amp: str = "fp32",
    compile: bool = False,
) -> dict[str, Any]:
    """Top-1, top-5 and cross-entropy of a model on a labelled dataset, on 1..N processes.

    Run as is for one process, or under ``torchrun --nproc_per_node=N`` for several: each process takes
    its share of the dataset (every image exactly once overall) and the sums are all-reduced. The
    evaluation preprocessing is the model's own (:func:`preprocessing`), never a second copy.

    Args:
        model_name: a registered variant (may be omitted for a checkpoint that names its model).
        weights: checkpoint file or ``save_pretrained`` folder (``None``: random initialization).
        data: dataset root (see ``pitvit.data.build_dataset``; ``None`` is Fashion-MNIST).
        split: which split to evaluate.
        kind: dataset layout (``auto``, ``imagefolder``, ``list``, ``fashion_mnist``).
        ema: evaluate the EMA weights of a training checkpoint.
        allow_nonfinite: load weights holding NaN or inf instead of refusing them.
        batch_size: images per process and step.
        workers: data-loading processes per process.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: autocast precision: ``fp32`` (the default: published figures are measured in it), ``auto``
            (bf16 where the device computes it natively, else fp32), ``bf16`` or ``fp16``.
        compile: evaluate through ``torch.compile`` (inductor).

    Returns:
        ``{"top1", "top5", "loss", "n", ...}`` plus what was evaluated (model, weights, split, images
        skipped as unreadable, processes, the precision that ran as ``amp``, preprocessing).
    """
    from pitvit.data import FASHION_MNIST_CLASSES, build_dataset, build_loader, build_transform
    from pitvit.train.engine import evaluate
    from pitvit.utils.precision import amp_dtype, resolve_amp
    from pitvit.utils.distributed import all_reduce_sum, cleanup_distributed, init_distributed, is_distributed

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    started_group = not is_distributed()
    dist_info = init_distributed(device)
    try:
        amp = resolve_amp(amp, dist_info.device)
        dtype = amp_dtype(amp, dist_info.device)
        model = load_model(model_name, weights, ema=ema, allow_nonfinite=allow_nonfinite)
        if data is None and model.num_classes != len(FASHION_MNIST_CLASSES):
            raise ConfigError(f"no --data: eval then reads Fashion-MNIST, whose {len(FASHION_MNIST_CLASSES)} classes "
                              f"do not fit {getattr(model, 'model_name', 'the model')}'s {model.num_classes} "
                              f"outputs; pass --data DIR with the dataset the model was trained on")
        pre = preprocessing(model)
        transform = build_transform(False, **pre, in_chans=model.cfg.in_chans)
        dataset = build_dataset(data, split, kind=kind, transform=transform)
        targets = getattr(dataset, "targets", None)
        if targets is not None and len(targets) and max(targets) >= model.num_classes:
            raise ConfigError(f"{data} ({split}) has labels up to {max(targets)}, but the model "
                              f"has {model.num_classes} outputs; evaluate a model trained on these classes")
        loader = build_loader(dataset, batch_size=batch_size, train=False, seed=0, num_workers=workers,
                              rank=dist_info.rank, world_size=dist_info.world_size)
        model.to(dist_info.device)
        metrics = evaluate(torch.compile(model) if compile else model, loader, device=dist_info.device,
                           amp_dtype=dtype)
        skipped = int(all_reduce_sum([float(loader.skipped)], dist_info.device)[0])
        result: dict[str, Any] = {
            "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "n": metrics["n"],
            "skipped_images": skipped, "model": getattr(model, "model_name", model_name),
            "weights": None if weights is None else str(weights), "ema": ema,
            "data": None if data is None else str(data), "split": split, "processes": dist_info.world_size,
            "device": str(dist_info.device), "amp": amp, "compile": compile,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
        }
        return result
    finally:
        if started_group:
            cleanup_distributed()
