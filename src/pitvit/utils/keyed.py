"""Random numbers as a function of integer keys, computed on any device: a counter-based hash in torch's
integer ops (two rounds of Wellons' ``lowbias32`` per 32-bit word), so a draw depends on (seed, step, sample,
...) only, never on a generator's history, and CPU and CUDA give the same bits.

:func:`pitvit.utils.seed.mix_seed` turns a few integers into a seed on the host; this module turns a tensor of
keys (one per sample) into bits or uniforms on the device, without a per-sample loop.
"""
from __future__ import annotations

import torch

__all__ = ["hash_keys", "uniform_from_keys"]

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2**32 for x < 2**32 without ever leaving int64's range: c is split into 16-bit halves.
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def hash_keys(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """32 pseudo-random bits (int64 in ``[0, 2**32)``) for each non-negative int64 key, salted by ``salt``
    (any integer below ``2**63``). The same key and salt give the same bits on every device."""
    keys = keys.to(torch.int64)
    h = _mix32(torch.full_like(keys, (salt & _M32) ^ 0x243F6A88))
    h = _mix32(h ^ ((salt >> 32) & _M32))
    h = _mix32(h ^ (keys & _M32))
    return _mix32(h ^ (keys >> 32))


def uniform_from_keys(keys: torch.Tensor, salt: int) -> torch.Tensor:
    """A float32 uniform in ``[0, 1)`` per key (24 bits, exact in float32: equal on every device)."""
    return (hash_keys(keys, salt) >> 8).to(torch.float32) * (1.0 / (1 << 24))
