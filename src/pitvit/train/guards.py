"""What keeps a run safe from the outside: the run folder's lock (one run per folder, whatever starts a second
one) and the stop flag (a scheduler's SIGUSR1 warning or a preemption's SIGTERM, agreed by every process so that
all of them stop after the same optimizer step and rank 0 saves a mid-epoch checkpoint)."""
from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path
from typing import Any

from pitvit.utils.distributed import DistInfo, all_reduce_sum
from pitvit.utils.errors import FolderLockedError
from pitvit.utils.io import lock_folder

__all__ = ["StopFlag", "lock_run_folder"]


def lock_run_folder(run_dir: Path, info: DistInfo, locks: contextlib.ExitStack) -> None:
    """One run per folder: rank 0 takes the run folder's lock (``utils.io.lock_folder``: the kernel drops it when
    the process dies) and holds it until ``locks`` closes; every process stops when rank 0 could not."""
    error: FolderLockedError | None = None
    if info.is_main:
        try:
            locks.enter_context(lock_folder(run_dir, "pitvit train"))
        except FolderLockedError as e:
            error = e
    if info.distributed and all_reduce_sum([1.0 if error else 0.0], info.device)[0] > 0:
        raise error or FolderLockedError(f"rank 0 found {run_dir} in use by another run")
    if error is not None:
        raise error


class StopFlag:
    """Set by SIGTERM (preemption) or SIGUSR1 (a scheduler's warning, ``#SBATCH --signal=USR1@120``); every
    process agrees on it by an all-reduce, so all of them stop after the same optimizer step."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGUSR1") if hasattr(signal, n))

    def __init__(self, info: DistInfo) -> None:
        self.info, self.flag, self.calls = info, False, 0
        self.previous: dict[int, Any] = {}
        self.name = "a signal"

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def uninstall(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        self.flag, self.name = True, signal.Signals(signum).name

    def __call__(self) -> bool:
        if not self.info.distributed:
            return self.flag
        self.calls += 1
        if self.calls % 10:  # agreeing costs an all-reduce: do it every 10 optimizer steps
            return False
        return all_reduce_sum([1.0 if self.flag else 0.0], self.info.device)[0] > 0
