"""Evaluation of a model on a labelled dataset: top-1, top-5 and loss, on 1..N processes, on any inference
backend (:mod:`pitvit.tools.backends`).

The model comes from :func:`pitvit.tools.loading.load_model` (re-exported here).
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch

from pitvit.models import resolve_preprocessing
from pitvit.utils.errors import ConfigError

from .loading import load_model

log = logging.getLogger(__name__)

__all__ = ["load_model", "evaluate_model"]


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
    backend: str = "torch",
    threads: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    calibration: Any = None,
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
        kind: dataset layout (``auto``, ``imagefolder``, ``list``, ``fashion_mnist``, ``imagenet``, ``wds``,
            ``parquet``; see :func:`pitvit.data.build_dataset`).
        ema: evaluate the EMA weights of a training checkpoint.
        allow_nonfinite: load weights holding NaN or inf instead of refusing them.
        batch_size: images per process and step.
        workers: data-loading processes per process.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: the precision: ``fp32`` (the default: published figures are measured in it), ``auto``
            (bf16 where the device computes it natively, else fp32), ``bf16``, ``fp16`` (CUDA) or ``int8``
            (OpenVINO, ONNX Runtime).
        compile: evaluate through ``torch.compile`` (inductor).
        backend: ``torch``, ``onnxruntime`` or ``openvino`` (:mod:`pitvit.tools.backends`; those two on the CPU).
        threads: threads of the backend (default: the cores this process may use).
        cache_dir: where converted models are cached.
        calibration: int8's calibration images (default: the training data a run checkpoint names); ONNX Runtime
            needs none and only measures its top-1 agreement with fp32 on them.

    Returns:
        ``{"top1", "top5", "loss", "n", ...}`` plus what was evaluated (model, weights, split, images
        skipped as unreadable, processes, the backend, the precision that ran as ``amp`` and ``precision``,
        preprocessing).
    """
    from pitvit.data import FASHION_MNIST_CLASSES, build_dataset, build_loader, build_transform
    from pitvit.train.engine import evaluate
    from pitvit.utils.precision import amp_dtype
    from pitvit.utils.distributed import all_reduce_sum, cleanup_distributed, init_distributed, is_distributed

    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    started_group = not is_distributed()
    dist_info = init_distributed(device)
    try:
        from .backends import default_calibration, load_predictor, resolve_precision

        amp = resolve_precision(amp, backend, dist_info.device)
        model = load_model(model_name, weights, ema=ema, allow_nonfinite=allow_nonfinite)
        if data is None and model.num_classes != len(FASHION_MNIST_CLASSES):
            raise ConfigError(f"no --data: eval then reads Fashion-MNIST, whose {len(FASHION_MNIST_CLASSES)} classes "
                              f"do not fit {getattr(model, 'model_name', 'the model')}'s {model.num_classes} "
                              f"outputs; pass --data DIR with the dataset the model was trained on")
        pre = resolve_preprocessing(model)
        transform = build_transform(False, **pre, in_chans=model.cfg.in_chans)
        dataset = build_dataset(data, split, kind=kind, transform=transform)
        targets = getattr(dataset, "targets", None)
        if targets is not None and len(targets) and max(targets) >= model.num_classes:
            raise ConfigError(f"{data} ({split}) has labels up to {max(targets)}, but the model "
                              f"has {model.num_classes} outputs; evaluate a model trained on these classes")
        loader = build_loader(dataset, batch_size=batch_size, train=False, seed=0, num_workers=workers,
                              rank=dist_info.rank, world_size=dist_info.world_size)
        if backend == "torch":
            model.to(dist_info.device)
            metrics = evaluate(torch.compile(model) if compile else model, loader, device=dist_info.device,
                               amp_dtype=amp_dtype(amp, dist_info.device))
        else:
            predictor = load_predictor(model, backend=backend, precision=amp, threads=threads,
                                       cache_dir=cache_dir, calibration=calibration or default_calibration(weights))
            log.info("eval: %s", predictor.describe())
            metrics = evaluate(predictor.as_module(), loader, device=torch.device("cpu"))
        skipped = int(all_reduce_sum([float(loader.skipped)], dist_info.device)[0])
        result: dict[str, Any] = {
            "top1": metrics["top1"], "top5": metrics["top5"], "loss": metrics["loss"], "n": metrics["n"],
            "skipped_images": skipped, "model": getattr(model, "model_name", model_name),
            "weights": None if weights is None else str(weights), "ema": ema,
            "data": None if data is None else str(data), "split": split, "processes": dist_info.world_size,
            "device": str(dist_info.device) if backend == "torch" else "cpu", "amp": amp, "compile": compile,
            "backend": backend, "precision": amp,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()},
        }
        return result
    finally:
        if started_group:
            cleanup_distributed()
