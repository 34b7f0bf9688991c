"""Data for PiT training: datasets, image decoding, the recipe's transforms, mixing, and deterministic sharded
loading.

Datasets (:func:`build_dataset`) return ``(transform(PIL image), label)`` and carry ``.classes`` and
``.targets``; every image file is decoded by :func:`load_image`; :func:`build_transform` builds the training or
evaluation pipeline; :func:`build_loader` yields ``(images, labels)`` batches, seeded per sample and sharded per
process, through a decode-and-augment stage (:class:`CpuStage` by default, :class:`pitvit.data.gpu.GpuStage` on
a device, :class:`MemoryStage` for a dataset held in memory); :func:`build_mixup` provides Mixup/CutMix (the matching loss is training's ``ClassificationLoss``).
"""
from pitvit.utils.errors import CorruptImageError, DatasetError

from .datasets import FashionMNIST, ImageFolderDataset, ListDataset, Subset, build_dataset, detect_kind, holdout_indices
from .fashion_mnist import FASHION_MNIST_CLASSES, read_idx
from .images import IMAGE_EXTENSIONS, SkippedSample, is_image_file, load_image
from .loader import CpuStage, KeyedDataset, Loader, SeededDataset, Stage, build_loader, collate_skipping
from .memory import MemoryStage
from .mixup import build_mixup, mix_group_size
from .sampler import EpochBatchSampler
from .transforms import AUG_PRESETS, AUG_SETTINGS, build_transform, fill_color, resolve_aug, size_hw

__all__ = [
    "build_dataset", "build_transform", "build_loader", "build_mixup", "mix_group_size",
    "ImageFolderDataset", "ListDataset", "FashionMNIST", "Subset", "holdout_indices", "MemoryStage", "FASHION_MNIST_CLASSES", "read_idx", "detect_kind",
    "IMAGE_EXTENSIONS", "is_image_file", "load_image", "SkippedSample", "DatasetError", "CorruptImageError",
    "Loader", "Stage", "CpuStage", "KeyedDataset", "SeededDataset", "EpochBatchSampler", "collate_skipping",
    "AUG_PRESETS", "AUG_SETTINGS", "resolve_aug", "size_hw", "fill_color",
]
