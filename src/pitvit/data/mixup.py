"""Mixup (Zhang et al., arXiv 1710.09412) and CutMix (Yun et al., arXiv 1905.04899) with label smoothing,
from timm (the recipe: mixup 0.8, cutmix 1.0, switch 0.5, smoothing 0.1). The soft targets they produce are
scored by training's ``ClassificationLoss``.
"""
from __future__ import annotations

import torch
from timm.data.mixup import Mixup, mixup_target

from pitvit.utils.errors import ConfigError

__all__ = ["BatchMixup", "build_mixup"]

_MODES = ("batch", "pair", "elem")


class BatchMixup(Mixup):
    """timm's :class:`~timm.data.mixup.Mixup` that also accepts an odd batch in ``batch`` mode.

    A batch can lose images that failed to decode, so its size may be odd. Batch mode mixes each image with
    its mirror in the flipped batch, which is defined for any size (the middle image mixes with itself);
    ``pair`` and ``elem`` modes still need an even batch.

    Returns ``(mixed images, soft targets)``; each target row sums to 1.
    """

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode != "batch" or len(x) % 2 == 0:
            return super().__call__(x, target)
        lam = self._mix_batch(x)
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing,
                              getattr(self, "multi_label", False))


def build_mixup(
    *,
    num_classes: int,
    mixup_alpha: float = 0.8,
    cutmix_alpha: float = 1.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    mode: str = "batch",
    label_smoothing: float = 0.1,
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
    """
    if mode not in _MODES:
        raise ConfigError(f"unknown mixup mode {mode!r}; valid: {', '.join(_MODES)}")
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return None
    return BatchMixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, prob=prob, switch_prob=switch_prob,
                      mode=mode, label_smoothing=label_smoothing, num_classes=num_classes)
