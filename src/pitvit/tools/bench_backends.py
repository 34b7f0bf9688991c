"""One table of inference engines: eager PyTorch (the base), ``torch.compile``, ONNX Runtime and OpenVINO, in fp32
and, where the CPU computes them natively or the backend offers them, bf16 and int8 (OpenVINO: NNCF post-training
quantization; ONNX Runtime: dynamic quantization), at batch 1 and at a chosen batch, all timed in turn in the same
rounds (:func:`pitvit.tools.benchmark.time_alternating`); a precision given restricts the table to it (and the
base). Each timing follows :data:`SETTLE_S` of idling and one untimed call, so that the engine timed before no
longer spins on the cores, and times calls in a loop (:data:`ITERS_AT_BATCH_1` at batch 1).

Each row gives the median time per batch, images/s, the ratio to eager PyTorch fp32 at the same batch, the largest
logit difference to eager PyTorch fp32 on the same inputs, the top-1 agreement with it, and images/s as a share
of the machine's fp32 peak (:func:`pitvit.utils.cpus.fp32_peak`; the model's FLOPs are twice its MACs) where that
can be read. OpenVINO int8 calibrates on the images given (``calibration``), else on random inputs: its speed is
then real and its agreement says little.
"""
from __future__ import annotations

import logging
import os
import statistics
from typing import Any, Sequence

import numpy as np
import torch

from pitvit.models import create_model
from pitvit.utils.cpus import fp32_peak, usable_cpus
from pitvit.utils.device import cpu_bf16_support, cpu_flags
from pitvit.utils.errors import ConfigError
from pitvit.utils.names import BACKENDS

from .backends import load_predictor, resolve_precision
from .benchmark import time_alternating
from .zoo import count_macs

__all__ = ["backend_settings", "compare_backends", "format_backends"]

log = logging.getLogger(__name__)

SETTLE_S = 0.5  # idle before each timing: the engine timed before must not still spin on the cores
ITERS_AT_BATCH_1 = 5  # calls per timing at batch 1 (a call takes milliseconds)


def backend_settings(backend: str, precision: str | None = None) -> list[tuple[str, str, bool]]:
    """``(backend, precision, compiled)`` to time for ``--backend`` (``all`` or one of :data:`BACKENDS`), eager
    PyTorch fp32 first; bf16 only where the CPU computes it natively.

    Args:
        backend: ``all`` or one backend.
        precision: only this precision (as :func:`pitvit.tools.backends.resolve_precision` resolves it for each
            backend; ``auto`` may differ between them), besides the base; default: every precision.

    Raises:
        ConfigError: an unknown backend, or a precision that ``backend`` (with ``all``: every backend) refuses.
    """
    if backend != "all" and backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose all or one of {', '.join(BACKENDS)}")
    backends = BACKENDS if backend == "all" else (backend,)
    bf16 = cpu_bf16_support() is not None
    table = [("torch", "fp32", False), ("torch", "fp32", True), ("torch", "bf16", False),
             ("onnxruntime", "fp32", False), ("onnxruntime", "int8", False), ("openvino", "fp32", False),
             ("openvino", "bf16", False), ("openvino", "int8", False)]
    keep = [s for s in table if (bf16 or s[1] != "bf16") and s[0] in backends]
    if precision is not None:
        wanted: dict[str, str] = {}
        refusals: list[ConfigError] = []
        for b in backends:
            try:
                wanted[b] = resolve_precision(precision, b)
            except ConfigError as e:  # with all: the backends that run it, else the first refusal
                refusals.append(e)
        keep = [s for s in keep if wanted.get(s[0]) == s[1]]
        if not keep:
            raise refusals[0] if refusals else ConfigError(f"--precision {precision}: no engine of --backend "
                                                           f"{backend} runs it")
    return [("torch", "fp32", False)] + [s for s in keep if s != ("torch", "fp32", False)]


def _label(backend: str, precision: str, compiled: bool) -> str:
    return f"{backend}{' compile' if compiled else ''} {precision}"


def compare_backends(model_name: str, *, backend: str = "all", precision: str | None = None, batch: int = 32,
                     img_size: int | None = None,
                     threads: int | None = None, rounds: int = 7, budget_s: float = 60.0,
                     cache_dir: str | os.PathLike | None = None, calibration: Any = None,
                     settings: Sequence[tuple[str, str, bool]] | None = None) -> dict[str, Any]:
    """Time the engines of :func:`backend_settings` on one model (random weights, seed 0) at batch 1 and ``batch``.

    Args:
        model_name: a registered variant.
        backend: ``all``, or one backend (then timed against eager PyTorch fp32).
        precision: time only this precision (and the base), as for :func:`backend_settings`; default: every one.
        batch: the larger batch (batch 1 is always timed too).
        img_size: square input side (default: the variant's).
        threads: threads of every engine (default: the cores this process may use).
        rounds, budget_s: as for :func:`pitvit.tools.benchmark.time_alternating`, per batch size.
        cache_dir: where converted models are cached.
        calibration: int8's calibration images (default: random inputs).
        settings: ``(backend, precision, compiled)`` to time instead of ``backend`` and ``precision``'s (eager fp32
            must be first).

    Returns:
        ``model``, ``img_size``, ``threads``, ``peak`` (how the fp32 peak was found, or ``None``), ``gflops`` per
        image, and ``rows``: per setting and batch, ``setting``, ``batch``, ``ms``, ``img_s``, ``vs_eager``,
        ``max_diff``, ``top1_agree``, ``peak_share``, ``setup_s``.
    """
    if batch < 1 or rounds < 1:
        raise ConfigError(f"need --batch >= 1 and --steps >= 1, got {batch}, {rounds}")
    settings = list(settings or backend_settings(backend, precision))
    threads = threads or usable_cpus()
    torch.manual_seed(0)
    model = create_model(model_name, **({"img_size": img_size} if img_size else {})).eval()
    c, h, w = model.pretrained_cfg.input_size if not img_size else (model.cfg.in_chans, img_size, img_size)
    if img_size:
        import dataclasses

        model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=(c, h, w))
    if calibration is None and any(p == "int8" for _, p, _ in settings):
        calibration = np.random.RandomState(2).randn(64, c, h, w).astype(np.float32)
        log.info("int8 calibrates (OpenVINO) and measures its agreement on random inputs: its speed is real, its "
                 "agreement with fp32 means little")
    predictors = {}
    for b, p, compiled in settings:
        log.info("preparing %s", _label(b, p, compiled))
        predictors[(b, p, compiled)] = load_predictor(model, backend=b, precision=p, threads=threads,
                                                      compile=compiled, cache_dir=cache_dir,
                                                      calibration=calibration)
    gflops = 2 * count_macs(model, h) / 1e9
    peak = fp32_peak(threads, cpu_flags())
    gen = torch.Generator().manual_seed(1)
    rows = []
    for n in dict.fromkeys((1, batch)):
        x = torch.randn(n, c, h, w, generator=gen)
        ref = predictors[settings[0]](x)
        steps = {s: (lambda pr=pr: pr(x)) for s, pr in predictors.items()}
        warm = {s: 3 if s[2] else 2 for s in steps}  # a compiled model compiles in its first call
        t = time_alternating(steps, device="cpu", rounds=rounds, warmup=warm, budget_s=budget_s,
                             settle_s=SETTLE_S, iters=ITERS_AT_BATCH_1 if n == 1 else 1)
        base = statistics.median(t.times[settings[0]])
        for s, pr in predictors.items():
            sec = statistics.median(t.times[s])
            out = pr(x)
            rows.append({"setting": _label(*s), "backend": s[0], "precision": pr.precision, "compiled": s[2],
                         "batch": n, "ms": 1e3 * sec, "img_s": n / sec, "vs_eager": base / sec,
                         "max_diff": (out - ref).abs().max().item(),
                         "top1_agree": (out.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                         "peak_share": (n / sec) * gflops * 1e9 / peak.flops if peak else None,
                         "setup_s": pr.setup_s, "info": pr.info})
    return {"model": model_name, "img_size": h, "threads": threads, "gflops": gflops,
            "peak": peak.how if peak else None, "peak_gflops": peak.flops / 1e9 if peak else None,
            "torch": torch.__version__, "rows": rows}


def format_backends(result: dict[str, Any]) -> str:
    """:func:`compare_backends` as a text table, with its header (model, threads, how the peak was found)."""
    head = [f"{result['model']} at {result['img_size']} px, {result['gflops']:.2f} GFLOP/image, "
            f"{result['threads']} threads, torch {result['torch']}"]
    if result["peak"]:
        head.append(f"fp32 peak {result['peak_gflops']:.0f} GFLOP/s: {result['peak']}")
    cols = ["engine", "batch", "ms/batch", "img/s", "vs eager", "max |diff|", "top-1 same", "% fp32 peak"]
    table = [cols]
    for r in result["rows"]:
        table.append([r["setting"], str(r["batch"]), f"{r['ms']:.1f}", f"{r['img_s']:.1f}", f"{r['vs_eager']:.2f}x",
                      f"{r['max_diff']:.2g}", f"{100 * r['top1_agree']:.0f}%",
                      f"{100 * r['peak_share']:.0f}%" if r["peak_share"] is not None else "-"])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(v.ljust(wd) if i == 0 else v.rjust(wd) for i, (v, wd) in enumerate(zip(row, widths)))
             for row in table]
    return "\n".join(head + lines)
