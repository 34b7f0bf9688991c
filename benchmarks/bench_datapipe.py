"""Training pit_ti fed by the CPU pipeline, by the GPU pipeline, and from memory (the model alone), in one run.

Each row trains the same model with the trainer's own step (``pitvit.train.engine.TrainStep``: AdamW as the
recipe builds it, bf16 autocast on CUDA, the recipe's Mixup/CutMix and soft-target loss, a 1000-class head) for a
number of steps after a warm-up and reports images/s; the ``pipeline only`` rows iterate the loaders without a
model. The data is a folder of baseline JPEGs of ImageNet-like sizes (about 500x375, quality 90) made from the 20
ImageNet photos the test suite keeps in ``tests/.cache`` (``--photos``; run the tests once to fetch them), else
from synthetic images, so decoding costs what ImageNet's does. The target for the GPU pipeline is at least 0.8 x
the model-only rate. ``benchmarks/gpu_check.py`` runs the same measurement among its sections.

    python benchmarks/bench_datapipe.py                          # CPU: a small smoke configuration
    python benchmarks/bench_datapipe.py --device cuda --batch 256 --workers 16 --steps 50 --compile
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import pitvit
from pitvit.data import build_dataset, build_loader, build_mixup, build_transform
from pitvit.data.gpu import GpuStage
from pitvit.models import resolve_preprocessing
from pitvit.train.distill import ClassificationLoss
from pitvit.train.engine import TrainStep
from pitvit.train.optim import build_optimizer
from pitvit.utils.io import write_text

PHOTOS = Path(__file__).resolve().parents[1] / "tests" / ".cache" / "foolbox-3.3.4"  # see tests/conftest.py
# (width, height) of ImageNet-like files, with weights (most of ImageNet is 500 x 375 or 375 x 500)
SHAPES = [((500, 375), 30), ((375, 500), 12), ((500, 333), 14), ((333, 500), 6), ((500, 400), 6), ((400, 500), 3),
          ((500, 500), 4), ((450, 300), 4), ((300, 400), 3), ((500, 281), 4), ((640, 480), 3), ((400, 300), 5)]


def synthetic(seed: int, size: int = 512) -> Image.Image:
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    f = rng.uniform(10, 60, 6)
    img = np.stack([128 + 100 * np.sin(xx / f[0] + yy / f[1]), 128 + 90 * np.cos(yy / f[2] - xx / f[3]),
                    120 + 80 * np.sin((xx + yy) / f[4])], -1) + rng.normal(0, 8, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def make_folder(root: Path, n: int, photos: Path | None = None, classes: int = 10, seed: int = 0, *,
                split: str = "train", shapes=SHAPES, source_size: int = 512) -> Path:
    """``root/SPLIT/cK/*.jpg``: ``n`` baseline JPEGs cut from the photos (or from synthetic images of
    ``source_size`` px) at the given ``(width, height)`` shapes, drawn with their weights."""
    files = sorted(photos.glob("*.jpg")) if photos is not None else []
    sources = [Image.open(f).convert("RGB") for f in files] or [synthetic(k, source_size) for k in range(8)]
    rng = random.Random(seed)
    sizes, weights = zip(*shapes)
    for k in range(n):
        src = sources[k % len(sources)]
        w, h = rng.choices(sizes, weights)[0]
        ar = w / h
        cw, ch = (src.width, src.width / ar) if ar >= 1 else (src.height * ar, src.height)
        s = math.sqrt(rng.uniform(0.55, 1.0))
        cw, ch = int(cw * s), int(ch * s)
        x0, y0 = rng.randint(0, src.width - cw), rng.randint(0, src.height - ch)
        img = src.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        d = root / split / f"c{k % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img.save(d / f"{k:05d}.jpg", quality=90, progressive=False, subsampling="4:2:0")
    return root


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model_name: str, device: torch.device, *, compile: bool, num_classes: int = 1000) -> TrainStep:
    """The trainer's step for a fresh model: AdamW over the recipe's parameter groups, the recipe's
    Mixup/CutMix and soft-target loss, bf16 autocast on CUDA (fp32 on the CPU)."""
    torch.manual_seed(0)
    model = pitvit.create_model(model_name, num_classes=num_classes).to(device).train()
    opt = build_optimizer(model, "adamw", lr=1e-4, weight_decay=0.05)
    return TrainStep(torch.compile(model) if compile else model, opt, ClassificationLoss(0.1), device,
                     amp_dtype=torch.bfloat16 if device.type == "cuda" else None,
                     mixup=build_mixup(num_classes=num_classes))


def timed(batches, step, device, warmup: int, steps: int) -> tuple[float, int]:
    """Images/s over ``steps`` batches after ``warmup``; ``step`` None iterates the data only."""
    it = iter(batches)
    n = 0
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        if step is not None:
            step(x, y)
        else:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if i >= warmup:
            n += x.shape[0]
    sync(device)
    return n / (time.perf_counter() - t0), n


def endless(loader):
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def preprocessing(model: str) -> dict:
    """The transforms' arguments for a variant (bicubic, its input size, crop_pct, mean and std)."""
    pre = resolve_preprocessing(model, interpolation="bicubic")
    return {**pre, "input_size": pre["input_size"][-1]}


ROWS = [("model only (batch in device memory)", "model_only"),
        ("CPU pipeline (timm transforms in workers) + model", "cpu_pipeline"),
        ("GPU pipeline + model", "gpu_pipeline"),
        ("CPU pipeline only", "cpu_pipeline_only"),
        ("GPU pipeline only", "gpu_pipeline_only")]


def measure_pipelines(root: Path, *, device: torch.device, model: str = "pit_ti", batch: int, steps: int,
                      warmup: int, workers: int, compile: bool, deadline: float = math.inf,
                      report=None) -> dict:
    """Images/s of each of :data:`ROWS` on the JPEGs under ``root/train``, one row after the other.

    Args:
        deadline: a ``time.monotonic()`` value; rows not yet started by then are left out (``skipped``).
        report: called with ``(label, key, rate, images)`` after each row.

    Returns:
        ``{key: images/s}`` for the rows that ran, ``{key}_fallback`` (the GPU stage's CPU decodes by reason),
        ``gpu_vs_model_only`` and ``cpu_vs_model_only`` when both rates are there, and ``skipped``.
    """
    pre = pitvit.get_pretrained_cfg(model)
    common = preprocessing(model)
    step = make_step(model, device, compile=compile)

    def cpu_loader():
        ds = build_dataset(root, "train", transform=build_transform(True, **common, aug="official"))
        return build_loader(ds, batch_size=batch, train=True, seed=0, num_workers=workers)

    def gpu_loader():
        return build_loader(build_dataset(root, "train"), batch_size=batch, train=True, seed=0, num_workers=workers,
                            stage=GpuStage(device, aug="official", **common))

    x0 = torch.randn(batch, pre.input_size[0], *pre.input_size[1:], device=device)
    y0 = torch.randint(0, 10, (batch,), device=device)

    def memory():
        while True:
            yield x0, y0

    makers = {"model_only": (memory, step), "cpu_pipeline": (cpu_loader, step), "gpu_pipeline": (gpu_loader, step),
              "cpu_pipeline_only": (cpu_loader, None), "gpu_pipeline_only": (gpu_loader, None)}
    res: dict = {"skipped": []}
    for label, key in ROWS:
        if time.monotonic() > deadline:
            res["skipped"].append(key)
            continue
        make, st = makers[key]
        src = make()
        rate, n = timed(src if key == "model_only" else endless(src), st, device, warmup, steps)
        res[key] = rate
        if key.startswith("gpu"):
            res[key + "_fallback"] = dict(src.fallback)
        if report is not None:
            report(label, key, rate, n)
        del src
    for kind in ("gpu", "cpu"):
        if f"{kind}_pipeline" in res and "model_only" in res:
            res[f"{kind}_vs_model_only"] = res[f"{kind}_pipeline"] / res["model_only"]
    return res


def fidelity(root: Path, batch: int, device: torch.device, common: dict) -> dict[str, float]:
    """Mean and max |difference| in uint8 levels between one batch of each pipeline for the same seed (erasing
    in ``const`` mode, so that only decoding and arithmetic can differ; on CUDA nvjpeg decodes)."""
    out = {}
    scale = torch.tensor(common["std"]).view(1, 3, 1, 1) * 255
    for train in (True, False):
        aug = {"preset": "official", "re_mode": "const"} if train else None
        ds = build_dataset(root, "train", transform=build_transform(train, **common, aug=aug))
        cpu = next(iter(build_loader(ds, batch_size=batch, train=train, seed=0, num_workers=0)))[0]
        gpu = next(iter(build_loader(build_dataset(root, "train"), batch_size=batch, train=train, seed=0,
                                     num_workers=0, stage=GpuStage(device, aug=aug, **common))))[0].cpu()
        d = ((cpu - gpu) * scale).abs()
        key = "train" if train else "eval"
        out[f"{key}_mean"], out[f"{key}_max"] = d.mean().item(), d.max().item()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", default="pit_ti")
    p.add_argument("--batch", type=int, default=None, help="per step (default 256 on CUDA, 8 on the CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 on CUDA, 3 on the CPU)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="loader processes (default: CPU count, 1 on CPU)")
    p.add_argument("--images", type=int, default=None, help="JPEGs to generate (default 2048 / 64)")
    p.add_argument("--data", default="", help="an existing folder with train/<class>/*.jpg (skip generating)")
    p.add_argument("--photos", default=str(PHOTOS), help="JPEGs to cut the generated files from (default: the "
                   "test suite's 20 ImageNet photos; synthetic images when absent)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--threads", type=int, default=0, help="torch threads in this process (0: leave as is)")
    p.add_argument("--out", default=os.environ.get("OUT", ""), help="folder for bench_datapipe.json")
    a = p.parse_args()
    device = torch.device(a.device)
    cuda = device.type == "cuda"
    batch = a.batch or (256 if cuda else 8)
    steps = a.steps or (30 if cuda else 3)
    warmup = a.warmup if a.warmup is not None else (5 if cuda else 1)
    workers = a.workers if a.workers is not None else (os.cpu_count() if cuda else 1)
    n_images = a.images or (2048 if cuda else 64)
    if a.threads:
        torch.set_num_threads(a.threads)

    tmp = None
    if a.data:
        root = Path(a.data)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="pitvit-bench-")
        t = time.perf_counter()
        root = make_folder(Path(tmp.name), n_images, Path(a.photos))
        print(f"made {n_images} JPEGs in {time.perf_counter() - t:.1f}s under {root}", flush=True)

    res: dict = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or 'cpu'})",
                 "torch": torch.__version__, "batch": batch, "steps": steps, "workers": workers,
                 "compile": a.compile, "model": a.model, "cpus": os.cpu_count(), "threads": torch.get_num_threads()}
    res.update(measure_pipelines(root, device=device, model=a.model, batch=batch, steps=steps, warmup=warmup,
                                 workers=workers, compile=a.compile,
                                 report=lambda label, key, rate, n: print(f"{label:52s} {rate:10.1f} img/s  "
                                                                          f"({n} images)", flush=True)))
    res["fidelity_levels"] = fidelity(root, batch, device, preprocessing(a.model))

    print(f"\n== bench_datapipe: {a.model} on {res['device']}, batch {batch}, {workers} workers, {steps} steps"
          f"{', compiled' if a.compile else ''} ==")
    print(f"| {'run':50s} | {'img/s':>10s} | {'x model only':>12s} |")
    print(f"|{'-' * 52}|{'-' * 11}:|{'-' * 13}:|")
    for label, key in ROWS:
        print(f"| {label:50s} | {res[key]:10.1f} | {res[key] / res['model_only']:12.2f} |")
    f = res["fidelity_levels"]
    print(f"GPU pipeline vs CPU pipeline, same seed, one batch (erasing in const mode), uint8 levels: "
          f"train mean {f['train_mean']:.4f} max {f['train_max']:.0f}, eval mean {f['eval_mean']:.4f} "
          f"max {f['eval_max']:.0f}")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        write_text(Path(a.out) / "bench_datapipe.json", json.dumps(res, indent=1))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
