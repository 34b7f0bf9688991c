"""Data for PiT training: datasets, the recipe's transforms, mixing, and deterministic sharded loading.

Datasets (:func:`build_dataset`) return ``(transform(PIL image), label)`` and carry ``.classes`` and
``.targets``; :func:`build_transform` builds the training or evaluation pipeline; :func:`build_loader` yields
``(images, labels)`` batches, seeded per sample and sharded per process; :func:`build_mixup` and
:func:`build_train_loss` provide Mixup/CutMix and the matching criterion.
"""
from .datasets import FashionMNIST, ImageFolderDataset, ListDataset, build_dataset, detect_kind
from .errors import CorruptImageError, DatasetError, SkippedSample
from .fashion_mnist import FASHION_MNIST_CLASSES, read_idx
from .loader import Loader, SeededDataset, build_loader, collate_skipping
from .mixup import build_mixup, build_train_loss
from .sampler import EpochBatchSampler
from .transforms import AUG_PRESETS, build_transform, resolve_aug

__all__ = [
    "build_dataset", "build_transform", "build_loader", "build_mixup", "build_train_loss",
    "ImageFolderDataset", "ListDataset", "FashionMNIST", "FASHION_MNIST_CLASSES", "read_idx", "detect_kind",
    "DatasetError", "CorruptImageError", "SkippedSample",
    "Loader", "SeededDataset", "EpochBatchSampler", "collate_skipping",
    "AUG_PRESETS", "resolve_aug",
]
