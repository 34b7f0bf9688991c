"""Exponential moving average of the weights (Polyak averaging), as in DeiT's and PiT's recipe (decay 0.99996).

The average is timm's ``ModelEmaV3`` (a full copy of the model in eval mode; parameters interpolated, buffers
copied); its ``state_dict`` has the model's keys, so a checkpoint's ``ema_state_dict`` loads into a fresh model
like the raw weights do.
"""
from __future__ import annotations

from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(ModelEmaV3):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers are copied.

    Args:
        model: the model to average (unwrapped: not DDP, not compiled).
        decay: the per-step decay.
        warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` for the ``n``-th update, so a short run
            is not dominated by the initial weights.

    Where it differs from timm's ``ModelEmaV3``, on purpose: the warmup ramp above (the one DeiT-era timm and
    TensorFlow's ``ExponentialMovingAverage(num_updates=)`` use; V3's is a power law), counted by ``updates``,
    which checkpoints store so a resumed run ramps on; ``state_dict`` without the ``module.`` prefix (EMA
    weights load into a plain model); parameters that never require gradients.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99996, warmup: bool = False) -> None:
        super().__init__(model, decay=decay, exclude_buffers=True)
        self.module.requires_grad_(False)
        self.warmup = warmup
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    def get_decay(self, step: int | None = None) -> float:  # noqa: ARG002 - counted by self.updates
        return self.current_decay()

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> None:
        super().update(model)
        self.updates += 1

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # the model's keys, nothing else
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state, strict=strict)
