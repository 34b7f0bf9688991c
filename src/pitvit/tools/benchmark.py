"""Speed and size of a PiT model: parameters, GMACs, inference and training images/s, peak memory.

``compare="timm"`` measures timm's PiT of the same architecture in the same process, one after the other
with the same inputs and settings, and reports pitvit/timm ratios. Times are medians over the steps. A
training step is forward, cross-entropy, backward and an AdamW step. Peak memory is CUDA's
``max_memory_allocated`` on a GPU; on a CPU it is the growth of the process's resident set over the phase
(sampled), a rougher figure. ``amp="auto"`` (the default) runs in the precision
:func:`pitvit.utils.precision.resolve_amp` picks for the device; ``compile=True`` times ``torch.compile``'d models
(inductor) after warm-up steps that compile them.

:func:`compare_settings` is the side-by-side measurement the benchmark scripts use: pitvit and timm with the
same weights, in several settings (precision, compiled or eager), every step timed in turn in every round, so
that load from other processes hits all of them alike and ratios between settings come from the same rounds.
"""
from __future__ import annotations

import os
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from pitvit.models import create_model, get_model_config, get_pretrained_cfg, load_weights
from pitvit.utils.device import resolve_device
from pitvit.utils.names import PRECISIONS
from pitvit.utils.precision import amp_dtype, autocast, resolve_amp
from pitvit.utils.errors import ConfigError

from .zoo import count_macs, count_params

__all__ = ["benchmark", "measure", "format_table", "infer_step", "train_step", "time_alternating", "Timings",
           "parse_setting", "compare_settings"]


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


def _time_once(step: Callable[[], Any], iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return (time.perf_counter() - start) / iters


def _logits(out: Any) -> torch.Tensor:
    # timm's distilled PiT returns (cls, dist) in training mode; ours returns their mean unless asked not to.
    return (out[0] + out[1]) / 2 if isinstance(out, (tuple, list)) else out


def infer_step(model: nn.Module, x: torch.Tensor, dtype: torch.dtype | None = None) -> Callable[[], Any]:
    """One timed unit of inference: a forward pass of ``x`` under ``inference_mode`` and autocast to ``dtype``
    (``None``: fp32). ``model`` should be in eval mode."""

    def step() -> Any:
        with torch.inference_mode(), autocast(x.device, dtype):
            return model(x)
    return step


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype | None = None,
               lr: float = 1e-6) -> Callable[[], Any]:
    """One timed unit of training: forward under autocast, cross-entropy, backward and an AdamW step (through a
    ``GradScaler`` for fp16). ``model`` should be in training mode; the optimizer is the step's own."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler(x.device.type, enabled=dtype == torch.float16)

    def step() -> torch.Tensor:
        with autocast(x.device, dtype):
            loss = nn.functional.cross_entropy(_logits(model(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss
    return step


def measure(model: nn.Module, *, batch: int, img_size: tuple[int, int], in_chans: int = 3,
            num_classes: int = 1000, device: torch.device | str = "cpu", amp: str = "fp32", steps: int = 10,
            warmup: int = 3, infer: bool = True, train: bool = True) -> dict[str, float]:
    """Inference and training throughput and peak memory of one model (compiled or not).

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
    result: dict[str, float] = {}

    def median_s(step: Callable[[], Any]) -> float:
        # each step timed on its own and the median taken: on a shared machine a burst of other work slows a
        # few steps, which a mean would spread over the result
        times = time_alternating({"step": step}, device=device, rounds=steps, warmup=warmup).times["step"]
        return statistics.median(times)

    model.eval()
    if infer:
        with _peak_memory(device) as mem:
            sec = median_s(infer_step(model, x, dtype))
        result.update(infer_img_s=batch / sec, infer_peak_mib=mem["peak_mib"])

    if train:
        model.train()
        with _peak_memory(device) as mem:
            sec = median_s(train_step(model, x, y, dtype))
        result.update(train_img_s=batch / sec, train_peak_mib=mem["peak_mib"])
        model.eval()
    return result


def _side(model_name: str, img_size: int | None) -> int:
    """The input side to measure: ``img_size``, or the variant's evaluation size when ``None`` (never for 0).

    Raises:
        ConfigError: a side smaller than the variant's patch (0 was once measured at the default size).
    """
    if img_size is None:
        return int(get_pretrained_cfg(model_name).input_size[-1])
    patch = get_model_config(model_name).patch_size
    if img_size < patch:
        raise ConfigError(f"--img-size {img_size} is smaller than {model_name}'s patch ({patch} px); give at "
                          f"least {patch}, or leave it out for the variant's size")
    return int(img_size)


def benchmark(model_name: str, *, batch: int = 64, img_size: int | None = None, compare: str | None = None,
              device: str = "auto", amp: str = "auto", compile: bool = False, steps: int = 10, warmup: int = 3,
              train: bool = True) -> list[dict[str, Any]]:
    """Measure a registered variant (and, with ``compare="timm"``, timm's same architecture).

    Args:
        model_name: a registered variant.
        batch: images per step.
        img_size: square input side (default: the variant's evaluation size).
        compare: ``None`` or ``"timm"``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: ``auto`` (bf16 where the device computes it natively, else fp32), ``fp32``, ``bf16`` or ``fp16``.
        compile: time ``torch.compile``'d models; at least two warm-up steps per phase then run (the first
            compiles, and the switch between inference and training compiles again).
        steps: timed steps per phase.
        warmup: untimed steps before each phase.
        train: also measure training steps.

    Returns:
        One row per model: ``impl``, ``model``, ``params``, ``gmacs`` (pitvit only), ``batch``, ``img_size``,
        ``device``, ``amp`` (the precision that ran: ``auto`` resolved), ``compile`` and the figures of
        :func:`measure`.
    """
    if compare not in (None, "timm"):
        raise ConfigError(f"unknown comparison {compare!r}; the only one is 'timm'")
    if batch < 1 or steps < 1 or warmup < 0:
        raise ConfigError(f"need --batch >= 1, --steps >= 1 and --warmup >= 0, got {batch}, {steps}, {warmup}")
    size = _side(model_name, img_size)
    dev = resolve_device(device)
    amp = resolve_amp(amp, dev)  # an unknown name, or fp16 on a CPU, fails before any model is built
    if compile:
        warmup = max(warmup, 2)
    device = str(dev)
    pre = get_pretrained_cfg(model_name)
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
                   "batch": batch, "img_size": size, "device": device, "amp": amp, "compile": compile}
            for impl, (name, m) in models.items()}
    runs = {impl: torch.compile(m) if compile else m for impl, (_, m) in models.items()}
    # Phase by phase, the models one after the other: a machine whose load drifts affects both alike.
    for phase in ("infer", "train") if train else ("infer",):
        for impl, m in runs.items():
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
    head = (f"device {r0['device']}, amp {r0['amp']}{', compiled' if r0.get('compile') else ''}, "
            f"torch {torch.__version__}, "
            f"{torch.get_num_threads()} CPU threads" + (f", {torch.cuda.get_device_name()}"
                                                       if r0["device"].startswith("cuda") else ""))
    return "\n".join([head] + lines)


# ---------------------------------------------------------------------------- side by side, in turn
@dataclass
class Timings:
    """What :func:`time_alternating` measured: seconds per step of each key, one value per round, and the
    seconds its warm-up steps took (compiling, for a compiled model)."""

    times: dict[str, list[float]]
    warmup_s: dict[str, float]
    rounds: int


def time_alternating(steps: dict[str, Callable[[], Any]], *, device: torch.device | str, rounds: int = 7,
                     iters: int = 1, warmup: int | dict[str, int] = 1, budget_s: float = 0.0, min_rounds: int = 3,
                     max_step_s: float = 0.0, settle_s: float = 0.0) -> Timings:
    """Time several steps in turn: after their warm-up calls, every round times each step once (``iters``
    calls, synchronized), in an order that rotates from round to round, so that load from other processes and
    drifting clocks hit all of them alike.

    Args:
        steps: name -> a callable doing one step.
        device: where the steps run (synchronized around each timing on CUDA).
        rounds: most rounds.
        iters: calls per timing.
        warmup: untimed calls of each step first, or a count per step (a compiled step compiles in its first).
        budget_s: when > 0, the rounds are cut to fit these seconds (at the pace of the first), but never
            below ``min_rounds``.
        max_step_s: when > 0, a step whose last warm-up call (without warm-up: its first round) took longer is
            timed no further; its times hold that one value.
        settle_s: for steps that run on different thread pools: seconds of idling, then one untimed call of the
            step, before each timing. ONNX Runtime's threads (and OpenMP's) spin for a while after a call and
            would share the cores with the step timed next (on one 2-core machine, eager PyTorch at batch 1 took 27
            ms right after ONNX Runtime, 16 ms alone); the untimed call wakes the step's own threads and brings its weights
            back into the caches, so each timing is of calls in a loop, as an application makes them.
    """
    device = resolve_device(device)
    names = list(steps)
    warm: dict[str, float] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        count = warmup if isinstance(warmup, int) else warmup.get(name, 1)
        start = time.perf_counter()
        for i in range(count):
            last = _time_once(steps[name], 1, device)
            if i == count - 1 and 0 < max_step_s < last:
                times[name].append(last)
        warm[name] = time.perf_counter() - start
    active = [n for n in names if not times[n]]
    r, total = 0, rounds
    while r < total and active:
        start = time.perf_counter()
        shift = r % len(active)
        for name in active[shift:] + active[:shift]:
            if settle_s > 0:
                time.sleep(settle_s)
                _time_once(steps[name], 1, device)
            times[name].append(_time_once(steps[name], iters, device))
        if r == 0:
            if max_step_s > 0:
                active = [n for n in active if times[n][0] <= max_step_s]
            if budget_s > 0:
                pace = max(time.perf_counter() - start, 1e-9)
                total = max(min_rounds, min(rounds, int(budget_s / pace)))
        r += 1
    return Timings(times, warm, r)


def parse_setting(name: str) -> tuple[str, bool]:
    """``fp32``, ``bf16``, ``fp16``, optionally with ``+compile``, as (precision name, compiled).

    Raises:
        ConfigError: any other name.
    """
    amp, plus, rest = name.partition("+")
    if amp not in PRECISIONS or (plus and rest != "compile"):
        raise ConfigError(f"unknown setting {name!r}; a precision ({', '.join(PRECISIONS)}), optionally "
                          f"followed by +compile")
    return amp, bool(plus)


def _timm_pair(model_name: str, size: int, device: torch.device) -> dict[str, nn.Module]:
    """pitvit's variant and timm's same architecture, with the same (timm-initialized) weights."""
    import timm

    timm_name = get_pretrained_cfg(model_name).timm_name
    if not timm_name:
        raise ConfigError(f"{model_name} has no timm counterpart; compare one of the ImageNet variants")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = timm.create_model(timm_name, pretrained=False, img_size=size)
    ours = create_model(model_name, img_size=size)
    load_weights(ours, ref.state_dict())  # timm's layout is recognized and converted
    return {"pitvit": ours.to(device), "timm": ref.to(device)}


def compare_settings(model_name: str, *, mode: str = "infer", settings: Sequence[str] = ("fp32",),
                     batch: int = 32, img_size: int | None = None, device: torch.device | str = "cpu",
                     rounds: int = 7, iters: int = 1, warmup: int = 1, budget_s: float = 0.0,
                     max_step_s: float = 0.0) -> dict[str, Any]:
    """pitvit against timm's PiT with the same weights and batch, in several settings, all timed in turn.

    Every (setting, implementation) step is timed once per round (:func:`time_alternating`), so the ratios
    between implementations and between settings come from the same rounds. A compiled setting compiles in its
    warm-up (at least two calls).

    Args:
        model_name: a registered variant with a timm counterpart.
        mode: ``infer`` (forward under ``inference_mode``) or ``train`` (forward, cross-entropy, backward,
            AdamW step).
        settings: names for :func:`parse_setting`; the first is the base the speed-ups are relative to.
        batch: images per step.
        img_size: square input side (default: the variant's).
        device: where to run.
        rounds, iters, budget_s, max_step_s: as for :func:`time_alternating`.
        warmup: untimed calls of each step first (at least 2 for a compiled one).

    Returns:
        ``model``, ``mode``, ``batch``, ``img_size``, ``device``, ``rounds`` and per setting (``settings``):
        ``pitvit_ms`` and ``timm_ms`` (medians), ``pitvit_img_s``, ``timm_img_s``, ``timm_over_pitvit`` (ratio
        of the medians; above 1 pitvit is faster), ``best_ratio`` (of the fastest rounds), ``speedup`` (median
        over rounds of the base setting's time over this one's, per implementation), ``warmup_s``; a setting
        slower than ``max_step_s`` is in ``skipped`` with its first time instead.
    """
    if mode not in ("infer", "train"):
        raise ConfigError(f"unknown mode {mode!r}; choose infer or train")
    parsed = {s: parse_setting(s) for s in settings}
    dev = resolve_device(device)
    size = _side(model_name, img_size)
    models = _timm_pair(model_name, size, dev)
    gen = torch.Generator().manual_seed(1)
    in_chans = models["pitvit"].cfg.in_chans
    x = torch.randn(batch, in_chans, size, size, generator=gen).to(dev)
    y = torch.randint(0, models["pitvit"].num_classes, (batch,), generator=gen).to(dev)
    steps, warm = {}, {}
    for name, (amp, compiled) in parsed.items():
        dtype = amp_dtype(amp, dev)
        for impl, m in models.items():
            m.train(mode == "train")
            run = torch.compile(m) if compiled else m
            key = f"{name}/{impl}"
            steps[key] = infer_step(run, x, dtype) if mode == "infer" else train_step(run, x, y, dtype)
            warm[key] = max(warmup, 2) if compiled else warmup  # the first call compiles
    t = time_alternating(steps, device=dev, rounds=rounds, iters=iters, warmup=warm, budget_s=budget_s,
                         max_step_s=max_step_s)
    out: dict[str, Any] = {"model": model_name, "timm_model": get_pretrained_cfg(model_name).timm_name,
                           "mode": mode, "batch": batch, "img_size": size, "device": str(dev), "rounds": t.rounds,
                           "settings": {}, "skipped": {}}
    base = settings[0]
    for name in settings:
        ours, ref = t.times[f"{name}/pitvit"], t.times[f"{name}/timm"]
        if len(ours) < t.rounds or len(ref) < t.rounds or not t.rounds:
            out["skipped"][name] = (f"a step took {ours[0]:.1f} s (pitvit) and {ref[0]:.1f} s (timm), "
                                    f"> {max_step_s:g} s")
            continue
        row = {"pitvit_ms": 1e3 * statistics.median(ours), "timm_ms": 1e3 * statistics.median(ref)}
        row.update(pitvit_img_s=batch * 1e3 / row["pitvit_ms"], timm_img_s=batch * 1e3 / row["timm_ms"],
                   timm_over_pitvit=row["timm_ms"] / row["pitvit_ms"], best_ratio=min(ref) / min(ours),
                   warmup_s={impl: t.warmup_s[f"{name}/{impl}"] for impl in models})
        if base not in out["skipped"]:
            row["speedup"] = {impl: statistics.median(b / s for b, s in zip(t.times[f"{base}/{impl}"],
                                                                            t.times[f"{name}/{impl}"]))
                              for impl in models}
        out["settings"][name] = row
    return out
