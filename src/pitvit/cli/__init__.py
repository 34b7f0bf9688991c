"""The ``pitvit`` command line: argument parsing only; each subcommand calls one library function.

Each subcommand lives in its own module here with ``add_parser(subparsers, formatter)`` and ``run(args)``;
the modules do their heavy imports inside ``run``.

One error policy for every subcommand, in :func:`main`: an error the user can cause is one of
:mod:`pitvit.utils.errors`' types and becomes one line, ``pitvit COMMAND: error: MESSAGE``, and the exit code
of :data:`pitvit.utils.errors.EXIT_CODES` (listed by ``pitvit --help``); anything else is a bug and keeps its
traceback. ``--traceback`` shows the traceback of the expected errors too. Only this package prints; the
library logs through ``logging`` (set up here to write to stderr).

Standard output is the user's to close: a reader that stops early (``pitvit predict ... | head -1``) ends the
command quietly with status 141 (128 + SIGPIPE, what a shell reports for a program the closed pipe killed), and
one that cannot take the output (``> /dev/full``) is an :class:`~pitvit.utils.errors.OutputError` line (6).
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import signal
import sys
import traceback
from typing import Any

from pitvit.utils.errors import (EXIT_BROKEN_PIPE, EXIT_CODES, EXIT_INTERRUPTED, ConfigError, OutputError,
                                 PitvitError)

# Subcommand name -> module under pitvit.cli. Order is the order of `pitvit --help`.
SUBCOMMANDS = ("demo", "train", "eval", "predict", "export", "benchmark", "convert", "info", "pack", "plot",
               "models")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the description's line breaks."""


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, like every other error of the command line."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(ConfigError.exit_code, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def model_name(value: str) -> str:
    """An argparse type: a registered model name, else an error listing them."""
    from pitvit.models import is_model, list_models

    if not is_model(value):
        raise argparse.ArgumentTypeError(f"unknown model {value!r}; registered: {', '.join(list_models())}")
    return value


def add_model_args(p: argparse.ArgumentParser, ema_verb: str) -> None:
    """The options every model-consuming subcommand shares: --model, --weights, --ema."""
    # "%(default).0s" prints nothing; it stops the formatter from appending "(default: None)" where the
    # help already says what happens without the option.
    p.add_argument("--model", default=None, type=model_name,
                   help="registered model name, see `pitvit models` (required unless --weights is a pitvit "
                        "checkpoint or save_pretrained folder, which names its model)%(default).0s")
    p.add_argument("--weights", default=None, metavar="PATH", help="checkpoint file or save_pretrained "
                                                                   "folder (default: random init)%(default).0s")
    p.add_argument("--ema", action="store_true", help=f"{ema_verb} the EMA weights of a training checkpoint")
    add_allow_nonfinite(p)


def add_allow_nonfinite(p: argparse.ArgumentParser) -> None:
    """--allow-nonfinite: the escape from the refusal of weights holding NaN or inf."""
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="load weights that hold NaN or inf instead of refusing them (to inspect a run that diverged)")


def add_backend_args(p: argparse.ArgumentParser, default_precision: str, fp32_why: str = "") -> None:
    """The options of every inference subcommand: --backend, --precision (--amp), --threads, --cache-dir,
    --calibration."""
    from pitvit.utils.names import BACKEND_PRECISIONS, BACKENDS

    p.add_argument("--backend", default="torch", choices=BACKENDS,
                   help="inference engine: eager PyTorch, ONNX Runtime or OpenVINO (converted on first use and "
                        "cached; pip install 'pitvit[onnx]' or 'pitvit[openvino]')")
    p.add_argument("--precision", "--amp", dest="precision", default=default_precision,
                   choices=BACKEND_PRECISIONS,
                   help="what runs, the same on every backend, and printed: fp32 (none) gives PyTorch's fp32 "
                        "numbers" + fp32_why + "; auto: bf16 where the device computes it natively (CPUs with AMX or "
                        "AVX-512 BF16, GPUs from Ampere on), else fp32; bf16 is refused where it would be "
                        "emulated; fp16: CUDA; int8: OpenVINO with NNCF post-training quantization (see "
                        "--calibration), or ONNX Runtime with its dynamic quantization (no calibration). --amp is "
                        "the older name")
    add_engine_args(p)


def add_data_format_arg(p: argparse.ArgumentParser, holder: str, default: str | None = "auto") -> None:
    """--data-format (--kind, its older name): the layout ``holder`` holds, ``pitvit.data.build_dataset``'s
    ``kind`` (``default`` ``None``: only with another option, which the command checks)."""
    from pitvit.utils.names import DATASET_KINDS

    p.add_argument("--data-format", "--kind", dest="data_format", default=default, choices=DATASET_KINDS,
                   metavar="FORMAT", help=f"what {holder} holds: {', '.join(DATASET_KINDS)} (default: auto, "
                   "detected; the layouts: `pitvit pack --help`). --kind is the older name%(default).0s")


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """--threads, --cache-dir, --calibration: how the inference engines run (every inference subcommand and the
    engine table of `pitvit benchmark`)."""
    p.add_argument("--threads", type=int, default=None,
                   help="threads of the backend (default: the cores this process may use: its CPU affinity, "
                        "capped by a cgroup quota)%(default).0s")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where converted models are kept (default: $XDG_CACHE_HOME/pitvit, else "
                        "~/.cache/pitvit; 'none': convert every time)%(default).0s")
    p.add_argument("--calibration", default=None, metavar="DIR",
                   help="int8: a folder of a few hundred images like the ones to classify (default: the "
                        "training data a pitvit run checkpoint names; the engine table: random inputs, speed "
                        "only); OpenVINO calibrates on them, ONNX Runtime only measures its top-1 agreement with "
                        "fp32 on them%(default).0s")


def _epilog() -> str:
    lines = ["exit status:"] + [f"  {code:<4} {what}" for code, what in EXIT_CODES.items()]
    lines.append("  an error with a traceback (exit status 1) is a bug in pitvit: please report it")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from pitvit._version import __version__

    parser = ArgumentParser(
        prog="pitvit", formatter_class=HelpFormatter, epilog=_epilog(),
        description="PiT, the Pooling-based Vision Transformer: train, evaluate, predict, export, benchmark.")
    parser.add_argument("--version", action="version", version=f"pitvit {__version__}")
    traceback_help = "on an error, also show its traceback (errors that are bugs always show theirs)"
    # "%(default).0s" keeps the formatter from appending "(default: False)"; the subcommands' copy below has no
    # default to name (SUPPRESS), so its help must not mention one
    parser.add_argument("--traceback", action="store_true", help=traceback_help + "%(default).0s")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"pitvit.cli.{name}").add_parser(sub, HelpFormatter)
        # Accepted after the subcommand too; SUPPRESS keeps the value given before it.
        sub.choices[name].add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                                       help=traceback_help)
    return parser


def _one_line(e: BaseException) -> str:
    # OSError subclasses (OutputError) keep the message in strerror; str() would add "[Errno N]".
    text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip()) or type(e).__name__


class _StdoutFailed(Exception):
    """Writing to standard output failed (closed pipe, full device); raised by :class:`_Stdout`."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class _Stdout:
    """``sys.stdout`` for the length of a command: an ``OSError`` of its own writes becomes :class:`_StdoutFailed`,
    so it is told apart from the errors of files the command writes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as e:
            raise _StdoutFailed(e) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise _StdoutFailed(e) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _silence_stdout() -> None:
    """Point file descriptor 1 at /dev/null, so the interpreter's last flush of what is still buffered cannot
    fail again (and print "Exception ignored")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # not a real file (a test's capture): nothing will flush it at exit


def _stdout_failed(command: str, e: OSError) -> int:
    _silence_stdout()
    if e.errno == errno.EPIPE:
        return EXIT_BROKEN_PIPE  # the reader has what it wanted: nothing to report
    what = {errno.ENOSPC: "no space left on the device"}.get(e.errno or 0, e.strerror or type(e).__name__)
    print(f"{' '.join(('pitvit', command)).strip()}: error: cannot write to standard output: {what}", file=sys.stderr)
    return OutputError.exit_code


def main(argv: list[str] | None = None) -> int:
    """Run the ``pitvit`` command line; returns the exit status (see ``pitvit --help``)."""
    stdout = sys.stdout
    sys.stdout = _Stdout(stdout)
    try:
        return _main(argv)
    finally:
        sys.stdout = stdout


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        sys.stdout.flush()
    except _StdoutFailed as e:  # `pitvit --help | head -1`
        return _stdout_failed("", e.error)
    except SystemExit as e:  # --help, --version, or a bad option (already reported on one line)
        try:
            sys.stdout.flush()
        except _StdoutFailed as failed:
            return _stdout_failed("", failed.error)
        return e.code if isinstance(e.code, int) else 0 if e.code is None else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from pitvit.utils.logs import setup_logging

    setup_logging(int(os.environ.get("RANK", "0")))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a full device says so here, not after the exit status is decided
        return code
    except _StdoutFailed as e:
        return _stdout_failed(args.command, e.error)
    except KeyboardInterrupt as e:
        if args.traceback:
            traceback.print_exc()
        signum = getattr(e, "signum", signal.SIGINT)  # pitvit.utils.errors.Interrupted carries SIGTERM, SIGHUP
        name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
        print(f"pitvit {args.command}: interrupted{name}", file=sys.stderr)
        return EXIT_INTERRUPTED if signum == signal.SIGINT else 128 + signum
    except PitvitError as e:  # anything else is a bug: Python prints its traceback
        if args.traceback:
            traceback.print_exc()
        print(f"pitvit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
