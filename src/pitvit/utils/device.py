"""Devices and precisions by name: the one place that turns ``auto``/``cpu``/``cuda[:N]`` into a device and
``auto``/``none``/``bf16``/``fp16`` into an autocast dtype; and how much memory this process used at most.

``auto`` precision (:func:`resolve_amp`) is bf16 where the hardware computes it natively and fp32 elsewhere: a
CPU with AMX or AVX-512 BF16 (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later), a CUDA GPU of
compute capability 8.0 or later. On a Xeon with AMX, pit_ti inference ran about twice as fast in bf16 as in
fp32; on an AVX2-only CPU bf16 is emulated and several times slower than fp32 (README, Speed).
"""
from __future__ import annotations

import contextlib
import logging
import resource
import sys

import torch

from .errors import ConfigError
from .names import AMP_CHOICES, DEVICE_CHOICES

__all__ = ["DEVICE_CHOICES", "AMP_CHOICES", "resolve_device", "resolve_amp", "amp_dtype", "cpu_bf16_support",
           "parse_cpu_flags", "cpu_flags", "peak_memory_mb"]

log = logging.getLogger(__name__)

_AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
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


def parse_cpu_flags(text: str) -> set[str]:
    """The feature flags of the first processor in the text of ``/proc/cpuinfo`` (its ``flags`` line, x86)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_flags(path: str | None = None) -> set[str]:
    """This machine's CPU feature flags from ``/proc/cpuinfo`` (or ``path``); empty where there is none."""
    try:
        with open(path or CPUINFO, encoding="utf-8", errors="replace") as f:
            return parse_cpu_flags(f.read())
    except OSError:
        return set()


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


def _cuda_bf16(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 natively (compute capability 8.0 and later; not emulated)."""
    with torch.cuda.device(device) if device.index is not None else contextlib.nullcontext():
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # a torch before the argument existed answered for native support only
            return bool(torch.cuda.is_bf16_supported())


def resolve_amp(name: str, device: torch.device | str | None = None) -> str:
    """The precision to run in: ``auto`` becomes ``bf16`` where ``device`` computes it natively, else ``none``
    (fp32), and the choice and its reason are logged at INFO; other names are checked and returned as given.

    On a CPU, native means AMX or AVX-512 BF16 (:func:`cpu_bf16_support`); on CUDA, a device that supports bf16
    without emulation (Ampere and later).

    Args:
        name: ``auto``, ``none``, ``bf16`` or ``fp16``.
        device: where the model runs (``None``: the CPU).

    Raises:
        ConfigError: an unknown name, or fp16 on a device other than CUDA.
    """
    device = resolve_device(device or "cpu")
    if name != "auto":
        amp_dtype(name, device)
        return name
    if device.type == "cuda":
        native = _cuda_bf16(device)
        why = f"{torch.cuda.get_device_name(device)} {'computes' if native else 'does not compute'} bf16 natively"
    else:
        support = cpu_bf16_support()
        native = support is not None
        why = (f"this CPU computes bf16 natively: {support}" if native else
               "this CPU has neither AMX nor AVX-512 BF16, so bf16 would be emulated and slower than fp32")
    choice = "bf16" if native else "none"
    log.info("precision auto on %s: %s (%s)", device, "bf16" if native else "fp32", why)
    return choice


def amp_dtype(name: str, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype for ``auto`` (see :func:`resolve_amp`), ``none`` (fp32: ``None``), ``bf16`` or
    ``fp16``; ``device`` (default: the CPU for ``auto``) is where the model runs.

    Raises:
        ConfigError: an unknown name, or fp16 on a device other than CUDA (use bf16 on the CPU).
    """
    if name == "auto":
        name = resolve_amp(name, device)
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
