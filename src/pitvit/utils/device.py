"""Devices and precisions by name: the one place that turns ``auto``/``cpu``/``cuda[:N]`` into a device and
``none``/``bf16``/``fp16`` into an autocast dtype; and how much memory this process used at most."""
from __future__ import annotations

import resource
import sys

import torch

from .errors import ConfigError

__all__ = ["DEVICE_CHOICES", "AMP_CHOICES", "resolve_device", "amp_dtype", "peak_memory_mb"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
AMP_CHOICES = tuple(_AMP_DTYPES)


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`.

    Raises:
        ConfigError: an unknown name, or CUDA asked for where none is available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)} "
                          f"(or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA device is available; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"unsupported device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    return dev


def amp_dtype(name: str, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype for ``none`` (fp32: ``None``), ``bf16`` or ``fp16``.

    Raises:
        ConfigError: an unknown name, or fp16 on a device other than CUDA (use bf16 on the CPU).
    """
    if name not in _AMP_DTYPES:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(AMP_CHOICES)}")
    dtype = _AMP_DTYPES[name]
    if dtype is torch.float16 and device is not None and device.type != "cuda":
        raise ConfigError("fp16 autocast needs a CUDA device; use bf16 on the CPU")
    return dtype


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocations on a GPU, the resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
