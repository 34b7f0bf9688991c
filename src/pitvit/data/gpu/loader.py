"""The GPU pipeline's loader: the iteration contract of :class:`pitvit.data.Loader`, batches ready on the device.

Worker processes (a DataLoader over :class:`~pitvit.data.gpu.source.EncodedDataset`, batched by the same
:class:`~pitvit.data.EpochBatchSampler` as the CPU loader, so ordering, sharding and resume are unchanged) read
bytes and draw parameters; a background thread decodes and augments each batch on the device (on CUDA in its own
stream) while the model trains on the previous one; iterating yields ``(images, labels)`` already on the device.
"""
from __future__ import annotations

import collections
import logging
import queue
import threading
from typing import Any, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import DatasetError
from ..loader import Loader
from ..sampler import EpochBatchSampler, mix_seed
from ..transforms import _size_hw, resolve_aug
from .params import spec_from_aug
from .pipeline import DevicePipeline
from .ops import fill_color
from .source import EncodedDataset, collate_encoded

__all__ = ["GpuLoader", "build_gpu_loader"]

log = logging.getLogger(__name__)

_DONE = object()


class GpuLoader(Loader):
    """An iterable of ``(images, labels)`` on ``device``: float ``(b, 3, H, W)`` normalized, int64 ``(b,)``.

    Attributes (as :class:`pitvit.data.Loader`, whose epoch and step plumbing it shares): ``dataset``,
    ``sampler``, ``loader``, ``train``, ``skipped``, ``skipped_files``, ``skipped_total``; and ``fallback`` (a
    ``Counter`` of the images of the current or last iteration decoded by PIL instead of the device, by
    reason), ``fallback_total``.
    """

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler, pipeline: DevicePipeline, *, train: bool,
                 seed: int, prefetch: int = 2) -> None:
        super().__init__(loader, sampler, train=train)
        self.pipeline = pipeline
        self.seed = int(seed)
        self.prefetch = int(prefetch)
        self.device = pipeline.device
        self.fallback: collections.Counter[str] = collections.Counter()
        self.fallback_total = 0
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    # ------------------------------------------------------------------------------------------ iteration
    def _process(self, batch: Any, epoch: int, step: int) -> tuple[Any, ...]:
        gen = None
        if self.train:
            # erasing noise: one stream per (seed, epoch, step, rank), so a resumed run replays it
            gen = torch.Generator(self.device).manual_seed(mix_seed(self.seed, epoch, step, self.sampler.rank))
        images, labels, reasons, skipped = self.pipeline(batch, gen)
        event = None
        if self._stream is not None:
            event = torch.cuda.Event()
            event.record(self._stream)
        return images, labels, reasons, skipped, event

    def _produce(self, batches: Iterator[Any], epoch: int, step0: int, out: queue.Queue, stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    out.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            ctx = torch.cuda.stream(self._stream) if self._stream is not None else None
            if ctx is not None:
                torch.cuda.set_device(self.device)
                ctx.__enter__()
            try:
                for i, batch in enumerate(batches):
                    if stop.is_set() or not put(self._process(batch, epoch, step0 + i)):
                        return
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
            put(_DONE)
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = 0
        self.skipped_files = []
        self.fallback = collections.Counter()
        step0, epoch = self.sampler.start_step, self.sampler.epoch
        batches = self._start()
        if self.prefetch <= 0:
            items = (self._process(b, epoch, step0 + i) for i, b in enumerate(batches))
            yield from self._deliver(items, step0)
            return
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(batches, epoch, step0, out, stop), daemon=True,
                                  name="pitvit-gpu-pipeline")
        worker.start()

        def items() -> Iterator[tuple[Any, ...]]:
            while True:
                item = out.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        try:
            yield from self._deliver(items(), step0)
        finally:
            stop.set()
            while worker.is_alive():
                try:
                    out.get(timeout=0.1)
                except queue.Empty:
                    pass
            worker.join()

    def _deliver(self, items: Iterator[tuple[Any, ...]], step0: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i, (images, labels, reasons, skipped, event) in enumerate(items):
            for r in reasons:
                self.fallback[r] += 1
            self.fallback_total += len(reasons)
            if not self._keep(images, skipped, step0 + i):
                continue
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                images.record_stream(current)  # allocated on the pipeline's stream, used on this one
                labels.record_stream(current)
            yield images, labels
        if self.fallback:
            log.info("epoch %d, rank %d: %d image(s) decoded by PIL instead of the device (%s)", self.epoch,
                     self.sampler.rank, sum(self.fallback.values()),
                     ", ".join(f"{k}: {v}" for k, v in sorted(self.fallback.items())))

    def __repr__(self) -> str:
        s = self.sampler
        return (f"GpuLoader(device={self.device}, batch_size={s.batch_size}, rank={s.rank}/{s.world_size}, "
                f"shuffle={s.shuffle}, steps={len(self)}, workers={self.loader.num_workers}, "
                f"dataset={self.dataset!r})")


def build_gpu_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    device: torch.device | str,
    input_size: int | Sequence[int] = 224,
    mean: Sequence[float] = (0.485, 0.456, 0.406),
    std: Sequence[float] = (0.229, 0.224, 0.225),
    interpolation: str = "bicubic",
    crop_pct: float = 0.875,
    aug: str | Mapping[str, Any] | None = None,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    repeated_aug: bool = False,
    drop_last: bool | None = None,
    start_step: int = 0,
    num_repeats: int = 3,
    persistent_workers: bool | None = None,
    prefetch: int = 2,
    strict_images: bool | None = None,
    allow_fallback: bool = True,
    max_elements: int = 1 << 25,
    exact_resample: bool = True,
) -> GpuLoader:
    """The GPU pipeline's loader for one process of ``world_size``: the recipe's transforms on ``device``.

    Takes the arguments of :func:`pitvit.data.build_loader` plus those of :func:`pitvit.data.build_transform`
    (the CPU pipeline puts the transform in the dataset; here the device applies it). The parameters of sample
    ``(index, epoch, repeat)`` are the ones the CPU pipeline draws for it with the same seed (see
    :mod:`pitvit.data.gpu.params`), the erasing noise comes from a device generator seeded from
    (seed, epoch, step, rank).

    Args:
        dataset: an image dataset with ``.samples`` (``(path, label)``) and ``.classes``, e.g. from
            :func:`pitvit.data.build_dataset` (its transform is not used).
        device: where to decode and augment (each DDP rank passes its own).
        prefetch: batches prepared ahead by the background thread (0: synchronously, in the caller's thread).
        strict_images: an unreadable image raises (default: the dataset's ``strict_images``).
        allow_fallback: ``False`` makes a file that the device cannot decode an error instead of a PIL decode.
        max_elements: bound on the float copy of decoded images resized together (memory stays bounded even
            when a batch holds a very large image).
        exact_resample: crop and resize with Pillow's own fixed-point arithmetic (float64 matrix products, cheap
            on data-centre GPUs); ``False``: float32 (within a level of Pillow; for GPUs with slow float64).

    Raises:
        DatasetError: the dataset is not backed by image files.
        ValueError: settings the GPU pipeline does not implement (the message names the CPU pipeline).
    """
    samples = getattr(dataset, "samples", None)
    if samples is None or not isinstance(samples[0][0], str):
        raise DatasetError(f"the GPU pipeline reads image files; {type(dataset).__name__} has none "
                           f"(use data.pipeline=cpu)")
    h, w = _size_hw(input_size)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError("the GPU pipeline produces RGB images: mean and std need 3 values each")
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct}")
    if strict_images is None:
        strict_images = bool(getattr(dataset, "strict_images", False))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    spec = spec_from_aug(resolve_aug(aug), (h, w)) if train else None
    resize = int(h / crop_pct) if h == w else (int(h / crop_pct), int(w / crop_pct))
    pipeline = DevicePipeline(device=device, size=(h, w), mean=mean, std=std, spec=spec, resize=resize,
                              interpolation=interpolation, fill=fill_color(mean), max_elements=max_elements,
                              strict_images=strict_images, allow_fallback=allow_fallback,
                              exact_resample=exact_resample)
    encoded = EncodedDataset(samples, dataset.classes, seed, spec, strict_images=strict_images,
                             allow_fallback=allow_fallback)
    if drop_last is None:
        drop_last = train
    sampler = EpochBatchSampler(len(encoded), batch_size=batch_size, shuffle=train, seed=seed, rank=rank,
                                world_size=world_size, drop_last=drop_last, pad=train,
                                num_repeats=num_repeats if repeated_aug else 1, start_step=start_step)
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    loader = DataLoader(encoded, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_encoded,
                        pin_memory=False, persistent_workers=persistent_workers and num_workers > 0,
                        generator=torch.Generator().manual_seed(mix_seed(seed, rank)))
    return GpuLoader(loader, sampler, pipeline, train=train, seed=seed, prefetch=prefetch)
