"""Classify image files: the top-k class names and probabilities per image.

Images go through the model's own evaluation preprocessing (``pitvit.data.build_transform`` with the
model's ``pretrained_cfg``). A file that cannot be read is returned with its reason and skipped; the others
still run.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from pitvit.data.datasets import find_images
from pitvit.data.images import IMAGE_EXTENSIONS, SkippedSample, load_image
from pitvit.utils.device import resolve_device
from pitvit.utils.precision import amp_dtype, autocast
from pitvit.utils.errors import CheckpointError, ConfigError
from pitvit.utils.names import PREDICT_FORMATS

from .evaluate import load_model, preprocessing
from .imagenet import class_names_for

__all__ = ["Prediction", "expand_inputs", "predict_files", "predict", "format_predictions"]

FORMATS = PREDICT_FORMATS


@dataclass
class Prediction:
    """The top-k of one image: ``(class index, class name, probability)``, most probable first."""

    path: str
    top: list[tuple[int, str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "predictions": [{"index": i, "name": n, "prob": p} for i, n, p in self.top]}


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files as given and the images found under folders (recursively, sorted).

    Returns:
        The files, and ``(path, reason)`` for inputs that do not exist or folders without images.
    """
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, left_out = find_images(p)  # the datasets' walk: links never loop, FIFOs are never opened
            problems.extend(left_out)
            if not found:
                problems.append((str(p), f"no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})"))
            files.extend(Path(f) for f in found)
        elif p.exists():
            files.append(p)  # a FIFO or device is refused, unopened, by load_image
        else:
            problems.append((str(p), "no such file or folder"))
    return files, problems


@torch.no_grad()
def predict_files(model: nn.Module, files: Iterable[str | os.PathLike], *, topk: int = 5, batch_size: int = 32,
                  device: str | torch.device = "cpu", amp: str = "auto",
                  compile: bool = False) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k predictions for image files, in the order given.

    Args:
        model: a model with ``pretrained_cfg`` (its preprocessing) and optionally ``class_names``.
        files: image paths.
        topk: classes per image (at most the number of classes).
        batch_size: images per forward pass.
        device: where the model runs (``auto``: CUDA when available).
        amp: autocast precision: ``auto`` (bf16 where the device computes it natively, else fp32; the choice
            is logged), ``fp32`` (or ``none``), ``bf16`` or ``fp16``.
        compile: run the model through ``torch.compile`` (inductor); the first batch compiles.

    Returns:
        The predictions for the files that could be read, and ``(path, reason)`` for those that could not.
    """
    from pitvit.data import build_transform

    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    names = class_names_for(model)
    if not names:
        raise CheckpointError("the model has no classifier head (num_classes=0); nothing to predict")
    k = min(topk, len(names))
    transform = build_transform(False, **preprocessing(model), in_chans=model.cfg.in_chans)
    device = resolve_device(device)
    autocast_dtype = amp_dtype(amp, device)  # auto: resolved and logged
    model = model.eval().to(device)
    dtype = next(model.parameters()).dtype
    run = torch.compile(model) if compile else model
    results: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    batch: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(device=device, dtype=dtype)
        with autocast(device, autocast_dtype):
            logits = run(x)
        probs = logits.float().softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        for (path, _), vs, ix in zip(batch, values.tolist(), indices.tolist()):
            results.append(Prediction(path, [(i, names[i], v) for i, v in zip(ix, vs)]))
        batch.clear()

    for f in files:
        img = load_image(f, strict=False)
        if isinstance(img, SkippedSample):  # report it and go on
            errors.append((str(f), img.reason))
            continue
        batch.append((str(f), transform(img)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return results, errors


def format_predictions(preds: Sequence[Prediction], fmt: str = "table") -> str:
    """Predictions as a text table, JSON (a list of ``{path, predictions}``) or CSV (one row per class)."""
    if fmt == "json":
        return json.dumps([p.to_dict() for p in preds], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "index", "name", "prob"])
        for p in preds:
            for rank, (i, n, v) in enumerate(p.top, 1):
                w.writerow([p.path, rank, i, n, f"{v:.6f}"])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    lines = []
    for p in preds:
        lines.append(p.path)
        for i, n, v in p.top:
            lines.append(f"  {100 * v:6.2f}%  {n} ({i})")
    return "\n".join(lines)


def predict(model_name: str | None, weights: str | os.PathLike | None, inputs: Sequence[str | os.PathLike], *,
            topk: int = 5, batch_size: int = 32, device: str | torch.device = "cpu", amp: str = "auto",
            compile: bool = False, ema: bool = False,
            allow_nonfinite: bool = False) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Classify files and folders of images (folders searched recursively); ``amp`` and ``compile`` as for
    :func:`predict_files`, ``ema`` and ``allow_nonfinite`` as for :func:`load_model`.

    Returns:
        The predictions for the images that could be read, in input order, and ``(path, reason)`` for the
        inputs that could not (missing, not an image, a folder without images).
    """
    files, problems = expand_inputs(inputs)
    model = load_model(model_name, weights, ema=ema, allow_nonfinite=allow_nonfinite)
    preds, errors = predict_files(model, files, topk=topk, batch_size=batch_size, device=device, amp=amp,
                                  compile=compile)
    return preds, problems + errors
