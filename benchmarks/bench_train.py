"""Training throughput of ``pitvit train`` (``fit``) against a bare PyTorch loop on the same data and batches.

Both read the same dataset through the loader ``fit`` builds (data loading is part of the measurement) and step
the same model with AdamW; the bare loop does nothing else (no per-step seeding, schedule, loss checks,
logging). The runs alternate (bare, fit, bare, fit, ...) so that load from other processes affects both alike; the table
shows the median and the best round of each. Target: fit at >= 0.95 of the bare loop.

    python benchmarks/bench_train.py                  # the demo's model and data, 40 steps of 128
    python benchmarks/bench_train.py --steps 60 --rounds 3 --workers 0 --set train.threads=2
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
    from pitvit.train.runner import build_data
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
    from pitvit.train.config import apply_overrides
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
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--amp", default="none", choices=("none", "bf16"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="further overrides of the demo recipe (e.g. model.name=pit_test)")
    args = ap.parse_args()

    import logging

    from pitvit.train.config import load_config

    logging.getLogger("pitvit").setLevel(logging.WARNING)
    cfg = load_config("demo", [
        f"data.batch_size={args.batch_size}", f"data.num_workers={args.workers}", f"train.amp={args.amp}",
        "ema.enabled=false", *args.overrides])
    if cfg.train.threads:  # fit sets this; the bare loop must run with the same
        torch.set_num_threads(cfg.train.threads)
    bare, fitted = [], []
    for r in range(args.rounds):
        bare.append(bare_loop(cfg, args.steps))
        fitted.append(fit_loop(cfg, args.steps))
        logging.getLogger("pitvit").setLevel(logging.WARNING)
        print(f"round {r + 1}: bare {bare[-1]:.0f} img/s, fit {fitted[-1]:.0f} img/s", flush=True)
    b, f = statistics.median(bare), statistics.median(fitted)
    bb, fb = max(bare), max(fitted)
    print()
    print(f"{cfg.model.name} {dict(cfg.model.arch) or ''} batch {args.batch_size}, {args.steps} steps, "
          f"workers {args.workers}, amp {args.amp}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print("| loop                  | median img/s | ratio | best img/s | ratio |")
    print("|-----------------------|-------------:|------:|-----------:|------:|")
    print(f"| bare PyTorch loop     | {b:12.0f} | 1.000 | {bb:10.0f} | 1.000 |")
    print(f"| pitvit train (fit)    | {f:12.0f} | {f / b:.3f} | {fb:10.0f} | {fb / bb:.3f} |")
    print("(other processes on the machine make single rounds noisy: the best round is the steadier figure)")

if __name__ == "__main__":
    main()
