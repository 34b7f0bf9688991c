"""Speed and size of a PiT model: parameters, GMACs, inference and training images/s, peak memory.

``compare="timm"`` measures timm's PiT of the same architecture in the same process, one after the other
with the same inputs and settings, and reports pitvit/timm ratios. Times are medians over the steps. A
training step is forward, cross-entropy, backward and an AdamW step. Peak memory is CUDA's
``max_memory_allocated`` on a GPU; on a CPU it is the growth of the process's resident set over the phase
(sampled), a rougher figure.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from torch import nn

from pitvit.models import create_model, get_pretrained_cfg
from pitvit.utils.device import amp_dtype, resolve_device
from pitvit.utils.errors import ConfigError

from .zoo import count_macs, count_params

__all__ = ["benchmark", "measure", "format_table"]


def _release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc), so that a phase's RSS growth is not hidden by the previous
    phase's freed but still mapped memory."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextmanager
def _peak_memory(device: torch.device) -> Iterator[dict[str, float]]:
    """Yields a dict that holds ``peak_mib`` once the block ends."""
    out: dict[str, float] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield out
        torch.cuda.synchronize(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        return
    import gc

    gc.collect()
    _release_freed_memory()
    base = _rss_bytes()
    if base is None:  # no /proc: the lifetime peak's growth, which misses peaks below an earlier one
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        yield out
        out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        return
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes() or 0)
            stop.wait(0.002)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield out
    finally:
        stop.set()
        t.join()
        peak[0] = max(peak[0], _rss_bytes() or 0)
        out["peak_mib"] = (peak[0] - base) / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], Any], *, steps: int, warmup: int, device: torch.device) -> float:
    """Median seconds per step, after ``warmup`` untimed steps.

    Each step is timed on its own (synchronized) and the median taken: on a shared machine a burst of
    other work slows a few steps, which a mean would spread over the result.
    """
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _logits(out: Any) -> torch.Tensor:
    # timm's distilled PiT returns (cls, dist) in training mode; ours returns their mean unless asked not to.
    return (out[0] + out[1]) / 2 if isinstance(out, (tuple, list)) else out


def measure(model: nn.Module, *, batch: int, img_size: tuple[int, int], in_chans: int = 3,
            num_classes: int = 1000, device: torch.device | str = "cpu", amp: str = "none", steps: int = 10,
            warmup: int = 3, infer: bool = True, train: bool = True) -> dict[str, float]:
    """Inference and training throughput and peak memory of one model.

    Returns:
        With ``infer``, ``infer_img_s`` and ``infer_peak_mib``; with ``train``, ``train_img_s`` and
        ``train_peak_mib``.
    """
    device = resolve_device(device)
    dtype = amp_dtype(amp, device)
    model = model.to(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, in_chans, *img_size, generator=gen).to(device)
    y = torch.randint(0, max(num_classes, 1), (batch,), generator=gen).to(device)
    autocast = lambda: torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)  # noqa: E731
    result: dict[str, float] = {}

    model.eval()

    def infer() -> None:
        with torch.inference_mode(), autocast():
            model(x)

    if infer:
        with _peak_memory(device) as mem:
            sec = _timed(infer, steps=steps, warmup=warmup, device=device)
        result.update(infer_img_s=batch / sec, infer_peak_mib=mem["peak_mib"])

    if train:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

        def train_step() -> None:
            with autocast():
                loss = nn.functional.cross_entropy(_logits(model(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        with _peak_memory(device) as mem:
            sec = _timed(train_step, steps=steps, warmup=warmup, device=device)
        result.update(train_img_s=batch / sec, train_peak_mib=mem["peak_mib"])
        del opt
        model.eval()
    return result


def benchmark(model_name: str, *, batch: int = 64, img_size: int | None = None, compare: str | None = None,
              device: str = "auto", amp: str = "none", steps: int = 10, warmup: int = 3,
              train: bool = True) -> list[dict[str, Any]]:
    """Measure a registered variant (and, with ``compare="timm"``, timm's same architecture).

    Args:
        model_name: a registered variant.
        batch: images per step.
        img_size: square input side (default: the variant's evaluation size).
        compare: ``None`` or ``"timm"``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``none``, ``bf16`` or ``fp16`` autocast.
        steps: timed steps per phase.
        warmup: untimed steps before each phase.
        train: also measure training steps.

    Returns:
        One row per model: ``impl``, ``model``, ``params``, ``gmacs`` (pitvit only), ``batch``, ``img_size``,
        ``device``, ``amp`` and the figures of :func:`measure`.
    """
    if compare not in (None, "timm"):
        raise ConfigError(f"unknown comparison {compare!r}; the only one is 'timm'")
    if batch < 1 or steps < 1 or warmup < 0:
        raise ConfigError(f"need --batch >= 1, --steps >= 1 and --warmup >= 0, got {batch}, {steps}, {warmup}")
    dev = resolve_device(device)
    amp_dtype(amp, dev)  # an unknown name, or fp16 on a CPU, fails before any model is built
    device = str(dev)
    pre = get_pretrained_cfg(model_name)
    size = img_size or pre.input_size[1]
    timm_name = pre.timm_name
    if compare == "timm" and not timm_name:
        raise ConfigError(f"{model_name} has no timm counterpart; compare one of the ImageNet variants")
    torch.manual_seed(0)
    models = {"pitvit": (model_name, create_model(model_name, img_size=size))}
    if compare == "timm":
        import timm

        models["timm"] = (timm_name, timm.create_model(timm_name, pretrained=False, img_size=size))
    pit = models["pitvit"][1]
    common = dict(batch=batch, img_size=(size, size), in_chans=pit.cfg.in_chans, num_classes=pit.num_classes,
                  device=device, amp=amp, steps=steps, warmup=warmup)
    rows = {impl: {"impl": impl, "model": name, "params": count_params(m),
                   "gmacs": count_macs(m, size) / 1e9 if impl == "pitvit" else None,
                   "batch": batch, "img_size": size, "device": device, "amp": amp}
            for impl, (name, m) in models.items()}
    # Phase by phase, the models one after the other: a machine whose load drifts affects both alike.
    for phase in ("infer", "train") if train else ("infer",):
        for impl, (_, m) in models.items():
            rows[impl].update(measure(m, **common, infer=phase == "infer", train=phase == "train"))
    return list(rows.values())


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of :func:`benchmark` rows, with pitvit/timm ratios when both are there."""
    cols = [("impl", "impl"), ("model", "model"), ("params", "params"), ("gmacs", "GMACs"), ("batch", "batch"),
            ("img_size", "px"), ("infer_img_s", "infer img/s"), ("train_img_s", "train img/s"),
            ("infer_peak_mib", "infer peak MiB"), ("train_peak_mib", "train peak MiB")]

    def cell(key: str, v: Any) -> str:
        if v is None:
            return "-"
        if key == "params":
            return f"{v:,}"
        if key == "gmacs":
            return f"{v:.3f}"
        if isinstance(v, float):
            return f"{v:,.1f}"
        return str(v)

    cols = [(k, h) for k, h in cols if any(k in r for r in rows)]
    table = [[h for _, h in cols]] + [[cell(k, r.get(k)) for k, _ in cols] for r in rows]
    if len(rows) == 2 and rows[1]["impl"] == "timm":
        ratio = ["pitvit/timm", ""]
        for k, _ in cols[2:]:
            a, b = rows[0].get(k), rows[1].get(k)
            ratio.append(f"{a / b:.2f}x" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b
                         and k not in ("batch", "img_size") else "")
        table.append(ratio)
    widths = [max(len(r[i]) for r in table) for i in range(len(cols))]
    lines = ["  ".join(v.rjust(w) if i >= 2 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
             for r in table]
    r0 = rows[0]
    head = (f"device {r0['device']}, amp {r0['amp']}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}"
                                                       if r0["device"].startswith("cuda") else ""))
    return "\n".join([head] + lines)
