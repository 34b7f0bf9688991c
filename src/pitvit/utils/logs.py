"""Logging for 1..N processes: the ``pitvit`` logger writes to stderr (and a run's ``log.txt``) on rank 0; other
ranks report errors only, prefixed with their rank. Library code logs through it; only the CLI prints."""
from __future__ import annotations

import logging
import sys

__all__ = ["setup_logging", "get_logger"]


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


def setup_logging(rank: int, log_file: str | None = None) -> logging.Logger:
    """The ``pitvit`` logger: messages to stderr (and ``log_file`` on rank 0), filtered by rank."""
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
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h._pitvit = True  # type: ignore[attr-defined]
        h.setFormatter(fmt)
        h.addFilter(_RankFilter(rank))
        logger.addHandler(h)
    return logger
