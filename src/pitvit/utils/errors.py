"""The project's error types and the exit code each one means on the command line.

Every error a user can cause (a wrong option, a missing dataset, a checkpoint that does not fit, a run that
cannot go on, an output that cannot be written) is one of these, with a message that says what was wrong,
which file, and what to do. The CLI prints that message on one line and exits with :data:`EXIT_CODES`'s code;
any other exception is a bug and keeps its traceback.

The classes also derive from the built-in type callers caught before they existed (``ValueError``,
``RuntimeError``, ``OSError``), so library code that catches those keeps working.
"""
from __future__ import annotations

__all__ = ["PitvitError", "ConfigError", "MissingPathError", "UnknownOptionError", "DatasetError",
           "CorruptImageError", "CheckpointError", "TrainingError", "NonFiniteLossError", "OutputError", "EXIT_CODES",
           "EXIT_INTERRUPTED"]


class PitvitError(Exception):
    """Base of every error a user can cause; ``exit_code`` is what the CLI returns for it."""

    exit_code = 1


class ConfigError(PitvitError, ValueError):
    """A wrong option or value: an unknown config key, model name, choice or path argument."""

    exit_code = 2


class MissingPathError(ConfigError, FileNotFoundError):
    """A path argument (weights, a checkpoint) names nothing; a ``FileNotFoundError`` too."""


class UnknownOptionError(ConfigError, TypeError):
    """An unknown keyword to a model builder: a ``TypeError`` as Python raises for any call, and a ConfigError
    when it came from a configuration (``model.arch``)."""


class DatasetError(PitvitError, RuntimeError):
    """A dataset cannot be built or read: a missing folder or file, an empty class, a malformed list or IDX file."""

    exit_code = 3


class CorruptImageError(DatasetError):
    """An image could not be decoded and ``strict_images=True`` made that fatal."""


class CheckpointError(PitvitError, ValueError):
    """A checkpoint that cannot be read safely, is damaged, or does not fit the model it is loaded into."""

    exit_code = 4


class TrainingError(PitvitError, RuntimeError):
    """A run stopped on a condition it explained (a non-finite loss, a run folder that holds another run, ...)."""

    exit_code = 5


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite; ``epoch`` and ``step`` say where (0-based)."""

    def __init__(self, epoch: int, step: int, value: float) -> None:
        super().__init__(f"non-finite loss ({value}) at epoch {epoch + 1}, step {step + 1}")
        self.epoch, self.step, self.value = epoch, step, value


class OutputError(PitvitError, OSError):
    """A result could not be written (read-only or full file system, a path under a file); nothing was lost."""

    exit_code = 6


EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

# The CLI's table, also printed by `pitvit --help`.
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "finished, but nothing to report (e.g. predict could read none of its images)",
    ConfigError.exit_code: "wrong option, config key or value",
    DatasetError.exit_code: "dataset missing, malformed or unreadable",
    CheckpointError.exit_code: "checkpoint unreadable, damaged, unsafe or not fitting the model",
    TrainingError.exit_code: "training stopped on an explained condition (non-finite loss, run folder conflict)",
    OutputError.exit_code: "an output could not be written (permissions, full disk, bad path)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}
