"""The in-memory stage: a dataset held as one uint8 tensor, augmented a whole batch at a time in the main process.

For small data sets that fit in memory (Fashion-MNIST: 60,000 x 28 x 28 bytes), per-image PIL transforms in
loader workers cost a core that the model could use. :class:`MemoryStage` instead gathers a batch's images from
the tensor and applies the small-image augmentation (pad by ``padding``, random crop back, horizontal flip with
probability ``hflip``) as one indexing operation, then normalizes. Each sample's offsets and flip are keyed draws
from (seed, epoch, index, repeat) (:mod:`pitvit.utils.keyed`), like every other stage's per-sample augmentation,
so batches depend neither on the number of processes or workers nor on where a run resumed.

Evaluation batches are the images as they are, normalized: the same values as the CPU stage's evaluation
transform for images already at the input size.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pitvit.utils.errors import ConfigError
from pitvit.utils.keyed import hash_keys, uniform_from_keys
from pitvit.utils.seed import mix_seed

from .loader import KeyedDataset, StageBatch
from .transforms import resolve_aug, size_hw

__all__ = ["MemoryStage"]

_SUPPORTED = "aug.crop pad or center, aug.padding, aug.hflip"


class MemoryStage:
    """Batches gathered from a dataset's ``images`` array and augmented in the main process.

    Args:
        input_size: the model's input size; the images must already have it.
        mean, std: normalization, per channel, for values in [0, 1].
        aug: the augmentation (a preset name or settings, as :func:`pitvit.data.resolve_aug`); only the crop
            ``pad`` (or ``center``, meaning none), ``padding`` and ``hflip`` are applied, and anything else
            that would change an image is a :class:`ConfigError`.

    Raises:
        ConfigError: an augmentation this stage does not apply.
    """

    def __init__(self, *, input_size: int | Sequence[int], mean: Sequence[float], std: Sequence[float],
                 aug: str | Mapping[str, Any] | None = "none") -> None:
        a = resolve_aug(aug)
        unsupported = []
        if a["crop"] not in ("pad", "center"):
            unsupported.append(f"aug.crop={a['crop']}")
        if a.get("auto_augment"):
            unsupported.append(f"aug.auto_augment={a['auto_augment']}")
        if a.get("re_prob", 0) > 0:
            unsupported.append(f"aug.re_prob={a['re_prob']}")
        if unsupported:
            raise ConfigError(f"data.pipeline=memory applies {_SUPPORTED} only, not {', '.join(unsupported)}; "
                              f"change those or use data.pipeline=cpu")
        self.size = size_hw(input_size)
        self.padding = int(a["padding"]) if a["crop"] == "pad" else 0
        self.hflip = float(a["hflip"])
        self.mean = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        self.std = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        if bool((self.std <= 0).any()):
            raise ConfigError(f"data.std must be positive, got {list(std)}")

    def bind(self, dataset: Any, *, seed: int, train: bool, rank: int) -> _BoundMemoryStage:
        images = getattr(dataset, "images", None)
        if images is None:
            raise ConfigError(f"data.pipeline=memory needs a dataset held in memory (Fashion-MNIST), not "
                              f"{type(dataset).__name__}; use data.pipeline=cpu")
        images = torch.as_tensor(np.ascontiguousarray(images))
        if images.dtype != torch.uint8 or images.ndim not in (3, 4):
            raise ConfigError(f"data.pipeline=memory needs uint8 images (N, H, W[, C]), got {images.dtype} "
                              f"{tuple(images.shape)}")
        if tuple(images.shape[1:3]) != self.size:
            raise ConfigError(f"data.pipeline=memory does not resize: the images are {tuple(images.shape[1:3])} "
                              f"but the input size is {self.size}; set data.input_size to the image size or use "
                              f"data.pipeline=cpu")
        if images.ndim == 3:
            images = images.unsqueeze(-1)
        if images.shape[-1] != self.mean.shape[1]:
            raise ConfigError(f"data.mean has {self.mean.shape[1]} channel(s) but the images have "
                              f"{images.shape[-1]}")
        return _BoundMemoryStage(self, images.permute(0, 3, 1, 2).contiguous(),
                                 torch.as_tensor(list(dataset.targets), dtype=torch.long), seed=seed, rank=rank,
                                 train=train)

    def __repr__(self) -> str:
        return f"MemoryStage(size={self.size}, padding={self.padding}, hflip={self.hflip})"


class _Keys(KeyedDataset):
    """What the sampler indexes: a sample stays its (index, repeat) (the batch is gathered later)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def load(self, index: int, epoch: int, repeat: int) -> tuple[int, int]:
        return index, repeat


class _BoundMemoryStage:
    pin_memory = False

    def __init__(self, stage: MemoryStage, images: torch.Tensor, labels: torch.Tensor, *, seed: int, rank: int,
                 train: bool) -> None:
        self.stage = stage
        self.images = images  # uint8 (N, C, H, W)
        self.labels = labels
        self.dataset = _Keys(len(labels))
        self.seed, self.rank, self.train = int(seed), int(rank), train

    def collate(self, items: list[tuple[int, int]]) -> torch.Tensor:
        return torch.as_tensor(items, dtype=torch.long).view(-1, 2)

    def run(self, batches: Iterator[torch.Tensor], epoch: int, step0: int) -> Iterator[StageBatch]:
        for keys in batches:
            index = keys[:, 0]
            x = self.images.index_select(0, index)
            if self.train:
                x = self.augment(x, hash_keys(keys[:, 0] << 16 | keys[:, 1], mix_seed(self.seed, epoch)))
            yield StageBatch(self.normalize(x), self.labels.index_select(0, index), [], [])

    def augment(self, x: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """Pad by ``padding`` (zeros), crop a random window of the input size, flip with probability ``hflip``,
        each drawn from the sample's key: one gather for the batch."""
        n, _, h, w = x.shape
        p, hflip = self.stage.padding, self.stage.hflip
        if p == 0 and hflip == 0:
            return x
        dy = (uniform_from_keys(keys, 0) * (2 * p + 1)).long()
        dx = (uniform_from_keys(keys, 1) * (2 * p + 1)).long()
        flip = uniform_from_keys(keys, 2) < hflip
        cols = torch.arange(w)
        cols = dx[:, None] + torch.where(flip[:, None], cols.flip(0)[None], cols[None])  # (n, w)
        rows = dy[:, None] + torch.arange(h)[None]  # (n, h)
        xp = F.pad(x, (p, p, p, p)) if p else x
        return xp[torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.stage.mean) / self.stage.std

    def __repr__(self) -> str:
        return f"{self.stage!r} over {len(self.labels)} images"
