"""Precisions by name, and the one autocast context every forward pass of pitvit runs under.

The vocabulary is :data:`pitvit.utils.names.PRECISIONS` (``fp32``, ``bf16``, ``fp16``; ``none`` is accepted as
the older spelling of ``fp32``) plus ``auto``. ``auto`` (:func:`resolve_amp`) is bf16 where the hardware
computes it natively and fp32 elsewhere: a CPU with AMX or AVX-512 BF16 (Intel Cooper Lake, Sapphire Rapids and
later; AMD Zen 4 and later), a CUDA GPU of compute capability 8.0 or later. On a Xeon with AMX, pit_ti inference
ran about twice as fast in bf16 as in fp32; on an AVX2-only CPU bf16 is emulated and several times slower than
fp32 (README, Speed).
"""
from __future__ import annotations

import logging

import torch

from .device import cpu_bf16_support, cuda_bf16_support, resolve_device
from .errors import ConfigError
from .names import AMP_CHOICES, PRECISION_ALIASES, PRECISIONS

__all__ = ["resolve_amp", "amp_dtype", "autocast", "precision_name"]

log = logging.getLogger("pitvit.utils.device")  # the logger the precision lines have always come from


def _canonical(name: str, device: torch.device | None) -> str:
    """``name`` in the vocabulary's spelling, checked against ``device`` (``None``: any)."""
    name = PRECISION_ALIASES.get(name, name)
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(AMP_CHOICES)}")
    devices = PRECISIONS[name][1]
    if device is not None and device.type not in devices:
        raise ConfigError(f"{name} autocast needs a {' or '.join(d.upper() for d in devices)} device; use bf16 "
                          f"on the {device.type.upper()}")
    return name


def resolve_amp(name: str, device: torch.device | str | None = None) -> str:
    """The precision to run in, by its name in the vocabulary (``fp32``, ``bf16``, ``fp16``): ``auto`` becomes
    ``bf16`` where ``device`` computes it natively, else ``fp32``, and the choice and its reason are logged at
    INFO; other names are checked (``none`` becomes ``fp32``).

    On a CPU, native means AMX or AVX-512 BF16 (:func:`~pitvit.utils.device.cpu_bf16_support`); on CUDA, a
    device that supports bf16 without emulation (Ampere and later).

    Args:
        name: one of :data:`~pitvit.utils.names.AMP_CHOICES`.
        device: where the model runs (``None``: the CPU).

    Raises:
        ConfigError: an unknown name, or a precision the device does not compute (fp16 on a CPU).
    """
    device = resolve_device(device or "cpu")
    if name != "auto":
        return _canonical(name, device)
    if device.type == "cuda":
        native = cuda_bf16_support(device)
        why = f"{torch.cuda.get_device_name(device)} {'computes' if native else 'does not compute'} bf16 natively"
    else:
        support = cpu_bf16_support()
        native = support is not None
        why = (f"this CPU computes bf16 natively: {support}" if native else
               "this CPU has neither AMX nor AVX-512 BF16, so bf16 would be emulated and slower than fp32")
    choice = "bf16" if native else "fp32"
    log.info("precision auto on %s: %s (%s)", device, choice, why)
    return choice


def amp_dtype(name: str, device: torch.device | None = None) -> torch.dtype | None:
    """The autocast dtype of a precision name (``None`` for fp32: no autocast); ``auto`` is resolved for
    ``device`` (default: the CPU) as :func:`resolve_amp` does.

    Raises:
        ConfigError: an unknown name, or a precision ``device`` does not compute (use bf16 on the CPU).
    """
    name = resolve_amp(name, device) if name == "auto" else _canonical(name, device)
    dtype = PRECISIONS[name][0]
    return None if dtype is None else getattr(torch, dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    """The vocabulary's name of an autocast dtype (``None``: ``fp32``)."""
    for name, (torch_name, _) in PRECISIONS.items():
        if (None if torch_name is None else getattr(torch, torch_name)) == dtype:
            return name
    raise ValueError(f"no precision computes in {dtype}")


def autocast(device: torch.device | str, dtype: torch.dtype | None) -> torch.autocast:
    """The autocast context of every forward pass: ``dtype`` on ``device``'s type, or off for ``None`` (fp32).

    The one place pitvit enters :class:`torch.autocast`: training steps, distillation's teacher, evaluation,
    prediction and benchmarks all go through it.
    """
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.autocast(kind, dtype=dtype or torch.float32, enabled=dtype is not None)
