"""The cost of the keyed random draws: a training step with drop path and mixup/cutmix drawn from (seed, step,
global position) against the same step drawing from the global generators (torch's Bernoulli, timm's numpy
Mixup), timed in the same run.

Both go through the trainer's own ``TrainStep`` (AdamW, label smoothing, drop path 0.1, mixup 0.8 / cutmix 1.0,
one mixing group of the whole batch); only the ``key`` argument differs. The two alternate, step by step within
each round (plain, keyed, plain, keyed, ...), so that load from other processes affects both alike; the table
shows the median step time of each over all rounds, and their ratio (the issue's target: at most 1.02).

    OMP_NUM_THREADS=2 python benchmarks/bench_keyed.py                   # pit_ti, batch 256, CPU
    python benchmarks/bench_keyed.py --model pit_test --batch 16 --steps 3 --rounds 1   # a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

try:
    import pitvit  # noqa: F401
except ImportError:  # run from a clone without PYTHONPATH=src
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def keyed_vs_plain(model_name: str = "pit_ti", batch: int = 256, steps: int = 5, rounds: int = 3,
                   device: str = "cpu", warmup: int = 1) -> dict:
    """Median seconds per training step with keyed and with plain draws, alternating; ``ratio`` = keyed / plain."""
    from pitvit import create_model, get_pretrained_cfg
    from pitvit.data import build_mixup
    from pitvit.train.distill import ClassificationLoss
    from pitvit.train.engine import TrainStep, step_key

    dev = torch.device(device)
    torch.manual_seed(0)
    model = create_model(model_name, drop_path_rate=0.1).to(dev).train()
    step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=1e-4), ClassificationLoss(smoothing=0.1),
                     dev, mixup=build_mixup(num_classes=model.num_classes, group=batch))
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *get_pretrained_cfg(model_name).input_size, generator=gen).to(dev)
    y = torch.randint(0, model.num_classes, (batch,), generator=gen).to(dev)

    def one(keyed: bool, i: int) -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        loss = step(x.clone(), y, key=step_key(0, 0, i) if keyed else None)
        loss.item()  # waits for the device
        return time.perf_counter() - t0

    for i in range(warmup):
        one(False, i), one(True, i)
    times: dict[str, list[float]] = {"plain": [], "keyed": []}
    for r in range(rounds):
        for i in range(steps):
            times["plain"].append(one(False, i))
            times["keyed"].append(one(True, i))
        print(f"round {r + 1}/{rounds}: plain {statistics.median(times['plain']):.3f} s/step, keyed "
              f"{statistics.median(times['keyed']):.3f} s/step so far", file=sys.stderr, flush=True)
    plain, keyed = statistics.median(times["plain"]), statistics.median(times["keyed"])
    return {"model": model_name, "batch": batch, "device": str(dev), "steps": steps * rounds,
            "plain_s": plain, "keyed_s": keyed, "ratio": keyed / plain}


def keyed_masks_ms(batch: int = 256, modules: int = 22, device: str = "cpu", repeats: int = 50) -> float:
    """Milliseconds per step for the keyed drop-path draws alone (``keyed_drop_path`` on ``modules`` drop-path
    layers; pit_ti has 22 with a rate above 0): the work the keyed step adds, timed apart from the step, which
    a loaded machine's noise cannot hide."""
    from pitvit.models import DropPath, keyed_drop_path
    from pitvit.utils.keyed import hash_keys

    dev = torch.device(device)
    layers = torch.nn.Sequential(*[DropPath(0.1, salt=s) for s in range(modules)])
    pos = torch.arange(batch, device=dev)
    t0 = time.perf_counter()
    for i in range(repeats):
        with keyed_drop_path(layers, hash_keys(pos, i)):
            total = sum(m.draws[0] for m in layers)
    float(total)
    return (time.perf_counter() - t0) / repeats * 1e3


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pit_ti")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5, help="steps of each kind per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    r = keyed_vs_plain(args.model, args.batch, args.steps, args.rounds, args.device)
    masks = keyed_masks_ms(args.batch, device=args.device)
    print(f"| model | batch | device | steps each | plain s/step | keyed s/step | keyed / plain |\n"
          f"|---|---|---|---|---|---|---|\n"
          f"| {r['model']} | {r['batch']} | {r['device']} | {r['steps']} | {r['plain_s']:.3f} | {r['keyed_s']:.3f} "
          f"| {r['ratio']:.3f} |\n\nthe keyed drop-path masks alone: {masks:.2f} ms per step "
          f"({masks / 1e3 / r['plain_s']:.2%} of a plain step)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
