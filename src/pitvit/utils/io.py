"""Atomic file writes: a temporary file in the destination's folder, fsync, rename, fsync of the folder.

A reader (or a crash, a kill, a full disk) sees the old file or the new one, never half of one. Temporary
files are named ``.NAME.tmp<pid>``; one left by a killed process is removed by :func:`remove_stale_temps` at
the next start. Every file the project writes goes through here, and every way it can fail (a full disk, a
read-only folder, a path under a file) is an :class:`~pitvit.utils.errors.OutputError` that says so; folders
created for a file that could not be written are removed again.

Writers that stream into a file object from C++ (``torch.save``, ``torch.export.save``) get a file whose
``write`` never fails (:func:`open_output`): the first error is kept and raised once the writer is done. Told
of a failed write instead, torch's zip writer raises from its destructor, which aborts the process.
"""
from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import signal
import stat
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from .errors import FolderLockedError, Interrupted, OutputError

__all__ = ["FolderLock", "lock_folder", "NotRegularFileError", "require_regular", "open_regular", "atomic_write", "write_bytes", "write_text", "write_files", "save_torch", "write_with", "open_output",
           "make_dir", "remove_stale_temps", "temp_name"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


# ---------------------------------------------------------------------------------------------- reading
class NotRegularFileError(OSError):
    """A path that must be a regular file names a FIFO, socket, device or folder (opening one may block for
    ever, as a FIFO without a writer does, or never end, as ``/dev/zero`` does)."""


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def file_kind(mode: int) -> str:
    """What an ``st_mode`` is, in words: ``"a regular file"``, ``"a FIFO (named pipe)"``, ..."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def require_regular(path: str | os.PathLike) -> os.stat_result:
    """``os.stat(path)`` (links followed), refusing anything but a regular file; nothing is opened.

    Raises:
        NotRegularFileError: ``path`` is a FIFO, socket, device or folder (the message says which).
        OSError: ``path`` cannot be stat'ed (``FileNotFoundError`` when it does not exist).
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(f"{path} is {file_kind(st.st_mode)}, not a regular file")
    return st


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """Open a regular file for reading in binary mode; a FIFO, socket, device or folder is refused before it
    is opened (:func:`require_regular`), and again after (``fstat``), so a file swapped in between cannot
    make the read block.

    Raises:
        NotRegularFileError: see :func:`require_regular`.
    """
    require_regular(path)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{path} is {file_kind(mode)}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------------------------- locking
_HELD_LOCKS: set[int] = set()  # descriptors of the FolderLocks this process holds


def _drop_inherited_locks() -> None:
    """In a child just forked (a data loader's worker...): close the descriptors of the parent's folder locks. A
    ``flock`` belongs to the open file, which a forked child shares, so a child that outlived its killed parent
    would otherwise keep the folder locked (a rerun then found it "in use" until the child died)."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class FolderLock:
    """An exclusive ``flock`` on a folder, held until :meth:`release` or the process ends: the kernel drops it when
    the process dies, however it dies, so a killed holder never leaves a stale lock behind; processes forked from
    the holder do not hold it. The lock is on the folder itself, so taking it writes nothing there (a refused run
    leaves its folder exactly as it was)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd
        _HELD_LOCKS.add(fd)

    def release(self) -> None:
        if self.fd >= 0:
            _HELD_LOCKS.discard(self.fd)
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = -1

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _lock_holder(st: os.stat_result) -> str:
    """The PID holding a flock on the file ``st`` describes, from Linux's ``/proc/locks``; ``"unknown"`` elsewhere."""
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                parts = line.split()  # "1: FLOCK ADVISORY WRITE 4242 08:01:1234 0 EOF" (a "->" marks waiters)
                if "->" not in parts and len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == ident:
                    return parts[4]
    except OSError:
        pass
    return "unknown"


def lock_folder(folder: str | os.PathLike, what: str = "run") -> FolderLock:
    """Take ``folder``'s lock without waiting (an exclusive ``flock`` on the folder itself).

    Raises:
        FolderLockedError: another process holds it (the message names its PID and the folder).
        OutputError: the folder cannot be opened or locked.
    """
    import fcntl

    path = Path(folder)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _output_error(path, e, folder=path) from e
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        st = os.fstat(fd)
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise _output_error(path, e, folder=path) from e
        raise FolderLockedError(f"another {what} (PID {_lock_holder(st)}) is using {path}; wait for it to end, "
                                f"stop it, or choose another folder") from None
    return FolderLock(path, fd)


# ---------------------------------------------------------------------------------------------- writing
def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _file_above(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) when it is not a folder."""
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            return None if p.is_dir() else p
    return None


def _output_error(path: Path, e: OSError, folder: Path | None = None) -> OutputError:
    """``e`` as an OutputError about writing ``path`` (creating the folder ``folder``, when given)."""
    blocker = _file_above(folder or path.parent) if e.errno in (errno.EEXIST, errno.ENOTDIR) else None
    if blocker is not None:  # mkdir says "File exists" for a path under a file: name the file instead
        what = f"{blocker} is a file, not a folder"
    else:
        what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "the file is larger than this file system or process allows",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
                errno.EISDIR: "the path is a folder"}.get(e.errno, e.strerror or type(e).__name__)
    action = f"cannot create the folder {folder}" if folder is not None else f"cannot write {path}"
    err = OutputError(e.errno or 0, f"{action}: {what}; choose another path or free space "
                                    f"(nothing was written there)")
    err.filename = str(folder or path)
    return err


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; returns the ones created, outermost first."""
    missing = [p for p in (folder, *folder.parents) if not p.is_dir()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for p in reversed(folders):
        with contextlib.suppress(OSError):
            p.rmdir()


def make_dir(path: str | os.PathLike) -> Path:
    """Create a folder (and its parents) for outputs.

    Raises:
        OutputError: it cannot be created (a file in the way, a read-only or full file system).
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(path, e, folder=path) from e
    return path


class _Output(io.IOBase):
    """A writable file whose ``write`` never raises: the first ``OSError`` (or a Ctrl-C, SIGTERM) is kept in
    ``error``, later writes are dropped, and the writer carries on to its end (see the module docstring)."""

    def __init__(self, raw: IO[Any]) -> None:
        super().__init__()
        self.raw = raw
        self.error: OSError | KeyboardInterrupt | None = None

    def write(self, data: Any) -> int:
        try:
            if self.error is None:
                self.raw.write(data)
        except (OSError, KeyboardInterrupt) as e:
            self.error = e
        return len(data)

    def flush(self) -> None:
        try:
            if self.error is None and not self.raw.closed:
                self.raw.flush()
        except (OSError, KeyboardInterrupt) as e:
            self.error = e

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self.raw.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()


@contextlib.contextmanager
def open_output(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open ``path`` for a writer that cannot take a failed ``write`` (see the module docstring); the first
    ``OSError`` of any write is raised when the block ends, also in place of an error the writer then raised.

    Not atomic by itself: the callers write temporary files with it.
    """
    with open(path, mode) as raw:
        out = _Output(raw)
        try:
            yield out  # type: ignore[misc]
        except Exception:
            if out.error is not None:
                raise out.error from None  # the cause, not what the writer made of it
            raise
        if out.error is not None:
            raise out.error
        raw.flush()
        os.fsync(raw.fileno())


# Signals whose default action ends the process on the spot, leaving a temporary file behind. SIGINT needs
# nothing: Python turns it into KeyboardInterrupt already.
_FATAL_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


def _raise_interrupted(signum: int, frame: Any) -> None:  # noqa: ARG001
    raise Interrupted(signum)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise :class:`~pitvit.utils.errors.Interrupted` (a
    ``KeyboardInterrupt``) instead of killing the process, so that every ``finally`` and cleanup runs; the
    handlers before are restored after. Only signals left at their default are taken (a run that handles SIGTERM
    itself keeps its handler), only in the main thread, and nested blocks leave the outer one in charge.

    Every file written through this module is written in such a block: a SIGTERM during ``pitvit export``,
    ``convert``, ``eval --out``, ``predict --out`` or ``plot`` leaves the previous file and no temporary one.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = {s: signal.getsignal(s) for s in _FATAL_SIGNALS if signal.getsignal(s) == signal.SIG_DFL}
    for s in taken:
        signal.signal(s, _raise_interrupted)
    try:
        yield
    finally:
        for s, previous in taken.items():
            signal.signal(s, previous)


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """Yields the temporary name to write; renames it over ``path`` if the block succeeds. On any failure (a
    signal too, see :func:`signals_raise`) the temporary file and the folders created for it are removed, and an
    ``OSError`` becomes an OutputError."""
    tmp = temp_name(path)
    created: list[Path] = []
    with signals_raise():
        with _cleaned(path, tmp, created):
            created += _make_parents(path.parent)
            yield tmp
            os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextlib.contextmanager
def _cleaned(path: Path, tmp: Path, created: list[Path]) -> Iterator[None]:
    try:
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _remove_empty(created)
        if isinstance(e, OSError) and not isinstance(e, OutputError):
            raise _output_error(path, e) from e
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically, on failure it is removed.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full (``path`` is untouched).
    """
    with _replacing(Path(path)) as tmp, open_output(tmp, mode) as f:
        yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` through :func:`atomic_write`."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)
    return Path(path)


def write_with(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Atomically produce ``path`` with a writer that only accepts a file name (ONNX, a copy, ...).

    ``writer(tmp)`` writes the temporary file (a writer streaming from C++ should open it with
    :func:`open_output`); it then replaces ``path`` as :func:`atomic_write` does.
    """
    path = Path(path)
    with _replacing(path) as tmp:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return path


def write_files(files: Mapping[str | os.PathLike, bytes]) -> list[Path]:
    """Write several files as one: every temporary file is written and synced before any is renamed into place,
    so a full disk or a bad path leaves all of them as they were (a kill between two renames may still leave
    some new and some old).

    Raises:
        OutputError: one of them cannot be written; none was replaced.
    """
    paths = [Path(p) for p in files]
    with contextlib.ExitStack() as stack:
        temps = [stack.enter_context(_replacing(p)) for p in paths]  # all renamed only if every write succeeds
        for path, tmp, data in zip(paths, temps, files.values()):
            try:
                with open_output(tmp) as f:
                    f.write(data)
            except OSError as e:
                raise _output_error(path, e) from e  # named here: the contexts would all name the last file
    return paths


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp<pid>`` files in ``folder`` whose process is gone (left by a kill); returns them."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m and entry.is_file() and (int(m["pid"]) == os.getpid() or not _pid_alive(int(m["pid"]))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed
