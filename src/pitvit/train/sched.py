"""Learning-rate schedule of the DeiT/PiT recipe: linear warmup, cosine decay, optional cooldown.

Epoch ``e`` (0-based) trains at ``lr(e)`` as in timm's ``train.py`` (timm's ``CosineLRScheduler`` with
``warmup_prefix=False``: the cosine is a function of the epoch counted from 0, so the warmup eats into it).
DeiT's ``main.py`` steps the scheduler one epoch late (epochs 0 and 1 both run at ``lr(0)``); we do not copy
that quirk. With ``per_step`` the same curve is sampled at fractional epochs ``e + step / steps_per_epoch``.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LRSchedule"]


class LRSchedule:
    """Sets the learning rate of every parameter group of ``optimizer``.

    Args:
        optimizer: the optimizer whose groups get the rate.
        base_lr: peak rate (already scaled for the batch size).
        epochs: length of the cosine (timm's ``t_initial``), in epochs.
        warmup_epochs: linear warmup from ``warmup_lr`` to ``base_lr``.
        warmup_lr: rate at the first epoch.
        min_lr: rate at the end of the cosine and during the cooldown.
        cooldown_epochs: epochs at ``min_lr`` after ``epochs`` (the run lasts ``epochs + cooldown_epochs``).
        warmup_prefix: the cosine starts after the warmup and spans ``epochs - warmup_epochs`` (PaddleViT),
            instead of spanning ``epochs`` from epoch 0 (timm, DeiT).
        per_step: update at every optimizer step instead of every epoch.
        steps_per_epoch: optimizer steps per epoch (for ``per_step``).
        name: ``cosine``, or ``constant`` (warmup then ``base_lr``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, epochs: int, warmup_epochs: float = 0,
                 warmup_lr: float = 0.0, min_lr: float = 0.0, cooldown_epochs: int = 0,
                 warmup_prefix: bool = False, per_step: bool = False, steps_per_epoch: int = 1,
                 name: str = "cosine") -> None:
        if name not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {name!r}; choose cosine or constant")
        self.optimizer = optimizer
        self.base_lr, self.epochs, self.warmup_epochs = base_lr, epochs, warmup_epochs
        self.warmup_lr, self.min_lr, self.cooldown_epochs = warmup_lr, min_lr, cooldown_epochs
        self.warmup_prefix, self.per_step = warmup_prefix, per_step
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.name = name
        self.last_t = 0.0
        self.set(0, 0)

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def lr_at(self, t: float) -> float:
        """The rate at (possibly fractional) epoch ``t``."""
        if t < self.warmup_epochs:
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_epochs
        if self.name == "constant":
            return self.base_lr
        if t >= self.epochs:
            return self.min_lr
        start = self.warmup_epochs if self.warmup_prefix else 0
        span = max(self.epochs - start, 1e-12)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * (t - start) / span))

    def set(self, epoch: int, step: int = 0) -> float:
        """Set the rate for ``step`` of ``epoch`` (the step is ignored unless ``per_step``); returns it."""
        t = epoch + step / self.steps_per_epoch if self.per_step else float(epoch)
        self.last_t = t
        lr = self.lr_at(t)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("base_lr", "epochs", "warmup_epochs", "warmup_lr", "min_lr",
                                              "cooldown_epochs", "warmup_prefix", "per_step",
                                              "steps_per_epoch", "name", "last_t")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The settings come from the configuration; only the position is restored.
        self.last_t = float(state.get("last_t", 0.0))
