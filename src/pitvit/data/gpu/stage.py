"""The GPU stage: the recipe's transforms decoded and computed on a device, behind :func:`pitvit.data.build_loader`.

Worker processes (a DataLoader over :class:`~pitvit.data.gpu.source.EncodedDataset`, batched by the loader's
:class:`~pitvit.data.EpochBatchSampler`, so ordering, sharding and resume are those of the CPU stage) read bytes
and draw parameters; a background thread decodes and augments each batch on the device (on CUDA in its own
stream) while the model trains on the previous one; iterating the loader yields ``(images, labels)`` already on
the device.
"""
from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any, Iterator, Mapping, Sequence

import torch

from pitvit.utils.errors import ConfigError, DatasetError
from pitvit.utils.seed import mix_seed

from ..loader import StageBatch
from ..transforms import fill_color, resolve_aug, size_hw
from .params import spec_from_aug
from .pipeline import DevicePipeline
from .source import EncodedDataset, collate_encoded

__all__ = ["GpuStage"]

_DONE = object()


class GpuStage:
    """Decode, crop, flip, RandAugment, normalize and erase on ``device`` (evaluation: resize, center crop,
    normalize): the transforms of :func:`pitvit.data.build_transform` with the same arguments, for
    ``build_loader(..., stage=GpuStage(...))``.

    The parameters of sample ``(index, epoch, repeat)`` are the ones the CPU stage draws for it with the same seed
    (see :mod:`pitvit.data.gpu.params`); the erasing noise comes from a device generator seeded from
    (seed, epoch, step, rank). One stage may serve a training and an evaluation loader.

    Args:
        device: where to decode and augment (each DDP rank passes its own).
        input_size, mean, std, interpolation, crop_pct, aug: as for :func:`pitvit.data.build_transform`.
        prefetch: batches prepared ahead by the background thread (0: synchronously, in the caller's thread).
        strict_images: an unreadable image raises (default: the dataset's ``strict_images``).
        allow_fallback: ``False`` makes a file that the device cannot decode an error instead of a PIL decode.
        max_elements: bound on the float copy of decoded images resized together (memory stays bounded even
            when a batch holds a very large image).
        exact_resample: crop and resize with Pillow's own fixed-point arithmetic (float64 matrix products, cheap
            on data-centre GPUs); ``False``: float32 (within a level of Pillow; for GPUs with slow float64).

    Raises:
        ConfigError: settings the GPU pipeline does not implement (the message names the CPU pipeline).
    """

    def __init__(self, device: torch.device | str, *, input_size: int | Sequence[int] = 224,
                 mean: Sequence[float] = (0.485, 0.456, 0.406), std: Sequence[float] = (0.229, 0.224, 0.225),
                 interpolation: str = "bicubic", crop_pct: float = 0.875,
                 aug: str | Mapping[str, Any] | None = None, prefetch: int = 2, strict_images: bool | None = None,
                 allow_fallback: bool = True, max_elements: int = 1 << 25, exact_resample: bool = True) -> None:
        h, w = size_hw(input_size)
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError("the GPU pipeline produces RGB images: mean and std need 3 values each "
                              "(use data.pipeline=cpu)")
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct must lie in (0, 1], got {crop_pct}")
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.size = (h, w)
        self.mean, self.std = tuple(mean), tuple(std)
        self.interpolation = interpolation
        self.resize = int(h / crop_pct) if h == w else (int(h / crop_pct), int(w / crop_pct))
        self.spec = spec_from_aug(resolve_aug(aug), (h, w))
        self.prefetch = int(prefetch)
        self.strict_images = strict_images
        self.allow_fallback = allow_fallback
        self.max_elements = max_elements
        self.exact_resample = exact_resample
        self._pipeline(train=True)  # settings the device code refuses fail here, not at the first batch

    def _pipeline(self, train: bool, strict_images: bool = False) -> DevicePipeline:
        return DevicePipeline(device=self.device, size=self.size, mean=self.mean, std=self.std,
                              spec=self.spec if train else None, resize=self.resize,
                              interpolation=self.interpolation, fill=fill_color(self.mean),
                              max_elements=self.max_elements, strict_images=strict_images,
                              allow_fallback=self.allow_fallback, exact_resample=self.exact_resample)

    def bind(self, dataset: Any, *, seed: int, train: bool, rank: int) -> _BoundGpuStage:
        """The stage for one loader over ``dataset``, an image dataset with ``.samples`` (``(path, label)``) and
        ``.classes`` (e.g. from :func:`pitvit.data.build_dataset`; its transform is not used); a dataset held
        in other files (``wds``, ``parquet``, ``imagenet``) gives its bytes through ``read_bytes``.

        Raises:
            DatasetError: the dataset is not backed by image files.
        """
        samples = getattr(dataset, "samples", None)
        if not samples or not isinstance(samples[0][0], str):
            raise DatasetError(f"the GPU pipeline reads image files; {type(dataset).__name__} has none "
                               f"(use data.pipeline=cpu)")
        strict = self.strict_images if self.strict_images is not None else bool(getattr(dataset, "strict_images",
                                                                                        False))
        encoded = EncodedDataset(samples, dataset.classes, seed, self.spec if train else None,
                                 strict_images=strict, allow_fallback=self.allow_fallback,
                                 read=getattr(dataset, "read_bytes", None))
        return _BoundGpuStage(encoded, self._pipeline(train, strict), seed=seed, rank=rank, train=train,
                              prefetch=self.prefetch)

    def __repr__(self) -> str:
        return f"GpuStage(device={self.device}, size={self.size}, prefetch={self.prefetch})"


class _BoundGpuStage:
    """One loader's GPU stage: ``run`` finishes the workers' batches on the device, ``prefetch`` ahead."""

    pin_memory = False  # the workers send file bytes: nothing worth pinning

    def __init__(self, dataset: EncodedDataset, pipeline: DevicePipeline, *, seed: int, rank: int, train: bool,
                 prefetch: int) -> None:
        self.dataset = dataset
        self.pipeline = pipeline
        self.device = pipeline.device
        self.seed, self.rank, self.train, self.prefetch = int(seed), int(rank), train, int(prefetch)
        self.collate = collate_encoded
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _process(self, batch: Any, epoch: int, step: int) -> tuple[StageBatch, Any]:
        gen = None
        if self.train:
            # erasing noise is keyed per sample (the batch's keys); this stream serves batches without keys
            gen = torch.Generator(self.device).manual_seed(mix_seed(self.seed, epoch, step, self.rank))
        images, labels, reasons, skipped = self.pipeline(batch, gen)
        event = None
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(self._stream)
        return StageBatch(images, labels, skipped, reasons), event

    def _produce(self, batches: Iterator[Any], epoch: int, step0: int, out: queue.Queue,
                 stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            if self._stream is not None:
                torch.cuda.set_device(self.device)
            with torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext():
                for i, batch in enumerate(batches):
                    if stop.is_set() or not put(self._process(batch, epoch, step0 + i)):
                        return
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    def run(self, batches: Iterator[Any], epoch: int, step0: int) -> Iterator[StageBatch]:
        if self.prefetch <= 0:
            yield from self._deliver(self._process(b, epoch, step0 + i) for i, b in enumerate(batches))
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(batches, epoch, step0, out, stop), daemon=True,
                                  name="pitvit-gpu-pipeline")
        worker.start()

        def items() -> Iterator[tuple[StageBatch, Any]]:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            yield from self._deliver(items())
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()

    def _deliver(self, items: Iterator[tuple[StageBatch, Any]]) -> Iterator[StageBatch]:
        for b, event in items:
            if event is not None and b.images is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                b.images.record_stream(current)  # allocated on the pipeline's stream, used on this one
                b.labels.record_stream(current)
            yield b

    def __repr__(self) -> str:
        return f"GpuStage(device={self.device}, train={self.train}, prefetch={self.prefetch})"

