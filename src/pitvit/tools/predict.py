"""Classify images: the top-k class names and probabilities per image file, or per sample of a dataset
(any layout ``pitvit.data.build_dataset`` reads), there with the sample's true label.

Images go through the model's own evaluation preprocessing (``pitvit.data.build_transform`` with the
model's ``pretrained_cfg``). An image that cannot be read is returned with its reason and skipped; the others
still run.
"""
from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from pitvit.data.datasets import build_dataset, find_images
from pitvit.data.images import IMAGE_EXTENSIONS, SkippedSample, load_image
from pitvit.models import resolve_preprocessing
from pitvit.utils.errors import CheckpointError, ConfigError
from pitvit.utils.names import PREDICT_FORMATS

from .backends import Predictor, load_predictor
from .imagenet import class_names_for
from .loading import load_model

log = logging.getLogger(__name__)

__all__ = ["Prediction", "expand_inputs", "predict_files", "predict_dataset", "predict", "format_predictions"]

FORMATS = PREDICT_FORMATS


@dataclass
class Prediction:
    """The top-k of one image: ``(class index, class name, probability)``, most probable first.

    ``path`` is the image file, or a dataset sample's name (``FILE:MEMBER`` of a shard...); ``label`` is a dataset
    sample's true class, ``(index, name)``, and ``None`` for an image file.
    """

    path: str
    top: list[tuple[int, str, float]] = field(default_factory=list)
    label: tuple[int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.label is not None:
            out["label"] = {"index": self.label[0], "name": self.label[1]}
        out["predictions"] = [{"index": i, "name": n, "prob": p} for i, n, p in self.top]
        return out


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


Label = tuple[int, str]  # a sample's true class: (index, name)
Item = tuple[str, Callable[[], "tuple[torch.Tensor, Label | None] | SkippedSample"]]  # (name, read it)


def _decoded_batches(items: Iterable[Item], batch_size: int, errors: list[tuple[str, str]]
                     ) -> Iterator[list[tuple[str, torch.Tensor, Label | None]]]:
    """Batches of ``(name, image tensor, true label or None)``, decoded by a thread while the caller runs the
    previous batch (PIL's decoding and resizing release the GIL).

    Args:
        items: ``(name, read)`` per sample, in order; ``read()`` gives ``(image tensor, label or None)``, or a
            :class:`SkippedSample` for an image that cannot be read, which goes to ``errors`` as ``(name, reason)``.
    """
    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        batch: list[tuple[str, torch.Tensor, Label | None]] = []
        try:
            for name, read in items:
                if stop.is_set():
                    return
                sample = read()
                if isinstance(sample, SkippedSample):  # report it and go on
                    errors.append((name, sample.reason))
                    continue
                batch.append((name, *sample))
                if len(batch) >= batch_size:
                    batches.put(batch)
                    batch = []
            batches.put(batch)
        except BaseException as e:  # handed to the caller, which raises it with its traceback
            batches.put(e)
        finally:
            batches.put(None)

    thread = threading.Thread(target=produce, name="pitvit-decode", daemon=True)
    thread.start()
    try:
        while (item := batches.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if item:
                yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            with contextlib.suppress(queue.Empty):
                batches.get_nowait()
            thread.join(0.05)


def _file_items(files: Iterable[str | os.PathLike], transform: Callable[[Any], torch.Tensor]) -> Iterator[Item]:
    """``(path, read)`` for image files, which carry no label."""
    def read(path: str | os.PathLike) -> tuple[torch.Tensor, None] | SkippedSample:
        img = load_image(path, strict=False)
        return img if isinstance(img, SkippedSample) else (transform(img), None)

    for f in files:
        yield str(f), functools.partial(read, f)


def _dataset_items(dataset: Any, transform: Callable[[Any], torch.Tensor]) -> Iterator[Item]:
    """``(sample name, read)`` for each sample of a dataset of ``(image, label)`` with ``classes``; an image that
    is not a tensor yet (a dataset built without a transform) gets ``transform``."""
    classes = list(getattr(dataset, "classes", None) or [])
    sample_name = getattr(dataset, "sample_name", None)

    def read(i: int) -> tuple[torch.Tensor, Label] | SkippedSample:
        item = dataset[i]
        if isinstance(item, SkippedSample):
            return item
        img, label = item
        label = int(label)
        return (img if isinstance(img, torch.Tensor) else transform(img),
                (label, classes[label] if label < len(classes) else str(label)))

    for i in range(len(dataset)):
        yield (sample_name(i) if sample_name is not None else f"[{i}]"), functools.partial(read, i)


def _classify(model: nn.Module | Predictor, items: Callable[[Callable[[Any], torch.Tensor]], Iterable[Item]], *,
              topk: int, batch_size: int, device: str | torch.device, amp: str, compile: bool, backend: str,
              threads: int | None, cache_dir: str | os.PathLike | None, calibration: str | os.PathLike | None,
              ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """The top-k of the samples ``items(transform)`` gives, ``transform`` being the model's preprocessing (the
    arguments as for :func:`predict_files`)."""
    from pitvit.data import build_transform

    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if isinstance(model, Predictor):  # an exported file, already loaded
        predictor = model
        names, pre, in_chans = predictor.class_names, predictor.preprocessing, predictor.input_size[0]
    else:
        names, pre, in_chans = class_names_for(model), resolve_preprocessing(model), model.cfg.in_chans
    if not names:
        raise CheckpointError("the model has no classifier head (num_classes=0); nothing to predict")
    k = min(topk, len(names))
    transform = build_transform(False, **pre, in_chans=in_chans)
    if not isinstance(model, Predictor):
        predictor = load_predictor(model, backend=backend, precision=amp, threads=threads, device=device,
                                   cache_dir=cache_dir, calibration=calibration, compile=compile)
    log.info("predict: %s", predictor.describe())
    results: list[Prediction] = []
    errors: list[tuple[str, str]] = []
    for batch in _decoded_batches(items(transform), batch_size, errors):
        probs = predictor(torch.stack([t for _, t, _ in batch])).softmax(dim=-1)
        values, indices = probs.topk(k, dim=-1)
        for (name, _, label), vs, ix in zip(batch, values.tolist(), indices.tolist()):
            results.append(Prediction(name, [(i, names[i], v) for i, v in zip(ix, vs)], label))
    return results, errors


def predict_files(model: nn.Module | Predictor, files: Iterable[str | os.PathLike], *, topk: int = 5,
                  batch_size: int = 32,
                  device: str | torch.device = "cpu", amp: str = "auto", compile: bool = False,
                  backend: str = "torch", threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                  calibration: str | os.PathLike | None = None,
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k predictions for image files, in the order given; images are decoded by a thread while the
    backend runs the previous batch.

    Args:
        model: a model with ``pretrained_cfg`` (its preprocessing) and optionally ``class_names``, or a
            :class:`~pitvit.tools.backends.Predictor` (an exported file; the backend options are then its own).
        files: image paths.
        topk: classes per image (at most the number of classes).
        batch_size: images per forward pass.
        device: where the model runs with the torch backend (``auto``: CUDA when available).
        amp: the precision: ``auto`` (bf16 where the device computes it natively, else fp32; the choice is
            logged), ``fp32`` (``none``), ``bf16``, ``fp16`` (CUDA) or ``int8`` (OpenVINO, ONNX Runtime).
        compile: run the model through ``torch.compile`` (inductor); the first batch compiles.
        backend: ``torch``, ``onnxruntime`` or ``openvino`` (see :mod:`pitvit.tools.backends`).
        threads: threads of the backend (default: the cores this process may use).
        cache_dir: where converted models are cached (see :func:`pitvit.tools.backends.cache_folder`).
        calibration: folder of images for int8.

    Returns:
        The predictions for the files that could be read, and ``(path, reason)`` for those that could not.
    """
    return _classify(model, lambda transform: _file_items(files, transform), topk=topk, batch_size=batch_size,
                     device=device, amp=amp, compile=compile, backend=backend, threads=threads, cache_dir=cache_dir,
                     calibration=calibration)


def predict_dataset(model: nn.Module | Predictor, dataset: Any, *, topk: int = 5, batch_size: int = 32,
                    device: str | torch.device = "cpu", amp: str = "auto", compile: bool = False,
                    backend: str = "torch", threads: int | None = None, cache_dir: str | os.PathLike | None = None,
                    calibration: str | os.PathLike | None = None,
                    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Top-k predictions for every sample of a labelled dataset, in its order, each with its true label.

    Args:
        model: as for :func:`predict_files`.
        dataset: a dataset of ``(image, label)`` with ``classes``, such as
            ``pitvit.data.build_dataset(root, split)`` (any layout: image folder, list files, ImageNet's archives,
            WebDataset shards, Parquet, Fashion-MNIST). Built without a transform, its PIL images get the model's
            preprocessing here; images that are already tensors are taken as they are. Samples are named by
            the dataset's ``sample_name(i)`` (the image file, ``FILE:MEMBER``, ``FILE:row N``, ``test[i]``).
        the others: as for :func:`predict_files`.

    Returns:
        The predictions (with ``label``) for the samples that could be read, and ``(name, reason)`` for those that
        could not.
    """
    return _classify(model, lambda transform: _dataset_items(dataset, transform), topk=topk, batch_size=batch_size,
                     device=device, amp=amp, compile=compile, backend=backend, threads=threads, cache_dir=cache_dir,
                     calibration=calibration)


def format_predictions(preds: Sequence[Prediction], fmt: str = "table") -> str:
    """Predictions as a text table, JSON (a list of ``{path, label, predictions}``) or CSV (one row per class);
    the true label (``label``; CSV: ``label_index``, ``label_name``) only for dataset samples."""
    labelled = any(p.label is not None for p in preds)
    if fmt == "json":
        return json.dumps([p.to_dict() for p in preds], indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["path", "rank", "index", "name", "prob"] + (["label_index", "label_name"] if labelled else []))
        for p in preds:
            label = ([] if not labelled else ["", ""] if p.label is None else list(p.label))
            for rank, (i, n, v) in enumerate(p.top, 1):
                w.writerow([p.path, rank, i, n, f"{v:.6f}"] + label)
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    lines = []
    for p in preds:
        lines.append(p.path if p.label is None else f"{p.path}  (label: {p.label[1]} ({p.label[0]}))")
        for i, n, v in p.top:
            lines.append(f"  {100 * v:6.2f}%  {n} ({i})")
    return "\n".join(lines)


def predict(model_name: str | None, weights: str | os.PathLike | None,
            inputs: Sequence[str | os.PathLike] | None = None, *, data: str | os.PathLike | None = None,
            split: str | None = None, data_format: str | None = None,
            topk: int = 5, batch_size: int = 32, device: str | torch.device = "cpu", amp: str = "auto",
            compile: bool = False, ema: bool = False, backend: str = "torch", threads: int | None = None,
            cache_dir: str | os.PathLike | None = None, calibration: str | os.PathLike | None = None,
            allow_nonfinite: bool = False) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Classify files and folders of images (folders searched recursively), or the samples of a dataset; the
    options as for :func:`predict_files`, ``ema`` and ``allow_nonfinite`` as for :func:`load_model`; int8
    calibrates on ``calibration``, or on the training data a run checkpoint names.

    Args:
        inputs: image files and folders; or, instead,
        data: a dataset's root (any layout :func:`pitvit.data.build_dataset` reads), whose ``split`` (default
            ``val``) is classified, each sample with its true label (see :func:`predict_dataset`).
        data_format: what ``data`` holds (``auto``, the default: detected; ``imagefolder``, ``list``,
            ``fashion_mnist``, ``imagenet``, ``wds``, ``parquet``).

    Returns:
        The predictions for the images that could be read, in input (dataset) order, and ``(path, reason)`` for
        the inputs that could not (missing, not an image, a folder without images).

    Raises:
        ConfigError: both or neither of ``inputs`` and ``data``; ``split`` or ``data_format`` without ``data``.
        DatasetError: ``data`` holds no dataset of that layout and split.
    """
    if bool(inputs) == (data is not None):
        raise ConfigError(("give either image files and folders or --data DIR, not both" if inputs else
                           "nothing to classify: give image files and folders, or --data DIR (a dataset)"))
    if data is None and (split is not None or data_format is not None):
        raise ConfigError("--split and --data-format say what to read from --data DIR; give --data, or leave "
                          "them out for image files")
    if data is not None:
        dataset = build_dataset(data, split or "val", kind=data_format or "auto")  # checked before the model loads
    else:
        files, problems = expand_inputs(inputs)
    if weights is not None and Path(weights).suffix in (".onnx", ".xml"):  # written by `pitvit export`
        model = load_predictor(weights, backend=backend, precision=amp, threads=threads)
    else:
        model = load_model(model_name, weights, ema=ema, allow_nonfinite=allow_nonfinite)
    if amp == "int8" and calibration is None:
        from .backends import default_calibration

        calibration = default_calibration(weights)
    common = dict(topk=topk, batch_size=batch_size, device=device, amp=amp, compile=compile, backend=backend,
                  threads=threads, cache_dir=cache_dir, calibration=calibration)
    if data is not None:
        return predict_dataset(model, dataset, **common)
    preds, errors = predict_files(model, files, **common)
    return preds, problems + errors
