"""The one seed hash: integers (seed, epoch, index, ...) to a 63-bit seed, stable across processes,
platforms and Python versions. Sample augmentation, epoch orders and per-step randomness all derive from it,
so a run's randomness is a function of where it is, never of what ran before."""
from __future__ import annotations

import hashlib
import struct

__all__ = ["mix_seed"]


def mix_seed(*values: int) -> int:
    """A 63-bit seed from integers (BLAKE2b of their little-endian int64 encoding)."""
    data = struct.pack(f"<{len(values)}q", *values)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1
