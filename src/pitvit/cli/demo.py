"""`pitvit demo`: train a small PiT on Fashion-MNIST in a few minutes on a CPU."""
from __future__ import annotations


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("demo", formatter_class=formatter, help="train a small PiT on Fashion-MNIST (CPU, minutes)",
                       description="Train the shipped `demo` recipe (pit_nano on Fashion-MNIST) from scratch, then "
                                   "evaluate the checkpoint it selected (best.pt, chosen on images held out of "
                                   "the training split) on the test split once, and print that top-1, "
                                   "the time, and where the run folder, checkpoint and curves are.")
    p.add_argument("--output", "-o", default="runs/demo", help="run folder (an earlier demo there is replaced)")
    p.add_argument("--data", help="folder with the Fashion-MNIST IDX files (default: Debian's package)%(default).0s")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)%(default).0s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as in `pitvit train`")
    p.set_defaults(func=run)


def run(args) -> int:
    from pitvit.tools.demo import demo_config, run_demo
    from pitvit.utils.device import resolve_device

    cfg = demo_config(args.output, args.data, args.epochs, args.overrides)
    where = "GPU" if resolve_device(cfg.train.device).type == "cuda" else "CPU"
    print(f"pitvit demo: training {cfg.model.name} on Fashion-MNIST for {cfg.train.epochs} epoch(s) on the "
          f"{where}; progress (with each epoch's time left) goes to stderr", flush=True)
    r = run_demo(cfg)
    run_dir = r["run_dir"]
    if r["stopped"]:
        data = f" --data {args.data}" if args.data else ""
        print(f"stopped early; rerun `pitvit train --config demo --output {run_dir}{data}` to finish")
        return 0
    print()
    print(f"  test top-1   {r['top1']:.2f}%  (best.pt on the 10,000 Fashion-MNIST test images, evaluated once)")
    chosen_on = (f"{cfg.data.holdout:,} images held out of the 60,000 training images" if cfg.data.holdout else
                 f"the {cfg.data.val_split} split: data.holdout=0")
    print(f"  best.pt      epoch {r['best_epoch']} of {r['epochs']}: validation top-1 {r['val_top1']:.2f}% "
          f"({chosen_on})")
    print(f"  time         {r['seconds'] / 60:.1f} min ({r['seconds']:.0f} s) of training, precision "
          f"{r['precision']} (train.amp={cfg.train.amp})")
    print(f"  run folder   {run_dir}")
    print(f"  checkpoint   {r['checkpoint']}  (and last.pt)")
    print(f"  curves       {r['curves'] or '(matplotlib missing: not drawn)'}")
    print(f"  metrics      {r['metrics']}")
    data = f" --data {args.data}" if args.data else ""
    print(f"  evaluate it  pitvit eval --weights {r['checkpoint']} --data-format fashion_mnist --split test{data}")
    return 0
