"""A GPU data pipeline: the recipe's augmentation decoded and computed on the training device.

``build_gpu_loader`` is a drop-in for :func:`pitvit.data.build_loader` (same batches, ordering, sharding,
resume and skipped-image counts) whose CPU workers only read files; JPEG decoding (nvjpeg on CUDA), the
RandomResizedCrop, flip, RandAugment, normalization and random erasing run on the device in a background thread,
with the per-sample parameters the CPU pipeline would draw for the same seed. Choose it with
``data.pipeline: gpu``; the CPU pipeline stays the default and the reference. See ``docs/gpu_pipeline.md``.
"""
from .loader import GpuLoader, build_gpu_loader
from .params import RandAugmentSpec, TrainSpec, parse_rand_augment
from .pipeline import DevicePipeline
from .source import EncodedDataset, jpeg_info

__all__ = ["build_gpu_loader", "GpuLoader", "DevicePipeline", "EncodedDataset", "jpeg_info", "TrainSpec",
           "RandAugmentSpec", "parse_rand_augment"]
