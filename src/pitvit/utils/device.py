"""Devices by name: the one place that turns ``auto``/``cpu``/``cuda[:N]`` into a device; what a device computes
natively (bf16 on this CPU or GPU, asked by :mod:`pitvit.utils.precision`); and how much memory this process
used at most.
"""
from __future__ import annotations

import contextlib
import os
import resource
import sys

import torch

from .errors import ConfigError
from .names import DEVICE_CHOICES

__all__ = ["DEVICE_CHOICES", "resolve_device", "cpu_bf16_support", "cuda_bf16_support", "parse_cpu_flags",
           "cpu_flags", "cpuinfo", "parse_cpuinfo", "peak_memory_mb"]


CPUINFO = "/proc/cpuinfo"

# (what it is called, torch's probe in torch.cpu, the Linux /proc/cpuinfo flag): the CPU features that compute
# bf16 natively, best first. torch's probes also check that the OS enabled AMX; the flags are the fallback for
# a torch without them.
_CPU_BF16 = (("AMX", "_is_amx_tile_supported", "amx_bf16"),
             ("AVX-512 BF16", "_is_avx512_bf16_supported", "avx512_bf16"))


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


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The ``key: value`` fields of the first processor in the text of ``/proc/cpuinfo``."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() and fields:
            break
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpuinfo(path: str | os.PathLike | None = None) -> dict[str, str]:
    """This machine's first processor in ``/proc/cpuinfo`` (or ``path``) as fields (``flags``, ``vendor_id``,
    ``cpu family``, ``model name``, ``cpu MHz``...); empty where there is none."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        return {}


def parse_cpu_flags(text: str) -> set[str]:
    """The feature flags of the first processor in the text of ``/proc/cpuinfo`` (its ``flags`` line, x86)."""
    return set(parse_cpuinfo(text).get("flags", "").split())


def cpu_flags(path: str | None = None) -> set[str]:
    """This machine's CPU feature flags from ``/proc/cpuinfo`` (or ``path``); empty where there is none."""
    return set(cpuinfo(path).get("flags", "").split())


def cpu_bf16_support() -> str | None:
    """How this CPU computes bf16 natively: ``"AMX"``, ``"AVX-512 BF16"``, or ``None`` (emulated, slow).

    Asks torch's probes (``torch.cpu._is_amx_tile_supported``, ``_is_avx512_bf16_supported``) where this torch
    has them, else reads the flags ``amx_bf16`` and ``avx512_bf16`` of ``/proc/cpuinfo``.
    """
    flags: set[str] | None = None
    for what, probe, flag in _CPU_BF16:
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            found = bool(fn())
        else:
            flags = cpu_flags() if flags is None else flags
            found = flag in flags
        if found:
            return what
    return None


def cuda_bf16_support(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 natively (compute capability 8.0 and later; not emulated)."""
    with torch.cuda.device(device) if device.index is not None else contextlib.nullcontext():
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch before the argument existed answered for native support only
            return bool(torch.cuda.is_bf16_supported())


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process in MiB: CUDA allocations on a GPU, the resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, KiB on Linux
