"""Exponential moving average of the weights (Polyak averaging), as in DeiT's and PiT's recipe (decay 0.99996).

The average is a full copy of the model kept in eval mode; its ``state_dict`` has the model's keys, so a
checkpoint's ``ema_state_dict`` loads into a fresh model like the raw weights do.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["ModelEma"]


class ModelEma(nn.Module):
    """``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; buffers are copied.

    Args:
        model: the model to average (unwrapped: not DDP, not compiled).
        decay: the per-step decay.
        warmup: ramp the decay as ``min(decay, (1 + n) / (10 + n))`` for the ``n``-th update, so a short run
            is not dominated by the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float = 0.99996, warmup: bool = False) -> None:
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.updates = 0

    def current_decay(self) -> float:
        if self.warmup:
            return min(self.decay, (1 + self.updates) / (10 + self.updates))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_p = [p for p in self.module.parameters()]
        src_p = [p.detach() for p in model.parameters()]
        floats = [(e, s) for e, s in zip(ema_p, src_p) if e.is_floating_point()]
        if floats:
            torch._foreach_lerp_([e for e, _ in floats], [s for _, s in floats], 1.0 - d)
        for e, s in zip(self.module.buffers(), model.buffers()):
            e.copy_(s)
        self.updates += 1

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # the model's keys, nothing else
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state, strict=strict)
