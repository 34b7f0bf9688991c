"""Training throughput of ``pitvit train`` (``fit``) against a bare PyTorch loop on the same data and batches.

Both read the same dataset through the loader ``fit`` builds (data loading is part of the measurement) and step
the same model with AdamW; the bare loop does nothing else (no per-step seeding, schedule, loss checks,
logging). The runs alternate (bare, fit, bare, fit, ...) so that load from other processes affects both alike; the table
shows the median and the best round of each. Target: fit at >= 0.95 of the bare loop.

    python benchmarks/bench_train.py                  # the demo recipe as it ships, 40 steps
    python benchmarks/bench_train.py --steps 60 --rounds 3 --set train.threads=1

``--against KEY=VALUE ...`` adds a third row: ``fit`` of the recipe with those overrides, timed in the same rounds
(e.g. the demo's earlier settings: ``--against data.pipeline=cpu data.num_workers=1 train.threads=1``).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F


def build_loader(cfg):
    """The training loader ``fit`` builds for ``cfg`` on one process, and the number of classes."""
    from pitvit.train.builders import build_data
    from pitvit.utils.distributed import DistInfo

    data = build_data(cfg, DistInfo())
    return data.train, len(data.classes)


def bare_loop(cfg, steps: int) -> float:
    """Images/s of a plain loop: load, forward, loss, backward, AdamW step."""
    from pitvit.models import create_model
    from pitvit.utils.device import amp_dtype

    loader, classes = build_loader(cfg)
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, num_classes=classes, drop_path_rate=cfg.model.drop_path, **cfg.model.arch)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    amp = amp_dtype(cfg.train.amp)
    model.train()
    n = 0
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == steps:
            break
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=cfg.aug.smoothing)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        n += x.shape[0]
    loss.item()
    return n / (time.perf_counter() - t0)


def fit_loop(cfg, steps: int) -> float:
    """Images/s of the training epoch as ``fit`` runs it (its own measurement, evaluation excluded)."""
    from pitvit.train.recipes import apply_overrides
    from pitvit.train.runner import fit

    with tempfile.TemporaryDirectory() as tmp:
        run = apply_overrides(cfg, [f"train.output={tmp}", "train.epochs=1", f"train.max_steps_per_epoch={steps}",
                                    "log.plot=false", "train.resume=false", "sched.warmup_epochs=0"])
        res = fit(run)
    return res["train_img_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40, help="training steps per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="alternating bare/fit measurements")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="overrides of the demo recipe (e.g. model.name=pit_test, data.batch_size=64)")
    ap.add_argument("--against", nargs="+", default=[], metavar="KEY=VALUE",
                    help="also time fit with these further overrides, in the same rounds")
    args = ap.parse_args()

    import logging

    from pitvit.train.recipes import apply_overrides, load_config

    logging.getLogger("pitvit").setLevel(logging.WARNING)
    cfg = load_config("demo", ["ema.enabled=false", *args.overrides])
    other = apply_overrides(cfg, args.against) if args.against else None
    rows = {"bare PyTorch loop": [], "pitvit train (fit)": []}
    if other is not None:
        rows[f"fit, {' '.join(args.against)}"] = []
    for r in range(args.rounds):
        torch.set_num_threads(cfg.train.threads or torch.get_num_threads())  # fit sets it; the bare loop alike
        rows["bare PyTorch loop"].append(bare_loop(cfg, args.steps))
        rows["pitvit train (fit)"].append(fit_loop(cfg, args.steps))
        if other is not None:
            rows[f"fit, {' '.join(args.against)}"].append(fit_loop(other, args.steps))
        logging.getLogger("pitvit").setLevel(logging.WARNING)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in rows.items()), flush=True)
    b, bb = statistics.median(rows["bare PyTorch loop"]), max(rows["bare PyTorch loop"])
    print()
    d = cfg.data
    print(f"{cfg.model.name} {dict(cfg.model.arch) or ''} batch {d.batch_size}, {args.steps} steps, pipeline "
          f"{d.pipeline}, workers {d.num_workers}, amp {cfg.train.amp}, {cfg.train.threads} threads, {args.rounds} rounds")
    print("| loop | median img/s | ratio | best img/s | ratio |")
    print("|---|---:|---:|---:|---:|")
    for k, v in rows.items():
        m, best = statistics.median(v), max(v)
        print(f"| {k} | {m:.0f} | {m / b:.3f} | {best:.0f} | {best / bb:.3f} |")
    print("(other processes on the machine make single rounds noisy: the best round is the steadier figure)")

if __name__ == "__main__":
    main()
