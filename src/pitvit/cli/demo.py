"""`pitvit demo`: train a small PiT on Fashion-MNIST in a few minutes on a CPU."""
from __future__ import annotations


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("demo", formatter_class=formatter, help="train a small PiT on Fashion-MNIST (CPU, minutes)",
                       description="Train pit_nano on Fashion-MNIST from scratch, then print the test top-1, the "
                                   "time, and where the run folder, checkpoint and curves are.")
    p.add_argument("--output", "-o", default="runs/demo", help="run folder (an earlier demo there is replaced)")
    p.add_argument("--data", help="folder with the Fashion-MNIST IDX files (default: Debian's package)%(default).0s")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)%(default).0s")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, as in `pitvit train`")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from pitvit.tools.demo import run_demo
    from pitvit.data import DatasetError
    from pitvit.train.runner import TrainingError

    try:
        run_demo(args.output, args.data, args.epochs, args.overrides)
    except (TrainingError, DatasetError) as e:
        print(f"pitvit demo: error: {e}", file=sys.stderr)
        return 1
    return 0
