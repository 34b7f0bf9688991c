"""The ``pitvit`` command line: argument parsing only; each subcommand calls one library function.

Each subcommand lives in its own module here with ``add_parser(subparsers)``; modules import only
argparse at the top so that ``pitvit --help`` stays fast, and do their heavy imports inside ``run``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand name -> module under pitvit.cli. Order is the order of `pitvit --help`.
SUBCOMMANDS = ("demo", "train", "eval", "predict", "export", "benchmark", "convert", "plot", "models")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the description's line breaks."""


def add_model_args(p: argparse.ArgumentParser, ema_verb: str) -> None:
    """The options every model-consuming subcommand shares: --model, --weights, --ema."""
    # "%(default).0s" prints nothing; it stops the formatter from appending "(default: None)" where the
    # help already says what happens without the option.
    p.add_argument("--model", default=None, help="registered model name (required unless --weights is a "
                                                  "pitvit checkpoint, which names its model)%(default).0s")
    p.add_argument("--weights", default=None, metavar="PATH", help="checkpoint file or save_pretrained "
                                                                   "folder (default: random init)%(default).0s")
    p.add_argument("--ema", action="store_true", help=f"{ema_verb} the EMA weights of a training checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pitvit", formatter_class=HelpFormatter,
        description="PiT, the Pooling-based Vision Transformer: train, evaluate, predict, export, benchmark.")
    from pitvit import __version__

    parser.add_argument("--version", action="version", version=f"pitvit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"pitvit.cli.{name.replace('-', '_')}")
        except ModuleNotFoundError as e:
            if e.name != f"pitvit.cli.{name}":
                raise
            continue
        module.add_parser(sub, HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, KeyError) as e:
        # User errors (a missing file, a wrong name or value) get one clear line, not a traceback.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"pitvit {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
