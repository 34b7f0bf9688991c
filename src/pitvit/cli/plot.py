"""`pitvit plot`: training curves of one or several runs."""
from __future__ import annotations


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("plot", formatter_class=formatter, help="plot loss, top-1 and lr curves of runs",
                       description="Draw loss (train/val/ema), top-1 (val/ema) and learning rate against epoch\n"
                                   "from each RUN_DIR/metrics.jsonl, several runs overlaid, as one PNG.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folder(s) holding metrics.jsonl")
    # "%(default).0s" prints nothing: it only stops the formatter from appending "(default: None)".
    p.add_argument("--out", default=None, help="output PNG (default: RUN_DIR/curves.png for one run, "
                                               "./curves.png for several)%(default).0s")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from pitvit.train.curves import plot_runs

    out = args.out
    if out is None:
        out = Path(args.run_dirs[0]) / "curves.png" if len(args.run_dirs) == 1 else Path("curves.png")
    print(plot_runs(args.run_dirs, out))
    return 0
