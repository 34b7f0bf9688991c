"""Where a run came from: the code, the libraries, the command and the machine, as plain data.

Every training checkpoint and every run's ``config.yaml`` carry :func:`provenance`'s record, so a ``best.pt``
found months later still says which pitvit (and which commit of it, with uncommitted changes or not), which
torch, timm and Python, which command on which device and how many processes produced it (dinov2 and torchtitan
record the same with their runs).
"""
from __future__ import annotations

import datetime
import importlib.metadata
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

__all__ = ["provenance", "git_state"]

_GIT_TIMEOUT_S = 5


def _git(args: list[str], cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S,
                         check=True)
    return out.stdout.strip()


def git_state(package_dir: Path | None = None) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the checkout pitvit runs from, or ``None`` when it runs from an installed copy,
    git is missing, or anything else goes wrong (provenance never stops a run).

    ``dirty`` is whether tracked files differ from the commit (untracked files are not counted).
    """
    here = package_dir or Path(__file__).resolve().parents[1]
    try:
        # a tracked __init__.py: this is a checkout, not a copy installed inside some other repository
        _git(["ls-files", "--error-unmatch", "__init__.py"], here)
        commit = _git(["rev-parse", "HEAD"], here)
        dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], here))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return {"commit": commit, "dirty": dirty}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    from .device import cpuinfo

    return cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def _device_kind(device: Any) -> str:
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"{device.type} ({_cpu_name()})" if device.type == "cpu" else device.type


def provenance(device: Any = None, world_size: int = 1, argv: list[str] | None = None) -> dict[str, Any]:
    """The record of where a run comes from: ``pitvit`` (version), ``git`` (:func:`git_state`), ``torch``,
    ``timm``, ``python``, ``command`` (the command line as a shell would take it), ``device`` (its kind and
    name), ``processes`` and ``created`` (UTC, ISO 8601).

    Args:
        device: where the run computes (``None``: the CPU).
        world_size: the number of processes of the run.
        argv: the command line (default: ``sys.argv``).
    """
    import torch

    from pitvit._version import __version__

    return {"pitvit": __version__, "git": git_state(), "torch": str(torch.__version__), "timm": _version("timm"),
            "python": platform.python_version(), "command": shlex.join(sys.argv if argv is None else argv),
            "device": _device_kind(device), "processes": int(world_size),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
