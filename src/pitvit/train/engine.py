"""The training engine: one epoch of training and one evaluation pass, with explicit arguments only.

Nothing here reads a configuration: ``fit`` builds the objects and passes them in, so the engine can be used
(and tested) with any model, loader and optimizer.

Per-step randomness (mixup, cutmix, drop path) is seeded from ``(seed, epoch, step, rank)``, so a run that is
interrupted and resumed replays the same steps exactly.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import resource
import sys
import time
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from .checkpoint import seed_step

__all__ = ["train_one_epoch", "evaluate", "NonFiniteLossError"]

log = logging.getLogger("pitvit.train")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (0-based)."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"non-finite loss ({value}) at epoch {epoch + 1}, step {step + 1}")
        self.epoch, self.step, self.value = epoch, step, value


def _dist_on() -> bool:
    return dist.is_available() and dist.is_initialized()


def memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Progress:
    """A progress bar on a terminal, or a log line every ``interval`` steps elsewhere."""

    def __init__(self, total: int, epoch: int, interval: int, bar: bool, world_size: int, enabled: bool) -> None:
        self.total, self.epoch, self.interval, self.world = total, epoch, interval, world_size
        self.bar = bar and enabled
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self.images = 0

    def update(self, step: int, images: int, loss: float, lr: float, device: torch.device, force: bool = False) -> None:
        self.images = images
        if not self.enabled:
            return
        done = step + 1
        elapsed = time.perf_counter() - self.t0
        rate = images * self.world / max(elapsed, 1e-9)
        eta = elapsed / done * (self.total - done) if self.total else 0.0
        msg = (f"epoch {self.epoch + 1} [{done}/{self.total}] loss {loss:.4f} lr {lr:.3e} "
               f"{rate:.0f} img/s eta {_fmt_time(eta)} mem {memory_mb(device):.0f}MB")
        if self.bar:
            width = 24
            filled = int(width * done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {msg}\033[K")
            if done == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif force or done % self.interval == 0:
            log.info(msg)

    def close(self) -> None:
        if self.bar:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _skip(loader: Iterable, start_step: int) -> Iterable:
    """The loader from batch ``start_step`` on; asks the sampler to skip when it can, else reads and drops."""
    if start_step <= 0:
        return iter(loader)
    for obj in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if obj is not None and hasattr(obj, "set_start_step"):
            obj.set_start_step(start_step)
            return iter(loader)
    return itertools.islice(iter(loader), start_step, None)


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    loss_fn: Callable[..., torch.Tensor],
    device: torch.device,
    epoch: int = 0,
    schedule: Any = None,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    mixup: Callable | None = None,
    ema: Any = None,
    ema_model: nn.Module | None = None,
    accum_steps: int = 1,
    clip_grad: float = 0.0,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    start_step: int = 0,
    max_steps: int = 0,
    log_interval: int = 50,
    progress_bar: bool = False,
    verbose: bool = True,
    should_stop: Callable[[], bool] | None = None,
    partial: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Train for one epoch (or until ``should_stop()``), stepping the optimizer every ``accum_steps`` batches.

    Args:
        model: the model to train (possibly DDP-wrapped or compiled).
        loader: yields ``(images, labels)``.
        optimizer: the optimizer over ``model``'s parameters.
        loss_fn: called as ``loss_fn(outputs, targets, images)``.
        device: where the batches go.
        epoch: 0-based epoch index (seeds the per-step randomness, positions a per-step schedule).
        schedule: an :class:`~pitvit.train.sched.LRSchedule` or ``None``; updated per step if it says so.
        scaler: a ``GradScaler`` for fp16, or ``None``.
        amp_dtype: autocast dtype (``torch.bfloat16``/``torch.float16``) or ``None`` for fp32.
        mixup: ``mixup(images, labels) -> (images, soft_targets)`` or ``None``.
        ema: a :class:`~pitvit.train.ema.ModelEma` updated after every optimizer step, or ``None``.
        ema_model: the unwrapped model the EMA follows (default: ``model``).
        accum_steps: batches per optimizer step (gradient accumulation).
        clip_grad: maximum global gradient norm; 0 disables clipping.
        seed, rank: with ``epoch`` and the step, seed the per-step randomness.
        world_size: processes (for the global images/s).
        start_step: batches of this epoch already done (a resumed epoch skips them).
        max_steps: stop after this many batches (0: the whole loader).
        log_interval: batches between progress lines (and loss checks).
        progress_bar: draw a bar (on a terminal) instead of periodic lines.
        verbose: print progress at all (rank 0).
        should_stop: polled between optimizer steps; ``True`` ends the epoch early (``stopped`` in the result).
        partial: running sums ``{"loss_sum", "samples", "images"}`` of a resumed epoch.

    Returns:
        ``{"loss", "steps", "images", "time_s", "img_s", "lr", "stopped", "next_step", "partial"}``; the loss is
        the mean over this process's batches.

    Raises:
        NonFiniteLossError: the loss became NaN or infinite (checked every ``log_interval`` batches).
    """
    model.train()
    total = len(loader) if hasattr(loader, "__len__") else 0
    if max_steps:
        total = min(total, max_steps) if total else max_steps
    opt_steps = max(total // accum_steps, 1)
    follow = ema_model if ema_model is not None else model
    partial = dict(partial or {"loss_sum": 0.0, "batches": 0, "images": 0})
    pending: list[torch.Tensor] = []
    first_pending = start_step
    lr = optimizer.param_groups[0]["lr"]
    progress = _Progress(total, epoch, log_interval, progress_bar, world_size, verbose)
    t0 = time.perf_counter()
    images_now = 0
    step = start_step - 1
    stopped = False

    def flush(step_now: int) -> None:
        nonlocal pending, first_pending
        if not pending:
            return
        values = torch.stack(pending).tolist()
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), -1)
        if _dist_on():  # every rank must stop together, or the others would wait forever in all-reduce
            flag = torch.tensor([1.0 if bad >= 0 else 0.0], device=device)
            dist.all_reduce(flag)
            if flag.item() > 0 and bad < 0:
                raise NonFiniteLossError(epoch, step_now, float("nan"))
        if bad >= 0:
            raise NonFiniteLossError(epoch, first_pending + bad, values[bad])
        partial["loss_sum"] += sum(values)
        partial["batches"] += len(values)
        pending, first_pending = [], step_now + 1

    seed_step(seed, epoch, -1, rank)  # anything the loader draws from the global generators
    batches = _skip(loader, start_step)
    if max_steps:
        batches = itertools.islice(batches, max(max_steps - start_step, 0))
    for step, (images, labels) in enumerate(batches, start=start_step):
        seed_step(seed, epoch, step, rank)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if mixup is not None:
            images, targets = mixup(images, labels)
        else:
            targets = labels
        boundary = (step + 1) % accum_steps == 0 or step + 1 == total
        if schedule is not None and schedule.per_step and step % accum_steps == 0:
            lr = schedule.set(epoch, step // accum_steps)
        sync = contextlib.nullcontext() if boundary or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                outputs = model(images)
                loss = loss_fn(outputs, targets, images)
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        pending.append(loss.detach().float())
        if boundary:
            if clip_grad > 0:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(follow)
        images_now += images.shape[0]
        partial["images"] += images.shape[0]
        if (step + 1) % log_interval == 0 or step + 1 == total:
            flush(step)
            recent = partial["loss_sum"] / max(partial["batches"], 1)
            progress.update(step, images_now, recent, lr, device)
        elif progress.bar:
            progress.update(step, images_now, float("nan") if not partial["batches"] else
                            partial["loss_sum"] / partial["batches"], lr, device)
        if boundary and should_stop is not None and should_stop():
            stopped = step + 1 < total
            break
    flush(step)
    if progress.bar and step + 1 < total:  # a full epoch already ended its bar's line
        progress.close()
    elapsed = time.perf_counter() - t0
    return {
        "loss": partial["loss_sum"] / max(partial["batches"], 1),
        "steps": step + 1,
        "opt_steps": opt_steps,
        "images": partial["images"],
        "time_s": elapsed,
        "img_s": images_now * world_size / max(elapsed, 1e-9),
        "lr": lr,
        "stopped": stopped,
        "next_step": step + 1 if stopped else 0,
        "partial": partial,
    }


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp_dtype: torch.dtype | None = None,
             max_steps: int = 0) -> dict[str, float]:
    """Cross-entropy, top-1 and top-5 (%) over ``loader``, summed over all processes when distributed.

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
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model(images)
        if isinstance(out, (tuple, list)):
            out = (out[0] + out[1]) / 2
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(labels[:, None])
        sums += torch.stack([
            nn.functional.cross_entropy(out, labels, reduction="sum").double(),
            hit[:, 0].sum().double(), hit.any(dim=1).sum().double(),
            torch.tensor(float(labels.numel()), dtype=torch.float64, device=device)])
    if _dist_on():
        dist.all_reduce(sums)
    loss, top1, top5, n = sums.tolist()
    model.train(was_training)
    n = max(n, 1.0)
    return {"loss": loss / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "n": int(n)}
