"""Logging for 1..N processes: the ``pitvit`` logger writes to stderr (and a run's ``log.txt``) on rank 0; other
ranks report errors only, prefixed with their rank. Library code logs through it; only the CLI prints.

:class:`Progress` is the one progress report of a loop: periodic log lines, or a bar redrawn on a terminal
(the only library output that writes to stderr directly, because a bar cannot be a log record)."""
from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import torch

from .device import peak_memory_mb

__all__ = ["setup_logging", "start_log_file", "get_logger", "Progress"]


def get_logger(name: str = "pitvit") -> logging.Logger:
    """A logger under the ``pitvit`` hierarchy."""
    return logging.getLogger(name if name == "pitvit" or name.startswith("pitvit.") else f"pitvit.{name}")


class _RankFilter(logging.Filter):
    """Rank 0 logs everything; other ranks only errors, prefixed with their rank."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        record.msg = f"[rank {self.rank}] {record.msg}"
        return record.levelno >= logging.ERROR


class _HeldFile(logging.Handler):
    """A run's log file that does not exist yet: records wait in memory until :func:`start_log_file`, which
    writes them first; a run that fails before it starts leaves no file (nor folder) behind."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.held: list[logging.LogRecord] = []
        self.file: logging.FileHandler | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.file is None:
            self.held.append(record)
        else:
            self.file.emit(record)

    def start(self) -> None:
        if self.file is None:
            self.file = logging.FileHandler(self.path)
            self.file.setFormatter(self.formatter)
            for record in self.held:
                self.file.emit(record)
            self.held = []

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        super().close()


def setup_logging(rank: int, log_file: str | None = None, *, hold: bool = False) -> logging.Logger:
    """The ``pitvit`` logger: messages to stderr (and ``log_file`` on rank 0), filtered by rank.

    Args:
        rank: this process's rank; ranks other than 0 log errors only.
        log_file: also append the messages to this file (rank 0).
        hold: keep the messages for ``log_file`` in memory until :func:`start_log_file` (its folder may not
            exist yet).
    """
    logger = logging.getLogger("pitvit")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        if getattr(h, "_pitvit", False):
            logger.removeHandler(h)
            h.close()
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file and rank == 0:
        handlers.append(_HeldFile(log_file) if hold else logging.FileHandler(log_file))
    for h in handlers:
        h._pitvit = True  # type: ignore[attr-defined]
        h.setFormatter(fmt)
        h.addFilter(_RankFilter(rank))
        logger.addHandler(h)
    return logger


def start_log_file() -> None:
    """Start writing the log file held by ``setup_logging(..., hold=True)``, its held messages first."""
    for h in logging.getLogger("pitvit").handlers:
        if isinstance(h, _HeldFile):
            h.start()


def _clock(seconds: float) -> str:
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """Progress of a loop of ``total`` steps: ``LABEL [done/total] STATS N img/s eta H:MM:SS mem N MB``.

    Logged every ``interval`` steps and at the last one; with ``bar`` the same text follows a bar redrawn in
    place on ``stream`` at every update instead. Images/s and the eta are measured from construction.

    Args:
        total: steps in the loop (0: unknown).
        label: the start of each line (``"epoch 3"``).
        interval: steps between lines.
        bar: draw a bar (meant for a terminal) instead of logging lines.
        enabled: report at all (``False`` on ranks other than 0; :meth:`due` still answers).
        device: whose peak memory the line shows.
        logger: where lines go (default: ``pitvit``).
        stream: where the bar goes (default: stderr).
    """

    def __init__(self, total: int, label: str = "", *, interval: int = 50, bar: bool = False, enabled: bool = True,
                 device: torch.device = torch.device("cpu"), logger: logging.Logger | None = None,
                 stream: TextIO | None = None) -> None:
        self.total, self.label, self.interval = total, label, max(interval, 1)
        self.enabled, self.bar = enabled, bar and enabled
        self.device = device
        self.logger = logger or get_logger()
        self.stream = stream
        self.t0 = time.perf_counter()
        self._open = False  # a bar line not yet ended with a newline

    def due(self, done: int) -> bool:
        """Whether a line is due after ``done`` steps."""
        return done % self.interval == 0 or done == self.total

    def update(self, done: int, images: int, stats: str) -> None:
        """Report ``done`` steps and ``images`` images so far (all processes together); ``stats`` follows the
        step count (``"loss 2.3026 lr 1.000e-03"``)."""
        if not self.enabled or not (self.bar or self.due(done)):
            return
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - done) if self.total and done else 0.0
        msg = (f"{self.label} [{done}/{self.total}] {stats} {images / max(elapsed, 1e-9):.0f} img/s "
               f"eta {_clock(eta)} mem {peak_memory_mb(self.device):.0f}MB")
        if not self.bar:
            self.logger.info(msg)
            return
        width = 24
        filled = min(width, int(width * done / max(self.total, 1)))
        stream = self.stream or sys.stderr
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {msg}\033[K")
        self._open = done != self.total
        if not self._open:
            stream.write("\n")
        stream.flush()

    def close(self) -> None:
        """End the bar's line if the loop stopped before its last step."""
        if self._open:
            stream = self.stream or sys.stderr
            stream.write("\n")
            stream.flush()
            self._open = False
