"""The training engine: one training step, one epoch of steps, and one evaluation pass.

Nothing here reads a configuration: ``fit`` builds the objects and passes them in, so the engine can be used
(and tested) with any model, loader and optimizer. A :class:`TrainStep` holds what every batch goes through
(autocast, gradient accumulation, the fp16 scaler, clipping, the optimizer and the EMA);
:func:`train_one_epoch` is the loop around it (seeding, skipping a resumed epoch's done batches, progress, the
non-finite-loss check).

The recipe's per-step randomness is keyed, not drawn: mixup/cutmix parameters per mixing group and drop path
per sample and block are functions of ``(seed, epoch, optimizer step)`` and of the sample's place in the GLOBAL
batch (``first + i``: micro-batch ``m`` of rank ``r`` starts at ``(m * world + r) * batch``). N processes, or
one process with N accumulation steps, therefore draw what one process with the whole batch draws, and a
resumed run replays the same steps exactly. Anything else random in a step draws from generators seeded from
``(seed, epoch, step, rank)`` through :func:`pitvit.utils.seed.mix_seed`.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pitvit.models.pit import keyed_drop_path
from pitvit.utils.distributed import is_distributed
from pitvit.utils.errors import NonFiniteLossError
from pitvit.utils.keyed import hash_keys
from pitvit.utils.logs import Progress
from pitvit.utils.precision import autocast
from pitvit.utils.seed import mix_seed

from .ema import ModelEma
from .sched import LRSchedule

__all__ = ["TrainStep", "train_one_epoch", "evaluate", "step_key"]

_MIX, _DROP_PATH = 1, 2  # what a step key is for


def step_key(seed: int, epoch: int, optimizer_step: int) -> int:
    """The key of every keyed draw of one optimizer step."""
    return mix_seed(seed, epoch, optimizer_step)


@dataclass
class TrainStep:
    """What every training batch goes through; ``step(images, labels, boundary)`` returns the batch's loss.

    The batch is moved to ``device`` and mixed, the loss computed under autocast and back-propagated (scaled by
    ``1 / accum_steps``, and by ``scaler`` for fp16). At an accumulation ``boundary`` the gradients are
    unscaled and clipped, the optimizer steps, the gradients are cleared and the EMA follows; between
    boundaries a DDP model skips its gradient all-reduce (``no_sync``).

    Args:
        model: the model to train (possibly DDP-wrapped or compiled).
        optimizer: the optimizer over ``model``'s parameters.
        loss_fn: called as ``loss_fn(outputs, targets, images)``.
        device: where the batches go.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for fp32.
        scaler: a ``GradScaler`` for fp16, or ``None``.
        mixup: ``mixup(images, labels) -> (images, soft_targets)`` or ``None``.
        accum_steps: batches per optimizer step.
        clip_grad: maximum global gradient norm; 0 disables clipping.
        ema: an EMA updated after every optimizer step, or ``None``.
        ema_model: the unwrapped model the EMA follows (default: ``model``).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[..., torch.Tensor]
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    mixup: Callable | None = None
    accum_steps: int = 1
    clip_grad: float = 0.0
    ema: ModelEma | None = None
    ema_model: nn.Module | None = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, boundary: bool = True, key: int | None = None,
                 first: int = 0) -> torch.Tensor:
        """Forward and backward one batch; at a ``boundary`` also the optimizer step. Returns the loss (fp32,
        detached, on the device: reading it would wait for the device).

        With a ``key`` (:func:`step_key`), mixing and drop path are keyed draws: ``images[i]`` is sample
        ``first + i`` of the global batch (``mixup`` must then have a ``group`` size that divides ``first``);
        without, they draw from the global generators.
        """
        images = images.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        targets = labels
        if self.mixup is not None:
            if key is not None and getattr(self.mixup, "group", None) is not None:
                group = self.mixup.group or len(images)
                images, targets = self.mixup(images, labels, key=mix_seed(key, _MIX), first_group=first // group)
            else:
                images, targets = self.mixup(images, labels)
        keys = None
        if key is not None:
            positions = torch.arange(first, first + len(images), device=images.device)
            keys = hash_keys(positions, mix_seed(key, _DROP_PATH))
        no_sync = not boundary and hasattr(self.model, "no_sync")
        with self.model.no_sync() if no_sync else contextlib.nullcontext(), keyed_drop_path(self.model, keys):
            with autocast(self.device, self.amp_dtype):
                loss = self.loss_fn(self.model(images), targets, images)
            scaled = loss / self.accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if boundary:
            self._optimizer_step()
        return loss.detach().float()

    def _optimizer_step(self) -> None:
        if self.clip_grad > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.ema_model if self.ema_model is not None else self.model)


def _seed_step(seed: int, epoch: int, step: int, rank: int) -> None:
    s = mix_seed(seed, epoch, step, rank)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _skip(loader: Iterable, start_step: int) -> Iterable:
    """The loader from batch ``start_step`` on; asks the sampler to skip when it can, else reads and drops."""
    if start_step <= 0:
        return iter(loader)
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_start_step"):
            obj.set_start_step(start_step)
            return iter(loader)
    return itertools.islice(iter(loader), start_step, None)


class _LossCheck:
    """The losses of recent steps, read back from the device together (one sync per progress line) and checked:
    a non-finite one stops every process, which would otherwise wait forever in the next all-reduce."""

    def __init__(self, epoch: int, first_step: int, partial: dict[str, float], device: torch.device) -> None:
        self.epoch, self.first, self.partial, self.device = epoch, first_step, partial, device
        self.pending: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def flush(self, last_step: int) -> None:
        """Check the pending losses (steps ``first .. last_step``) and add them to the running sums."""
        if not self.pending:
            return
        values = torch.stack(self.pending).tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), -1)
        if is_distributed():
            flag = torch.tensor([1.0 if bad >= 0 else 0.0], device=self.device)
            dist.all_reduce(flag)
            if flag.item() > 0 and bad < 0:  # another process saw it
                raise NonFiniteLossError(self.epoch, last_step, float("nan"))
        if bad >= 0:
            raise NonFiniteLossError(self.epoch, self.first + bad, values[bad])
        self.partial["loss_sum"] += sum(values)
        self.partial["batches"] += len(values)
        self.pending, self.first = [], last_step + 1

    def mean(self) -> float:
        return self.partial["loss_sum"] / self.partial["batches"] if self.partial["batches"] else float("nan")


def train_one_epoch(step: TrainStep, loader: Iterable, *, epoch: int = 0, seed: int = 0,
                    schedule: LRSchedule | None = None, start_step: int = 0, partial: dict[str, float] | None = None,
                    max_steps: int = 0, progress: Progress | None = None,
                    should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train for one epoch (or until ``should_stop()``), an optimizer step every ``step.accum_steps`` batches.

    Args:
        step: the model, optimizer and everything else a batch goes through.
        loader: yields ``(images, labels)``.
        epoch: 0-based epoch index: keys the step's draws (with ``seed``, the optimizer step and each sample's
            place in the global batch: the loader's ``batch_size``, this rank and the accumulation micro-batch),
            and positions a per-step ``schedule``.
        seed: the run's seed.
        schedule: an :class:`~pitvit.train.sched.LRSchedule` set at every optimizer step if it is ``per_step``
            (an epoch-wise schedule is the caller's to set), or ``None``.
        start_step: batches of this epoch already done (a resumed epoch skips them).
        partial: running sums ``{"loss_sum", "batches", "images"}`` of a resumed epoch.
        max_steps: stop after this many batches (0: the whole loader).
        progress: where progress goes; the loss is checked for finiteness whenever a line is due (every
            ``progress.interval`` batches). Default: no output, checked every 50 batches.
        should_stop: polled after every optimizer step; ``True`` ends the epoch early (``stopped``).

    Returns:
        ``{"loss", "steps", "images", "time_s", "img_s", "lr", "stopped", "next_step", "partial"}``: the loss is
        the mean over this process's batches, ``img_s`` counts all processes.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite.
    """
    step.model.train()
    total = len(loader) if hasattr(loader, "__len__") else 0
    if max_steps:
        total = min(total, max_steps) if total else max_steps
    rank, world = _rank_and_world()
    partial = dict(partial or {"loss_sum": 0.0, "batches": 0, "images": 0})
    progress = progress or Progress(total, enabled=False)
    losses = _LossCheck(epoch, start_step, partial, step.device)
    lr, images, i, stopped = step.optimizer.param_groups[0]["lr"], 0, start_step - 1, False
    batch = getattr(loader, "batch_size", None)
    t0 = time.perf_counter()
    _seed_step(seed, epoch, -1, rank)  # anything the loader draws from the global generators
    batches = _skip(loader, start_step)
    if max_steps:
        batches = itertools.islice(batches, max(max_steps - start_step, 0))
    for i, (x, y) in enumerate(batches, start=start_step):
        _seed_step(seed, epoch, i, rank)
        if schedule is not None and schedule.per_step and i % step.accum_steps == 0:
            lr = schedule.set(epoch, i // step.accum_steps)
        boundary = (i + 1) % step.accum_steps == 0 or i + 1 == total
        micro = i % step.accum_steps
        first = (micro * world + rank) * (batch or x.shape[0])
        losses.add(step(x, y, boundary, key=step_key(seed, epoch, i // step.accum_steps), first=first))
        images += x.shape[0]
        partial["images"] += x.shape[0]
        line_due = progress.due(i + 1) or i + 1 == total
        if line_due:
            losses.flush(i)
        if line_due or progress.bar:  # a bar moves every batch and shows the loss as of the last check
            progress.update(i + 1, images * world, f"loss {losses.mean():.4f} lr {lr:.3e}")
        if boundary and should_stop is not None and should_stop():
            stopped = i + 1 < total
            break
    losses.flush(i)
    progress.close()
    elapsed = time.perf_counter() - t0
    return {"loss": partial["loss_sum"] / max(partial["batches"], 1), "steps": i + 1, "images": partial["images"],
            "time_s": elapsed, "img_s": images * world / max(elapsed, 1e-9), "lr": lr, "stopped": stopped,
            "next_step": i + 1 if stopped else 0, "partial": partial}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp_dtype: torch.dtype | None = None,
             max_steps: int = 0) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 (%) over ``loader``, summed over all processes when distributed.

    A ``(cls, dist)`` pair of outputs (a distilled model in distilled-training mode) is scored on its mean.

    Returns:
        ``{"loss", "top1", "top5", "n"}``.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, n
    for i, (images, labels) in enumerate(loader):
        if max_steps and i >= max_steps:
            break
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            out = model(images)
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        out = out.float()
        k = min(5, out.shape[1])
        hit = out.topk(k, dim=1).indices.eq(labels[:, None])
        sums += torch.stack([
            nn.functional.cross_entropy(out, labels, reduction="sum").double(),
            hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
            torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
    if is_distributed():
        dist.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    model.train(was_training)
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}
