"""Mixup (Zhang et al., arXiv 1710.09412) and CutMix (Yun et al., arXiv 1905.04899) with label smoothing,
from timm (the recipe: mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1). The soft targets they produce are
scored by training's ``ClassificationLoss``.

Mixing in groups: a batch is cut into groups of ``group`` consecutive samples of the GLOBAL batch, and each
group draws its own lambda, mixup/cutmix switch and cutmix box from ``(key, group)``; images mix with their
mirror inside their group. A process that holds whole groups then mixes exactly what one process holding the
whole global batch mixes, whatever the number of processes or accumulation steps (see :func:`mix_group_size`).
"""
from __future__ import annotations

import numpy as np
import torch
from timm.data.mixup import Mixup, mixup_target

from pitvit.utils.errors import ConfigError
from pitvit.utils.seed import mix_seed

__all__ = ["BatchMixup", "build_mixup", "mix_group_size"]

_MODES = ("batch", "pair", "elem")


class BatchMixup(Mixup):
    """timm's :class:`~timm.data.mixup.Mixup` that also accepts an odd batch in ``batch`` mode.

    A batch can lose images that failed to decode, so its size may be odd. Batch mode mixes each image with
    its mirror in the flipped batch, which is defined for any size (the middle image mixes with itself);
    ``pair`` and ``elem`` modes still need an even batch.

    Called with a ``key`` (batch mode), the batch is mixed in groups of ``group`` samples (0: one group),
    the first being group number ``first_group`` of the global batch: group ``g`` draws its parameters with
    timm's own code from numpy seeded by ``mix_seed(key, g)`` (numpy's global state is left as it was).

    Returns ``(mixed images, soft targets)``; each target row sums to 1.
    """

    group: int = 0

    def __call__(self, x: torch.Tensor, target: torch.Tensor, key: int | None = None,
                 first_group: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if key is not None:
            return self._mix_groups(x, target, key, first_group)
        if self.mode != "batch" or len(x) % 2 == 0:
            return super().__call__(x, target)
        lam = self._mix_batch(x)
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing,
                              getattr(self, "multi_label", False))

    def _mix_groups(self, x: torch.Tensor, target: torch.Tensor, key: int,
                    first_group: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode != "batch":
            raise ConfigError(f"mixing in groups needs aug.mixup_mode=batch, not {self.mode!r} (pair and elem "
                              f"draw per sample from numpy's global generator)")
        size = self.group or len(x)
        targets = []
        state = np.random.get_state()
        try:
            for j, start in enumerate(range(0, len(x), size)):
                np.random.seed(mix_seed(key, first_group + j) % 2**32)
                lam = self._mix_batch(x[start:start + size])  # in place on the group's view of x
                targets.append(mixup_target(target[start:start + size], self.num_classes, lam,
                                            self.label_smoothing, getattr(self, "multi_label", False)))
        finally:
            np.random.set_state(state)
        return x, torch.cat(targets)


def mix_group_size(mix_group: int, *, batch_size: int, world_size: int, accum_steps: int) -> int:
    """The mixing group size a run uses: ``mix_group``, or the global batch when that is smaller.

    Every process's batch (one accumulation micro-batch) must hold whole groups, else a group would straddle
    processes or micro-batches and mix differently from one process; such a configuration is refused.

    Raises:
        ConfigError: ``batch_size`` is not a multiple of the group size.
    """
    if mix_group < 1:
        raise ConfigError(f"aug.mix_group must be >= 1, got {mix_group}")
    size = min(mix_group, batch_size * world_size * accum_steps)
    if batch_size % size:
        per = "per process and accumulation step" if world_size > 1 or accum_steps > 1 else "per step"
        raise ConfigError(f"mixing groups of {size} images (aug.mix_group) do not fit whole in a batch of {batch_size} "
                          f"{per}: set aug.mix_group to a divisor of data.batch_size ({batch_size}), or use fewer "
                          f"processes or accumulation steps")
    return size


def build_mixup(
    *,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    label_smoothing: float = 0.1,
    group: int = 0,
) -> BatchMixup | None:
    """timm's Mixup/CutMix with the recipe's defaults, or ``None`` when both alphas (or ``prob``) are 0.

    Apply it to a batch on the training device: ``images, targets = mixup(images, labels)``. It draws from
    numpy's global generator, so seed numpy in the training process.

    Args:
        num_classes: width of the soft targets.
        mixup_alpha: Beta(alpha, alpha) for mixup (0 disables).
        cutmix_alpha: Beta(alpha, alpha) for CutMix (0 disables).
        prob: probability of mixing a batch at all.
        switch_prob: probability of CutMix instead of mixup when both are enabled.
        mode: ``batch`` (one lambda per batch), ``pair`` or ``elem``.
        label_smoothing: smoothing folded into the soft targets.
        group: images per mixing group when called with a key (0: the whole batch; see
            :func:`mix_group_size`).
    """
    if mode not in _MODES:
        raise ConfigError(f"unknown mixup mode {mode!r}; valid: {', '.join(_MODES)}")
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return None
    mixer = BatchMixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                       mode=mode, label_smoothing=label_smoothing, num_classes=num_classes)
    mixer.group = int(group)
    return mixer
