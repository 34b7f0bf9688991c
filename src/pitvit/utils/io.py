"""Atomic file writes: a temporary file in the destination's folder, fsync, rename, fsync of the folder.

A reader (or a crash, a kill, a full disk) sees the old file or the new one, never half of one. Temporary
files are named ``.NAME.tmp<pid>``; one left by a killed process is removed by :func:`remove_stale_temps` at
the next start. Every file the project writes goes through here.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import OutputError

__all__ = ["atomic_write", "write_bytes", "write_text", "save_torch", "write_with", "remove_stale_temps", "temp_name"]

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)$")


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


def _output_error(path: Path, e: OSError) -> OutputError:
    what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
            errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
            errno.EPERM: "operation not permitted", errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.EISDIR: "the path is a folder"}.get(e.errno, e.strerror or type(e).__name__)
    err = OutputError(e.errno or 0, f"cannot write {path}: {what}; choose another path or free space "
                                    f"(nothing was written there)")
    err.filename = str(path)
    return err


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically, on failure it is removed.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full (``path`` is untouched).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _output_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)


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
    """Atomically produce ``path`` with a writer that only accepts a file name (safetensors, ONNX, ...).

    ``writer(tmp)`` writes the temporary file; it then replaces ``path`` as :func:`atomic_write` does.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise _output_error(path, e) from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


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
