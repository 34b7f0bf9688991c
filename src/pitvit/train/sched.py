"""Learning-rate schedule of the DeiT/PiT recipe: linear warmup, cosine decay, optional cooldown.

The curve ``lr(t)`` is timm's ``CosineLRScheduler`` as DeiT's ``main.py`` builds it (timm 0.3.x,
``create_scheduler``: ``t_initial=epochs``, one cycle, no warmup prefix): ``warmup_lr + t * (base_lr -
warmup_lr) / warmup_epochs`` while ``t < warmup_epochs``, then ``min_lr + (base_lr - min_lr) * (1 + cos(pi *
t / epochs)) / 2`` with ``t`` counted from 0 (the warmup eats into the cosine), and ``min_lr`` from ``t =
epochs`` on. Where a training epoch samples that curve is the *stepping*, and it is what makes a run replay
its source:

``deit``
    DeiT's loop trains an epoch at the rate currently set and only then calls ``lr_scheduler.step(epoch)``:
    epochs 0 and 1 both train at ``warmup_lr``, epoch ``e >= 1`` trains at ``lr(e - 1)``.
``epoch``
    timm's ``train.py``: epoch ``e`` trains at ``lr(e)``.
``step``
    timm's ``train.py`` with updates per optimizer step: step ``k`` of epoch ``e`` trains at
    ``lr(e + k / steps_per_epoch)``.
``paddle``
    The Paddle reproduction's scheduler steps once when it is built, so (0-based) epoch ``e`` trains at
    ``lr(e + 1)``.

The run lasts ``epochs + cooldown_epochs`` epochs whatever the stepping (DeiT's ``create_scheduler`` adds 10
cooldown epochs to the count it returns, but ``main.py`` never trains them; the official recipes set 0).
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LRSchedule", "STEPPINGS", "SCHEDULES"]

STEPPINGS = ("deit", "epoch", "step", "paddle")
SCHEDULES = ("cosine", "constant")


class LRSchedule:
    """Sets the learning rate of every parameter group of ``optimizer``.

    Args:
        optimizer: the optimizer whose groups get the rate.
        base_lr: peak rate (already scaled for the batch size).
        epochs: length of the cosine (timm's ``t_initial``), in epochs.
        warmup_epochs: linear warmup from ``warmup_lr`` to ``base_lr``.
        warmup_lr: rate at ``t = 0``.
        min_lr: rate at the end of the cosine and during the cooldown.
        cooldown_epochs: epochs trained after ``epochs`` (the run lasts ``epochs + cooldown_epochs``).
        stepping: where each epoch samples the curve: ``deit``, ``epoch``, ``step`` or ``paddle`` (see the
            module docstring).
        steps_per_epoch: optimizer steps per epoch (for ``step``).
        name: ``cosine``, or ``constant`` (warmup then ``base_lr``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, base_lr: float, epochs: int, warmup_epochs: float = 0,
                 warmup_lr: float = 0.0, min_lr: float = 0.0, cooldown_epochs: int = 0, stepping: str = "deit",
                 steps_per_epoch: int = 1, name: str = "cosine") -> None:
        if name not in SCHEDULES:
            raise ValueError(f"unknown schedule {name!r}; choose {' or '.join(SCHEDULES)}")
        if stepping not in STEPPINGS:
            raise ValueError(f"unknown stepping {stepping!r}; choose one of {', '.join(STEPPINGS)}")
        self.optimizer = optimizer
        self.base_lr, self.epochs, self.warmup_epochs = base_lr, epochs, warmup_epochs
        self.warmup_lr, self.min_lr, self.cooldown_epochs = warmup_lr, min_lr, cooldown_epochs
        self.stepping = stepping
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.name = name
        self.last_t = 0.0
        self.set(0, 0)

    @classmethod
    def from_config(cls, sched: Any, optimizer: torch.optim.Optimizer, base_lr: float, epochs: int,
                    steps_per_epoch: int = 1) -> LRSchedule:
        """The schedule a run's ``sched`` section (a :class:`~pitvit.train.config.SchedCfg`) describes."""
        return cls(optimizer, base_lr, epochs, sched.warmup_epochs, sched.warmup_lr, sched.min_lr,
                   sched.cooldown_epochs, sched.stepping, steps_per_epoch, sched.name)

    @property
    def per_step(self) -> bool:
        """Whether the engine must call :meth:`set` at every optimizer step (else once per epoch)."""
        return self.stepping == "step"

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.cooldown_epochs

    def lr_at(self, t: float) -> float:
        """The rate at (possibly fractional) scheduler time ``t``, in epochs."""
        if t < self.warmup_epochs:
            return self.warmup_lr + t * (self.base_lr - self.warmup_lr) / self.warmup_epochs
        if self.name == "constant":
            return self.base_lr
        if t >= self.epochs:
            return self.min_lr
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * t / self.epochs))

    def time_of(self, epoch: int, step: int = 0) -> float:
        """Where step ``step`` of 0-based training epoch ``epoch`` samples the curve (see ``stepping``)."""
        if self.stepping == "step":
            return epoch + step / self.steps_per_epoch
        if self.stepping == "deit":
            return float(max(epoch - 1, 0))
        if self.stepping == "paddle":
            return float(epoch + 1)
        return float(epoch)

    def set(self, epoch: int, step: int = 0) -> float:
        """Set the rate for ``step`` of ``epoch`` (the step counts only for ``step`` stepping); returns it."""
        t = self.time_of(epoch, step)
        self.last_t = t
        lr = self.lr_at(t)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("base_lr", "epochs", "warmup_epochs", "warmup_lr", "min_lr",
                                              "cooldown_epochs", "stepping", "steps_per_epoch", "name",
                                              "last_t")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # The settings come from the configuration, and the runner sets every epoch's rate from the epoch
        # index, so a resumed run continues the uninterrupted sequence; only the position is restored.
        self.last_t = float(state.get("last_t", 0.0))
