"""Datasets held in container files, read in place with random access: ImageNet's original archives
(``imagenet``), WebDataset shards (``wds``) and Parquet files (``parquet``).

:func:`detect_format` tells which of them a ``--data`` path holds for a split, :func:`build_records` builds the
dataset (a :class:`RecordDataset`: the samples of an index built once and cached, see :mod:`.index`). Every
format gives the same samples in the same order as the image folder it was packed from (``pitvit pack``), so
the sampler, the per-sample augmentation and resume are those of an image folder.

Where a split's files are, given ``ROOT`` and the split ``S``:

- ``wds``: ``ROOT/S/*.tar``, ``ROOT/S-*.tar``, ``ROOT/*-S-*.tar`` (the Hugging Face Hub's
  ``imagenet1k-train-0000.tar``), ``ROOT/data/S-*.tar``; or ``ROOT`` a brace pattern or glob, where ``{split}``
  stands for ``S`` (``/data/imagenet-{split}-{0000..1023}.tar``).
- ``parquet``: the same with ``.parquet`` (``ROOT/data/S-00000-of-00257.parquet`` is the Hub's layout).
- ``imagenet``: ``ROOT/ILSVRC2012_img_train.tar``, ``ROOT/ILSVRC2012_img_val.tar`` and
  ``ROOT/ILSVRC2012_devkit_t12.tar.gz``.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Callable

from pitvit.utils.errors import DatasetError
from pitvit.utils.names import DATA_FORMATS

from .imagenet import has_imagenet_archive, imagenet_index
from .index import SampleIndex
from .parquet import ParquetDataset, parquet_index
from .records import RecordDataset
from .tars import CLASSES_FILE, expand_braces, shard_files, tar_members, wds_index

__all__ = ["FORMATS", "detect_format", "build_records", "RecordDataset", "ParquetDataset", "SampleIndex",
           "CLASSES_FILE", "expand_braces", "shard_files", "tar_members"]

FORMATS = DATA_FORMATS

LAYOUTS = ("wds (ROOT/SPLIT/*.tar, ROOT/SPLIT-*.tar, ROOT/*-SPLIT-*.tar, ROOT/data/SPLIT-*.tar, or a brace "
           "pattern such as 'shards/{split}-{0000..0099}.tar'), parquet (the same with .parquet), imagenet "
           "(ROOT/ILSVRC2012_img_train.tar, ROOT/ILSVRC2012_img_val.tar + ROOT/ILSVRC2012_devkit_t12.tar.gz)")


def _is_pattern(root: str) -> bool:
    return any(c in root for c in "{*?[")


def _spec(root: str, split: str, suffix: str) -> str | None:
    """Where ``split``'s ``suffix`` files are under ``root``, or ``None``."""
    if _is_pattern(root):
        spec = root.replace("{split}", split)
        return spec if spec.endswith(suffix) else None
    folder = Path(root) / split
    if folder.is_dir():
        entries = list(os.scandir(folder))
        if any(e.name.endswith(suffix) and e.is_file() for e in entries) and not any(
                e.is_dir() and not e.name.startswith(".") for e in entries):
            return str(folder)
        return None
    for pattern in (f"{root}/{split}-*{suffix}", f"{root}/*-{split}-*{suffix}", f"{root}/data/{split}-*{suffix}"):
        if glob.glob(glob.escape(root) + pattern[len(root):]):
            return glob.escape(root) + pattern[len(root):]
    return None


def detect_format(root: str | os.PathLike, split: str) -> str | None:
    """``imagenet``, ``wds`` or ``parquet`` when ``root`` holds ``split`` in that format, else ``None``."""
    root = os.fspath(root)
    if not _is_pattern(root) and has_imagenet_archive(root, split):
        return "imagenet"
    for kind, suffix in (("wds", ".tar"), ("parquet", ".parquet")):
        if _spec(root, split, suffix) is not None:
            return kind
    return None


def build_records(kind: str, root: str | os.PathLike, split: str, transform: Callable[[Any], Any] | None = None,
                  *, strict_images: bool = False, image_column: str = "", label_column: str = "") -> RecordDataset:
    """The dataset of ``split`` in ``root`` read as ``kind`` (one of :data:`FORMATS`).

    Raises:
        DatasetError: the split's files are not found or are malformed (the message names the file and the
            member or row).
    """
    root = os.fspath(root)
    if kind == "imagenet":
        return RecordDataset(imagenet_index(root, split), transform, strict_images=strict_images, kind=kind)
    suffix = ".tar" if kind == "wds" else ".parquet"
    spec = _spec(root, split, suffix)
    if spec is None:
        raise DatasetError(f"no {kind} files for split {split!r} at {root}; expected {LAYOUTS}")
    if kind == "wds":
        return RecordDataset(wds_index(spec), transform, strict_images=strict_images, kind=kind)
    return ParquetDataset(parquet_index(spec, image_column, label_column), transform, strict_images=strict_images)
