"""A GPU data pipeline: the recipe's augmentation decoded and computed on the training device.

``build_loader(dataset, ..., stage=GpuStage(device, ...))`` gives the loader of :func:`pitvit.data.build_loader`
(same batches, ordering, sharding, resume and skipped-image counts) whose CPU workers only read files; JPEG
decoding (nvjpeg on CUDA), the RandomResizedCrop, flip, RandAugment, normalization and random erasing run on the
device in a background thread, with the per-sample parameters the CPU stage would draw for the same seed. Choose
it with ``data.pipeline: gpu``; the CPU stage stays the default and the reference. See ``docs/gpu_pipeline.md``.
"""
from .params import ParamLayout, RandAugmentSpec, TrainSpec, parse_rand_augment
from .pipeline import DevicePipeline
from .source import EncodedDataset, jpeg_info
from .stage import GpuStage

__all__ = ["GpuStage", "DevicePipeline", "EncodedDataset", "jpeg_info", "TrainSpec", "ParamLayout",
           "RandAugmentSpec", "parse_rand_augment"]
