"""`pitvit demo`: train a small PiT on Fashion-MNIST in a few minutes on a CPU."""
from __future__ import annotations


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("demo", formatter_class=formatter, help="train a small PiT on Fashion-MNIST (CPU, minutes)",
                       description="Train the shipped `demo` recipe (pit_nano on Fashion-MNIST) from scratch, then "
                                   "print the test top-1, the time, and where the run folder, checkpoint and "
                                   "curves are.")
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
    print(f"  test top-1   {r['top1']:.2f}%  (Fashion-MNIST test set, 10,000 images)")
    print(f"  time         {r['seconds'] / 60:.1f} min ({r['seconds']:.0f} s)")
    print(f"  run folder   {run_dir}")
    print(f"  checkpoint   {r['checkpoint']}  (and last.pt)")
    print(f"  curves       {r['curves'] or '(matplotlib missing: not drawn)'}")
    print(f"  metrics      {r['metrics']}")
    print(f"  evaluate it  pitvit eval --weights {r['checkpoint']} --kind fashion_mnist --split test")
    return 0
