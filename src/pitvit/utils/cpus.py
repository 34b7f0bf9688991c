"""How many CPU cores this process may use, and what those cores can compute at most in fp32.

:func:`usable_cpus` is the default thread count of every inference backend (PyTorch, ONNX Runtime, OpenVINO):
the cores in this process's affinity mask (``os.sched_getaffinity``: ``taskset``, a batch scheduler's cpuset),
further limited by a cgroup CPU quota (a container started with ``--cpus``), so that no backend starts more
threads than the machine gives it and the backends are compared with the same number.

:func:`fp32_peak` is the machine's fp32 FLOP limit as far as Linux tells it: cores x fp32 lanes of the widest
FMA in the CPU flags x FMAs issued per cycle x 2 (a multiply and an add) x the maximum frequency. The FMAs per
cycle come from the vendor and family in ``/proc/cpuinfo`` (:func:`fma_per_cycle`): two on AMD Zen 5 (two
512-bit pipes), one 512-bit FMA on Zen 4 (two 256-bit pipes), two 256-bit on Zen 2 and 3 and on Intel cores
since Haswell, two 512-bit on Intel cores with AVX-512 (some Xeon Silver and Bronze parts have one, and reach
half); one where the CPU is not known.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from .device import cpuinfo

__all__ = ["usable_cpus", "cgroup_cpu_limit", "fp32_peak", "Fp32Peak", "cpu_identity", "fma_per_cycle"]

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_limit(root: str | os.PathLike | None = None) -> float | None:
    """The CPU quota of this process's cgroup in cores (``quota / period``), or ``None`` without a quota.

    Reads cgroup v2's ``cpu.max`` (``"max 100000"`` means none), else v1's ``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us`` (``-1`` means none).
    """
    base = Path(root) if root is not None else CGROUP_ROOT
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The cores this process may run on: its affinity mask, limited by the cgroup quota (rounded up), >= 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota is not None:
        n = min(n, max(1, math.ceil(quota)))
    return max(1, n)


@dataclass(frozen=True)
class Fp32Peak:
    """The fp32 FLOP limit of ``cores`` cores, and how it was found (``how``)."""

    flops: float
    cores: int
    lanes: int
    ghz: float
    how: str


def _max_ghz() -> tuple[float | None, str]:
    try:
        khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text())
        return khz / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        return float(cpuinfo()["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    except (KeyError, ValueError):
        return None, ""


def cpu_identity(path: str | os.PathLike | None = None) -> tuple[str, int, int]:
    """``(vendor_id, cpu family, model)`` of the first CPU in ``/proc/cpuinfo`` (or ``path``; ``("", 0, 0)`` where
    unknown)."""
    fields = cpuinfo(path)
    try:
        return fields.get("vendor_id", ""), int(fields.get("cpu family", "0")), int(fields.get("model", "0"))
    except ValueError:
        return fields.get("vendor_id", ""), 0, 0


def fma_per_cycle(cpu: tuple[str, int, int], flags: set[str]) -> tuple[int, str]:
    """How many FMAs of the widest width in ``flags`` a core of ``cpu`` (:func:`cpu_identity`) issues per cycle,
    and why (its microarchitecture, for the table's header)."""
    vendor, family, model = cpu
    wide = "avx512f" in flags
    if vendor == "AuthenticAMD":
        if family >= 0x1A:
            return 2, "AMD Zen 5 or later: two 512-bit FMA pipes"
        if family == 0x19:
            return (1, "AMD Zen 4: two 256-bit pipes, one 512-bit FMA") if wide else (2, "AMD Zen 3: two 256-bit "
                                                                                       "FMA pipes")
        if family == 0x17:
            return (2, "AMD Zen 2: two 256-bit FMA pipes") if model >= 0x30 else (1, "AMD Zen 1: 128-bit pipes")
    if vendor == "GenuineIntel" and family == 6:
        return 2, ("Intel with AVX-512: two 512-bit FMA units (one on some Xeon Silver and Bronze)" if wide
                   else "Intel since Haswell: two 256-bit FMA ports")
    return 1, "CPU not known here: one FMA per cycle assumed"


def fp32_peak(cores: int, flags: set[str], cpu: tuple[str, int, int] | None = None) -> Fp32Peak | None:
    """The fp32 FLOP/s limit of ``cores`` cores with these CPU ``flags`` (``/proc/cpuinfo``) of the CPU ``cpu``
    (default: this machine's, :func:`cpu_identity`), or ``None`` where the frequency or the vector width cannot be
    read (not x86, no frequency exposed)."""
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags and "fma" in flags:
        lanes, isa = 8, "AVX2"
    else:
        return None
    ghz, source = _max_ghz()
    if not ghz:
        return None
    per_cycle, why = fma_per_cycle(cpu_identity() if cpu is None else cpu, flags)
    flops = cores * lanes * per_cycle * 2 * ghz * 1e9
    how = (f"{cores} cores x {lanes} fp32 lanes ({isa}) x {per_cycle} FMA per cycle ({why}) x 2 FLOP x "
           f"{ghz:.2f} GHz ({source})")
    if source.startswith("/proc"):  # the clock the OS last saw, often the base clock of a virtual machine
        how += "; cores that boost above that clock exceed 100% of this peak"
    return Fp32Peak(flops, cores, lanes, ghz, how)
