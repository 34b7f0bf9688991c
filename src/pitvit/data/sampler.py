"""Epoch ordering and sharding: one batch sampler for 1..N processes, repeated augmentation, resume.

Each epoch has one *global order*, the same in every process: a permutation of the dataset drawn from a
generator seeded with (seed, epoch) (identity order when not shuffling), or, with repeated augmentation
(Hoffer et al. 2020; DeiT's ``RASampler``), each index of the permutation written ``num_repeats`` times in a
row, cut back to the dataset's length. Global step ``s`` takes the slice
``order[s * B * N : (s + 1) * B * N]`` and rank ``r`` gets the ``r``-th contiguous piece of ``B`` items.
So one process with batch ``B * N`` sees, at every step, exactly the concatenation (rank 0 first) of what
``N`` processes with batch ``B`` see; resuming at step ``k`` skips the first ``k * B * N`` items of the
order, whatever the number of processes.

With ``shard_sizes`` (samples per shard, for data held in shards, :mod:`pitvit.data.formats`) the order is
instead drawn shard-wise, for storage where a random read costs a seek or a request: the shards in a random
order, then the samples of each run of ``shard_window`` consecutive shards of that order shuffled among
themselves. It is still a function of (seed, epoch) only, so resume and the split between processes are
unchanged.

The sampler yields *keys* ``(index, epoch, repeat)``, not bare indices: the dataset wrapper seeds each
sample's augmentation from them (:class:`pitvit.data.loader.SeededDataset`). Carrying the epoch in the key
keeps persistent worker processes, which never see ``set_epoch``, correct.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from pitvit.utils.errors import ConfigError
from pitvit.utils.seed import mix_seed

__all__ = ["EpochBatchSampler", "shard_order"]


def shard_order(shard_sizes: Sequence[int], seed: int, epoch: int, window: int) -> list[int]:
    """A permutation of ``range(sum(shard_sizes))`` that reads ``window`` shards at a time (see the module
    docstring); shard ``k`` holds the samples ``sum(shard_sizes[:k]) ..`` in order."""
    g = torch.Generator().manual_seed(mix_seed(seed, epoch))
    starts = [0]
    for n in shard_sizes:
        starts.append(starts[-1] + n)
    shards = torch.randperm(len(shard_sizes), generator=g).tolist()
    out: list[int] = []
    for w in range(0, len(shards), max(window, 1)):
        idx = torch.cat([torch.arange(starts[k], starts[k + 1]) for k in shards[w:w + window]])
        out += idx[torch.randperm(len(idx), generator=g)].tolist()
    return out


class EpochBatchSampler:
    """Batches of sample keys for one rank (see the module docstring for the ordering).

    Args:
        num_samples: the dataset's length.
        batch_size: per-process batch size ``B``.
        shuffle: draw a new permutation each epoch, seeded with (seed, epoch).
        seed: the run's seed; every rank must use the same one.
        rank: this process's rank.
        world_size: number of processes ``N``.
        drop_last: drop the last, incomplete global batch. Otherwise it is split between the ranks: with
            ``pad`` the order is first extended (from its start) to a multiple of ``N`` so every rank gets
            the same number of samples (training); without, the pieces may differ by one and a rank may get
            none (evaluation, where duplicates would bias the metrics).
        pad: see ``drop_last``.
        num_repeats: repeated augmentation: each index appears this many times in a row (1 = off).
        start_step: number of batches to skip at the start of an iteration (mid-epoch resume); it holds until
            ``set_start_step(0)``, which :class:`pitvit.data.Loader` calls once its iteration has started.
        shard_sizes: shuffle shard-wise: samples per shard, in index order (see the module docstring).
        shard_window: shards whose samples are shuffled together.
    """

    def __init__(self, num_samples: int, *, batch_size: int, shuffle: bool, seed: int, rank: int = 0,
                 world_size: int = 1, drop_last: bool = True, pad: bool = True, num_repeats: int = 1,
                 start_step: int = 0, shard_sizes: Sequence[int] | None = None, shard_window: int = 8) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_repeats < 1:
            raise ConfigError(f"num_repeats must be >= 1, got {num_repeats}")
        if drop_last and num_samples < batch_size * world_size:
            raise ConfigError(f"{num_samples} samples do not fill one global batch of {batch_size} x "
                             f"{world_size}; lower the batch size or pass drop_last=False")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.pad = pad
        self.num_repeats = num_repeats
        if shard_sizes is not None and sum(shard_sizes) != num_samples:
            raise ConfigError(f"the shards hold {sum(shard_sizes)} samples, not {num_samples}")
        if shard_window < 1:
            raise ConfigError(f"the shard window must be >= 1, got {shard_window}")
        self.shard_sizes = list(shard_sizes) if shard_sizes is not None else None
        self.shard_window = shard_window
        self.epoch = 0
        self.start_step = 0
        self.set_start_step(start_step)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    @property
    def steps_per_epoch(self) -> int:
        """Global steps in a full epoch (the same on every rank when padding or dropping the last batch)."""
        g = self.global_batch_size
        return self.num_samples // g if self.drop_last else -(-self.num_samples // g)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration yields."""
        self.epoch = int(epoch)

    def set_start_step(self, start_step: int) -> None:
        """Skip the first ``start_step`` batches of each iteration until set back to 0."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ConfigError(f"start_step must lie in 0..{self.steps_per_epoch}, got {start_step}")
        self.start_step = int(start_step)

    def global_order(self, epoch: int | None = None) -> list[tuple[int, int, int]]:
        """The epoch's order of keys ``(index, epoch, repeat)``, before sharding (identical on all ranks)."""
        epoch = self.epoch if epoch is None else epoch
        n = self.num_samples
        if self.shuffle and self.shard_sizes is not None:
            perm = shard_order(self.shard_sizes, self.seed, epoch, self.shard_window)
        elif self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        if self.num_repeats == 1:
            return [(i, epoch, 0) for i in perm]
        k = self.num_repeats
        return [(perm[j // k], epoch, j % k) for j in range(n)]

    def _rank_batches(self, order: list) -> list[list]:
        g, b, n_ranks, r = self.global_batch_size, self.batch_size, self.world_size, self.rank
        full = len(order) // g
        batches = [order[s * g + r * b: s * g + (r + 1) * b] for s in range(full)]
        tail = order[full * g:]
        if tail and not self.drop_last:
            if self.pad:
                extra = -len(tail) % n_ranks
                tail = tail + (order * (extra // max(len(order), 1) + 1))[:extra]
                piece = len(tail) // n_ranks
                mine = tail[r * piece:(r + 1) * piece]
            else:
                base, rem = divmod(len(tail), n_ranks)
                lo = r * base + min(r, rem)
                mine = tail[lo:lo + base + (r < rem)]
            if mine:
                batches.append(mine)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        # No side effect: torch's multi-process DataLoader iterator calls iter() twice when it is created, and
        # both calls must see the same start step (clearing it here made a resume with workers replay the epoch)
        return iter(self._rank_batches(self.global_order())[self.start_step:])

    def __len__(self) -> int:
        """Batches the next iteration yields on this rank (after any pending ``start_step``)."""
        g = self.global_batch_size
        n = self.num_samples
        full = n // g
        tail = n - full * g
        has_tail = False
        if tail and not self.drop_last:
            if self.pad:
                has_tail = True
            else:
                base, rem = divmod(tail, self.world_size)
                has_tail = base + (self.rank < rem) > 0
        return max(full + has_tail - self.start_step, 0)

    def state_dict(self) -> dict[str, int]:
        """What determines the order, for a checkpoint's ``sampler`` entry."""
        return {"seed": self.seed, "epoch": self.epoch, "num_samples": self.num_samples,
                "global_batch_size": self.global_batch_size, "num_repeats": self.num_repeats,
                "shuffle": int(self.shuffle),
                "shard_window": self.shard_window if self.shuffle and self.shard_sizes is not None else 0}
