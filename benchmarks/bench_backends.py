"""Inference engines against eager PyTorch, in one run: the figures of README's Speed section (inference backends).

1. The engine table (``pitvit benchmark --backend all``): eager PyTorch fp32 (the base), ``torch.compile``, ONNX
   Runtime and OpenVINO in fp32, bf16 (where the CPU computes it natively) and int8, at batch 1 and ``--batch``,
   timed in turn in the same rounds, with the largest logit difference to eager fp32 on the same inputs.
2. int8 on a trained model (``--int8-weights``, e.g. the demo's ``best.pt``): top-1 on ``--int8-split`` of its
   own dataset in fp32 (eager PyTorch) and in OpenVINO int8 (NNCF, calibrated on the checkpoint's training
   data), with the agreement NNCF's model has with fp32 on images held out of calibration.
3. ``pitvit predict`` end to end over a folder of ``--images`` JPEGs (decoding included), eager PyTorch against
   OpenVINO fp32, each run twice in alternation after a first run that fills the conversion cache; the
   top-5 of every image must be the same.

    python benchmarks/bench_backends.py --model pit_ti --batch 32 --int8-weights runs/demo/best.pt
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pitvit.tools.bench_backends import backend_settings, compare_backends, format_backends
from pitvit.tools.evaluate import evaluate_model
from pitvit.tools.predict import predict
from pitvit.utils.cpus import usable_cpus


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_images(folder: Path, n: int, size: tuple[int, int] = (500, 375)) -> None:
    """``n`` photo-sized JPEGs of smooth random colour fields (the decoding work of a photo, not its content)."""
    rng = np.random.RandomState(0)
    for i in range(n):
        small = rng.randint(0, 255, (12, 16, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize(size, Image.BICUBIC)
        img.save(folder / f"img_{i:04d}.jpg", quality=90)


def predict_end_to_end(model: str, folder: Path, threads: int, cache: str, repeats: int = 2) -> dict:
    times: dict[str, list[float]] = {"torch": [], "openvino": []}
    tops: dict[str, list] = {}
    for backend in times:  # fills the cache (OpenVINO's conversion) and warms the file system
        predict(model, None, [folder], backend=backend, amp="fp32", threads=threads, cache_dir=cache)
    for _ in range(repeats):
        for backend in times:
            start = time.perf_counter()
            preds, _ = predict(model, None, [folder], backend=backend, amp="fp32", threads=threads, cache_dir=cache)
            times[backend].append(time.perf_counter() - start)
            tops[backend] = [[i for i, _, _ in p.top] for p in preds]
    best = {b: min(t) for b, t in times.items()}
    return {"images": len(tops["torch"]), "torch_s": best["torch"], "openvino_s": best["openvino"],
            "speedup": best["torch"] / best["openvino"], "same_top5": tops["torch"] == tops["openvino"]}


def int8_on_trained(weights: str, split: str, threads: int, cache: str) -> dict:
    fp32 = evaluate_model(None, weights, None, split=split, kind="fashion_mnist", batch_size=256, workers=0,
                          device="cpu", amp="fp32")
    int8 = evaluate_model(None, weights, None, split=split, kind="fashion_mnist", batch_size=256, workers=0,
                          device="cpu", amp="int8", backend="openvino", threads=threads, cache_dir=cache)
    return {"n": fp32["n"], "fp32_top1": fp32["top1"], "int8_top1": int8["top1"],
            "delta": int8["top1"] - fp32["top1"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pit_ti")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="0: the cores this process may use")
    p.add_argument("--images", type=int, default=300, help="images of the predict run (0: skip it)")
    p.add_argument("--int8-weights", default=None, help="a trained Fashion-MNIST checkpoint (the demo's best.pt)")
    p.add_argument("--int8-split", default="test")
    p.add_argument("--cache-dir", default=None, help="conversion cache (default: a temporary folder)")
    p.add_argument("--no-compile", action="store_true", help="leave torch.compile out of the engine table")
    p.add_argument("--sections", nargs="+", default=["engines", "int8", "predict"],
                   choices=["engines", "int8", "predict"], help="what to measure")
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    threads = a.threads or usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        cache = a.cache_dir or str(Path(tmp) / "cache")
        out: dict = {"machine": f"{cpu_name()}, {os.cpu_count()} cores, {threads} used", "torch": torch.__version__,
                     "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": " ".join(sys.argv)}
        out["load_average_before"] = os.getloadavg()
        if "engines" in a.sections:
            settings = [s for s in backend_settings("all") if not (a.no_compile and s[2])]
            table = compare_backends(a.model, backend="all", batch=a.batch, rounds=a.rounds, threads=threads,
                                     cache_dir=cache, settings=settings)
            out["engines"] = table
            print(format_backends(table), flush=True)
        if a.int8_weights and "int8" in a.sections:
            out["int8"] = int8_on_trained(a.int8_weights, a.int8_split, threads, cache)
            r = out["int8"]
            print(f"\nint8 on {a.int8_weights} [{a.int8_split}], {r['n']} images: top-1 fp32 {r['fp32_top1']:.2f}%, "
                  f"OpenVINO int8 {r['int8_top1']:.2f}% ({r['delta']:+.2f} points)", flush=True)
        if a.images and "predict" in a.sections:
            folder = Path(tmp) / "images"
            folder.mkdir()
            make_images(folder, a.images)
            out["predict"] = r = predict_end_to_end(a.model, folder, threads, cache)
            print(f"\npitvit predict over {r['images']} JPEGs (500x375), end to end, fp32: torch {r['torch_s']:.1f} s, "
                  f"openvino {r['openvino_s']:.1f} s ({r['speedup']:.2f}x); same top-5 for every image: "
                  f"{r['same_top5']}", flush=True)
    out["load_average_after"] = os.getloadavg()
    print(f"\n{out['machine']}, torch {out['torch']}, {out['date']}; load average (1, 5, 15 min) before "
          f"{out['load_average_before'][0]:.1f}, after {out['load_average_after'][0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
