"""The loader: ordering, sharding and resume (the sampler), a pluggable decode-and-augment *stage*, and the
counting of images that could not be read. One builder, :func:`build_loader`, for both stages.

A stage turns batches of sample keys into batches of images. :class:`CpuStage` (the default) runs the dataset's
own transform in the worker processes, seeded per sample; :class:`pitvit.data.gpu.GpuStage` has the workers read
file bytes and decodes and augments on a device. Everything else (the sampler, the DataLoader, resume, skipped
images, how an error from a worker reaches the caller) is the same for both.

Batch format: iterating a :class:`Loader` yields ``(images, labels)``: a float tensor ``(b, C, H, W)`` and an
int64 tensor ``(b,)``, where ``b`` is the batch size minus the images that could not be decoded. The records of
those images (:class:`SkippedSample`: path and reason) travel from the worker processes with the batch and the
loader counts them in the main process: ``loader.skipped`` is the count for the current (or last) epoch,
``loader.skipped_files`` the records, ``loader.skipped_total`` the count since the loader was built.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import signal
import threading
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from pitvit.utils.errors import ConfigError, DatasetError, PitvitError
from pitvit.utils.seed import mix_seed

from .images import SkippedSample
from .sampler import EpochBatchSampler

__all__ = ["KeyedDataset", "SeededDataset", "collate_skipping", "StageBatch", "BoundStage", "Stage", "CpuStage",
           "Loader", "build_loader"]

log = logging.getLogger(__name__)

_MAX_WARNINGS_PER_EPOCH = 10


class KeyedDataset:
    """What a stage's worker processes index: sample keys ``(index, epoch, repeat)`` from
    :class:`EpochBatchSampler` (or a bare index, read at ``self.epoch`` with repeat 0).

    Subclasses implement :meth:`load`. An error a user can cause (a :class:`~pitvit.utils.errors.PitvitError`,
    e.g. a strict :class:`~pitvit.utils.errors.CorruptImageError`) raised in a worker process is returned as a
    :class:`WorkerFailure` and raised again, unchanged, by the :class:`Loader` in the main process: torch would
    otherwise replace its one-line message with the worker's traceback.
    """

    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load(self, index: int, epoch: int, repeat: int) -> Any:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int, int]) -> Any:
        index, epoch, repeat = key if isinstance(key, tuple) else (int(key), self.epoch, 0)
        try:
            return self.load(index, epoch, repeat)
        except PitvitError as e:
            if get_worker_info() is None:
                raise
            return WorkerFailure(e)


class WorkerFailure:
    """A record of an expected error raised in a worker process, carried to the main process with the batch (and
    raised there by the :class:`Loader`)."""

    __slots__ = ("error",)

    def __init__(self, error: PitvitError) -> None:
        self.error = error

    def __reduce__(self):  # plain pickling across processes, despite __slots__
        return (WorkerFailure, (self.error,))


class _CollateOrError:
    """A stage's collate function, except that a batch holding a :class:`WorkerFailure` becomes that error."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, items: list[Any]) -> Any:
        for item in items:
            if isinstance(item, WorkerFailure):
                return item
        return self.collate(items)


class SeededDataset(KeyedDataset):
    """Wraps a dataset so that sample ``i`` of epoch ``e`` is augmented as a function of (seed, e, i) only.

    Before calling the wrapped dataset it seeds python ``random``, numpy's global generator and torch's default
    CPU generator from a hash of (seed, epoch, index, repeat). In the main process (``num_workers=0``) the three
    generators are restored afterwards, so data loading does not disturb the training loop's randomness
    (dropout, mixup); worker processes have no other use for them. Numpy is left alone when the dataset's
    transform says it does not draw from it (``uses_numpy_rng`` set False by
    :func:`pitvit.data.build_transform`): saving and restoring numpy's state is the slow part.

    Attributes other than these are forwarded to the wrapped dataset (``classes``, ``targets``...).
    """

    def __init__(self, dataset: Any, seed: int, *, seeded: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.seeded = seeded
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def sample_seed(self, index: int, epoch: int, repeat: int = 0) -> int:
        return mix_seed(self.seed, epoch, index, repeat)

    def load(self, index: int, epoch: int, repeat: int) -> Any:
        if not self.seeded:
            return self.dataset[index]
        s = self.sample_seed(index, epoch, repeat)
        restore = get_worker_info() is None
        seed_numpy = getattr(getattr(self.dataset, "transform", None), "uses_numpy_rng", True)
        if restore:
            saved = random.getstate(), torch.default_generator.get_state()
            saved_np = np.random.get_state() if seed_numpy else None
        random.seed(s)
        torch.default_generator.manual_seed(s)  # CPU only: torch.manual_seed would reseed CUDA too
        if seed_numpy:
            np.random.seed(s & 0xFFFFFFFF)
        try:
            return self.dataset[index]
        finally:
            if restore:
                random.setstate(saved[0])
                torch.default_generator.set_state(saved[1])
                if seed_numpy:
                    np.random.set_state(saved_np)

    def __repr__(self) -> str:
        return f"SeededDataset({self.dataset!r}, seed={self.seed})"


def collate_skipping(batch: list[Any]) -> tuple[Any, Any, list[SkippedSample]]:
    """Collate ``(image, label)`` samples, setting :class:`SkippedSample` records aside.

    Returns:
        ``(images, labels, skipped)``; ``images`` and ``labels`` are ``None`` when every sample of the batch
        was skipped.
    """
    good = [b for b in batch if not isinstance(b, SkippedSample)]
    skipped = [b for b in batch if isinstance(b, SkippedSample)]
    if not good:
        return None, None, skipped
    images, labels = default_collate(good)
    return images, labels, skipped


class StageBatch(NamedTuple):
    """A finished batch: ``images`` and ``labels`` (``None`` when nothing was readable), the records of the
    images that were skipped, and the reasons of those a stage decoded by a slower path (``fallback``)."""

    images: torch.Tensor | None
    labels: torch.Tensor | None
    skipped: list[SkippedSample]
    fallback: list[str]


class BoundStage(Protocol):
    """A stage bound to one loader's dataset.

    Attributes:
        dataset: what the worker processes index with sample keys.
        pin_memory: whether the DataLoader should pin its batches by default.
    """

    dataset: KeyedDataset
    pin_memory: bool

    def collate(self, items: list[Any]) -> Any:
        """In a worker: the dataset's items to one batch (picklable)."""

    def run(self, batches: Iterator[Any], epoch: int, step0: int) -> Iterator[StageBatch]:
        """In the main process: the workers' batches of one iteration, starting at step ``step0``, finished."""


class Stage(Protocol):
    """How a loader turns sample keys into images: :class:`CpuStage` or :class:`pitvit.data.gpu.GpuStage`."""

    def bind(self, dataset: Any, *, seed: int, train: bool, rank: int) -> BoundStage:
        """The stage for one loader over ``dataset``."""


class CpuStage:
    """The dataset's own transform (:func:`pitvit.data.build_transform`) in the worker processes, each training
    sample seeded from (seed, epoch, index, repeat) by :class:`SeededDataset`."""

    def bind(self, dataset: Any, *, seed: int, train: bool, rank: int) -> _BoundCpuStage:
        wrapped = dataset if isinstance(dataset, SeededDataset) else SeededDataset(dataset, seed, seeded=train)
        return _BoundCpuStage(wrapped)

    def __repr__(self) -> str:
        return "CpuStage()"


class _BoundCpuStage:
    def __init__(self, dataset: SeededDataset) -> None:
        self.dataset = dataset
        self.pin_memory = torch.cuda.is_available()
        self.collate = collate_skipping

    def run(self, batches: Iterator[Any], epoch: int, step0: int) -> Iterator[StageBatch]:
        for images, labels, skipped in batches:
            yield StageBatch(images, labels, skipped, [])

    def __repr__(self) -> str:
        return "CpuStage()"


class Loader:
    """An iterable of ``(images, labels)`` batches over a :class:`torch.utils.data.DataLoader` and a stage.

    Attributes:
        dataset: the dataset the workers index (a :class:`KeyedDataset`).
        sampler: the :class:`EpochBatchSampler` (``set_epoch``, ``set_start_step``, ``state_dict``).
        loader: the underlying DataLoader, whose batches the stage finishes.
        stage: the bound stage.
        skipped: images skipped in the current (or last) iteration.
        skipped_files: their :class:`SkippedSample` records (``path``, ``reason``).
        skipped_total: images skipped since the loader was built.
        fallback: images of the current (or last) iteration the stage decoded by a slower path, by reason
            (a ``Counter``; the GPU stage's CPU decodes, always empty with the CPU stage).
        fallback_total: those since the loader was built.
        train: built for training (shuffled, seeded, lockstep across processes).
    """

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler, stage: BoundStage, *, train: bool) -> None:
        self.loader = loader
        self.train = train
        self.sampler = sampler
        self.stage = stage
        self.dataset = stage.dataset
        self.skipped = 0
        self.skipped_files: list[SkippedSample] = []
        self.skipped_total = 0
        self.fallback: collections.Counter[str] = collections.Counter()
        self.fallback_total = 0

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    def set_epoch(self, epoch: int, start_step: int | None = None) -> None:
        """Select the epoch of the next iteration and, optionally, the number of its batches to skip."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        if start_step is not None:
            self.sampler.set_start_step(start_step)

    def skipped_in_epoch(self) -> int:
        return self.skipped

    def __len__(self) -> int:
        """Batches the next iteration yields: a full epoch's, less any pending ``start_step``."""
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.skipped = 0
        self.skipped_files = []
        self.fallback = collections.Counter()
        epoch, step0 = self.sampler.epoch, self.sampler.start_step
        try:
            # torch calls iter(batch_sampler) in here, once or (a new multi-process iterator) twice; the start
            # step holds for all of those calls and is spent once the iteration exists
            batches = iter(self.loader)
        finally:
            self.sampler.set_start_step(0)
        with contextlib.closing(self.stage.run(_raise_worker_errors(batches), epoch, step0)) as finished:
            for i, b in enumerate(finished):
                self._count(b)
                if self._keep(b, step0 + i):
                    yield b.images, b.labels
        if self.fallback:
            log.info("epoch %d, rank %d: %d image(s) decoded by the CPU fallback (%s)", epoch, self.sampler.rank,
                     sum(self.fallback.values()), ", ".join(f"{k}: {v}" for k, v in sorted(self.fallback.items())))

    def _keep(self, b: StageBatch, step: int) -> bool:
        """False when none of the batch's images could be read (drop it), or an error where dropping is fatal."""
        if b.images is not None:
            return True
        if self.train and self.sampler.world_size > 1:
            # dropping the batch here would leave this rank one step behind the others and hang
            # the next gradient all-reduce (evaluation only reduces at the end, so it may drop)
            raise DatasetError(
                f"every image of batch {step} of epoch {self.epoch} on rank {self.sampler.rank} "
                f"is unreadable (e.g. {b.skipped[0].path}: {b.skipped[0].reason}); remove the corrupt files")
        return False

    def _count(self, b: StageBatch) -> None:
        for s in b.skipped:
            if self.skipped < _MAX_WARNINGS_PER_EPOCH:
                log.warning("skipped unreadable image %s: %s", s.path, s.reason)
            self.skipped += 1
            self.skipped_total += 1
            self.skipped_files.append(s)
        self.fallback.update(b.fallback)
        self.fallback_total += len(b.fallback)

    def __repr__(self) -> str:
        s = self.sampler
        return (f"Loader(batch_size={s.batch_size}, rank={s.rank}/{s.world_size}, shuffle={s.shuffle}, "
                f"steps={len(self)}, workers={self.loader.num_workers}, stage={self.stage!r}, "
                f"dataset={self.dataset!r})")


def _raise_worker_errors(batches: Iterator[Any]) -> Iterator[Any]:
    for b in batches:
        if isinstance(b, WorkerFailure):
            raise b.error
        yield b


def _worker_init(worker_id: int) -> None:  # noqa: ARG001
    """In each worker: a SIGTERM from anyone but the main process is left to the main process.

    A scheduler, ``timeout`` or ``kill -- -PGID`` signal the whole process group. The main process handles that
    SIGTERM: it finishes its step, saves and exits, and its workers end with it. torch's worker handler instead
    dies of it, and the main process's SIGCHLD handler then raises in the middle of the save. Workers keep
    torch's answer to their own parent's SIGTERM (torch and multiprocessing stopping them): a quiet exit.
    """
    if not hasattr(signal, "sigwaitinfo"):  # not on macOS: torch's handling stays
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask
    threading.Thread(target=_answer_sigterm, args=(os.getppid(),), daemon=True, name="pitvit-sigterm").start()


def _answer_sigterm(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)  # as torch's handler does: a non-zero status would make the loader report a failure


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
    stage: Stage | None = None,
    num_workers: int = 4,
    rank: int = 0,
    world_size: int = 1,
    repeated_aug: bool = False,
    drop_last: bool | None = None,
    start_step: int = 0,
    num_repeats: int = 3,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
) -> Loader:
    """A loader of ``(images, labels)`` batches for one process of ``world_size``.

    Training shuffles with a generator seeded from (seed, epoch) and seeds every sample's augmentation
    from (seed, epoch, index[, repeat]), so batches depend neither on ``num_workers`` nor on where a run
    resumed. Call ``loader.set_epoch(e)`` before each epoch. The ordering across processes is described in
    :mod:`pitvit.data.sampler`.

    Args:
        dataset: a map-style dataset of ``(image, label)`` (e.g. from :func:`build_dataset`); for the GPU stage,
            an image dataset whose transform is not used.
        batch_size: per-process batch size.
        train: shuffle, seed augmentations, pad the last batch; otherwise keep the dataset's order and
            split the last batch between processes without duplicating any sample.
        seed: the run's seed, the same in every process.
        stage: what turns keys into images: :class:`CpuStage` (default: the dataset's transform in the workers)
            or :class:`pitvit.data.gpu.GpuStage` (decoded and augmented on a device; batches arrive there).
        num_workers: worker processes (0 loads in the main process).
        rank: this process's rank.
        world_size: number of processes.
        repeated_aug: repeated augmentation (DeiT's RASampler, used for pit_b): each image of the
            permutation appears ``num_repeats`` times in a row with different augmentations; an epoch keeps
            the dataset's length.
        drop_last: drop the incomplete last global batch (default: ``train``).
        start_step: skip this many batches at the start of the first iteration (mid-epoch resume).
        num_repeats: repeats for ``repeated_aug``.
        pin_memory: default: the stage's (the CPU stage's: when CUDA is available).
        persistent_workers: keep workers between epochs (default: when ``num_workers > 0``).
    """
    if num_workers < 0:
        raise ConfigError(f"the number of loader workers must be >= 0 (0 loads in the main process), got {num_workers}")
    bound = (stage or CpuStage()).bind(dataset, seed=seed, train=train, rank=rank)
    if drop_last is None:
        drop_last = train
    sampler = EpochBatchSampler(len(bound.dataset), batch_size=batch_size, shuffle=train, seed=seed, rank=rank,
                                world_size=world_size, drop_last=drop_last, pad=train,
                                num_repeats=num_repeats if repeated_aug else 1, start_step=start_step)
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    loader = DataLoader(
        bound.dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=_CollateOrError(bound.collate),
        pin_memory=bound.pin_memory if pin_memory is None else pin_memory,
        persistent_workers=persistent_workers and num_workers > 0, worker_init_fn=_worker_init,
        # the DataLoader draws a base seed per iteration; a private generator keeps it from consuming the
        # global torch generator (and the per-sample seeding makes that base seed irrelevant)
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
    )
    return Loader(loader, sampler, bound, train=train)
