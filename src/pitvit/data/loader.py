"""The training and evaluation loaders: per-sample seeding, skipping unreadable images, sharding, resume.

Batch format: iterating a :class:`Loader` yields ``(images, labels)``: a float tensor ``(b, C, H, W)`` and
an int64 tensor ``(b,)``, where ``b`` is the batch size minus the images that could not be decoded. Under
the hood the collate function returns a third element, the list of skipped file paths; it travels from the
worker processes with the batch, and the loader adds it up in the main process: ``loader.skipped`` is the
count for the current (or last) epoch, ``loader.skipped_files`` the paths, ``loader.skipped_total`` the
count since the loader was built.
"""
from __future__ import annotations

import logging
import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

from .errors import DatasetError, SkippedSample
from .sampler import EpochBatchSampler, mix_seed

__all__ = ["SeededDataset", "collate_skipping", "Loader", "build_loader"]

log = logging.getLogger(__name__)

_MAX_WARNINGS_PER_EPOCH = 10


class SeededDataset:
    """Wraps a dataset so that sample ``i`` of epoch ``e`` is augmented as a function of (seed, e, i) only.

    ``__getitem__`` accepts the sampler's keys ``(index, epoch, repeat)`` (or a bare index, read at
    ``self.epoch`` with repeat 0). Before calling the wrapped dataset it seeds python ``random``, numpy's
    global generator and torch's default CPU generator from a hash of (seed, epoch, index, repeat). In the
    main process (``num_workers=0``) the three generators are restored afterwards, so data loading does not
    disturb the training loop's randomness (dropout, mixup); worker processes have no other use for them.
    Numpy is left alone when the dataset's transform says it does not draw from it (``uses_numpy_rng``
    set False by :func:`pitvit.data.build_transform`): saving and restoring numpy's state is the slow part.

    Attributes other than these are forwarded to the wrapped dataset (``classes``, ``targets``...).
    """

    def __init__(self, dataset: Any, seed: int, *, seeded: bool = True) -> None:
        self.dataset = dataset
        self.seed = int(seed)
        self.seeded = seeded
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        if name == "dataset":  # not yet set (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def sample_seed(self, index: int, epoch: int, repeat: int = 0) -> int:
        return mix_seed(self.seed, epoch, index, repeat)

    def __getitem__(self, key: int | tuple[int, int, int]) -> Any:
        if isinstance(key, tuple):
            index, epoch, repeat = key
        else:
            index, epoch, repeat = int(key), self.epoch, 0
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


def collate_skipping(batch: list[Any]) -> tuple[Any, Any, list[str]]:
    """Collate ``(image, label)`` samples, dropping :class:`SkippedSample` markers.

    Returns:
        ``(images, labels, skipped_paths)``; ``images`` and ``labels`` are ``None`` when every sample of
        the batch was skipped.
    """
    good = [b for b in batch if not isinstance(b, SkippedSample)]
    skipped = [b.path for b in batch if isinstance(b, SkippedSample)]
    if not good:
        return None, None, skipped
    images, labels = default_collate(good)
    return images, labels, skipped


class Loader:
    """An iterable of ``(images, labels)`` batches over a :class:`torch.utils.data.DataLoader`.

    Attributes:
        dataset: the dataset (wrapped in a :class:`SeededDataset`).
        sampler: the :class:`EpochBatchSampler` (``set_epoch``, ``set_start_step``, ``state_dict``).
        loader: the underlying DataLoader, whose batches carry the skipped paths as a third element.
        skipped: images skipped in the current (or last) iteration.
        skipped_files: their paths.
        skipped_total: images skipped since the loader was built.
        train: built for training (shuffled, seeded, lockstep across processes).
    """

    def __init__(self, loader: DataLoader, sampler: EpochBatchSampler, *, train: bool) -> None:
        self.loader = loader
        self.train = train
        self.sampler = sampler
        self.dataset = loader.dataset
        self.skipped = 0
        self.skipped_files: list[str] = []
        self.skipped_total = 0

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
        step0 = self.sampler.start_step
        for i, (images, labels, skipped) in enumerate(self._start()):
            if self._keep(images, skipped, step0 + i):
                yield images, labels

    def _start(self) -> Iterator[Any]:
        """The DataLoader's iterator for this iteration; spends the pending start step."""
        try:
            # torch calls iter(batch_sampler) in here, once or (a new multi-process iterator) twice; the start
            # step holds for all of those calls and is spent once the iteration exists
            return iter(self.loader)
        finally:
            self.sampler.set_start_step(0)

    def _keep(self, images: Any, skipped: list[str], step: int) -> bool:
        """Count a batch's unreadable files; False when none of its images could be read (drop it)."""
        if skipped:
            self._count(skipped)
        if images is not None:
            return True
        if self.train and self.sampler.world_size > 1:
            # dropping the batch here would leave this rank one step behind the others and hang
            # the next gradient all-reduce (evaluation only reduces at the end, so it may drop)
            raise DatasetError(
                f"every image of batch {step} of epoch {self.epoch} on rank {self.sampler.rank} "
                f"is unreadable (e.g. {skipped[0]}); remove the corrupt files")
        return False

    def _count(self, paths: list[str]) -> None:
        for p in paths:
            if self.skipped < _MAX_WARNINGS_PER_EPOCH:
                log.warning("skipped unreadable image %s", p)
            self.skipped += 1
            self.skipped_total += 1
            self.skipped_files.append(p)

    def __repr__(self) -> str:
        s = self.sampler
        return (f"Loader(batch_size={s.batch_size}, rank={s.rank}/{s.world_size}, shuffle={s.shuffle}, "
                f"steps={len(self)}, workers={self.loader.num_workers}, dataset={self.dataset.dataset!r})")


def build_loader(
    dataset: Any,
    *,
    batch_size: int,
    train: bool,
    seed: int,
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
        dataset: a map-style dataset of ``(image, label)`` (e.g. from :func:`build_dataset`).
        batch_size: per-process batch size.
        train: shuffle, seed augmentations, pad the last batch; otherwise keep the dataset's order and
            split the last batch between processes without duplicating any sample.
        seed: the run's seed, the same in every process.
        num_workers: worker processes (0 loads in the main process).
        rank: this process's rank.
        world_size: number of processes.
        repeated_aug: repeated augmentation (DeiT's RASampler, used for pit_b): each image of the
            permutation appears ``num_repeats`` times in a row with different augmentations; an epoch keeps
            the dataset's length.
        drop_last: drop the incomplete last global batch (default: ``train``).
        start_step: skip this many batches at the start of the first iteration (mid-epoch resume).
        num_repeats: repeats for ``repeated_aug``.
        pin_memory: default: when CUDA is available.
        persistent_workers: keep workers between epochs (default: when ``num_workers > 0``).
    """
    if drop_last is None:
        drop_last = train
    sampler = EpochBatchSampler(len(dataset), batch_size=batch_size, shuffle=train, seed=seed, rank=rank,
                                world_size=world_size, drop_last=drop_last, pad=train,
                                num_repeats=num_repeats if repeated_aug else 1, start_step=start_step)
    wrapped = dataset if isinstance(dataset, SeededDataset) else SeededDataset(dataset, seed, seeded=train)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = num_workers > 0
    loader = DataLoader(
        wrapped, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_skipping,
        pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
        # the DataLoader draws a base seed per iteration; a private generator keeps it from consuming the
        # global torch generator (and the per-sample seeding makes that base seed irrelevant)
        generator=torch.Generator().manual_seed(mix_seed(seed, rank)),
    )
    return Loader(loader, sampler, train=train)
