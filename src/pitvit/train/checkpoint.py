"""Training checkpoints: plain data (tensors, numbers, strings, lists, dicts), written atomically by
:func:`pitvit.utils.io.save_torch`.

A checkpoint loads with ``torch.load(path, weights_only=True)``: random-number states are stored as tensors and
lists, never as numpy objects or custom classes. The layout is the one in ``docs/DESIGN.md``.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "load_checkpoint"]


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain data."""
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [str(np_name), torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss),
                  float(np_gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    if "python" in state:
        version, s, gauss = state["python"]
        random.setstate((version, tuple(s), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A pitvit training checkpoint, read on the CPU by the one safe reader (``pitvit.models.read_checkpoint``:
    no code runs, content hashes are checked).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: unreadable, unsafe, damaged, or not a pitvit training checkpoint (the message names
            the file).
    """
    from pitvit.models import read_checkpoint
    from pitvit.utils.errors import CheckpointError

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != "pitvit":
        raise CheckpointError(f"{path}: not a pitvit training checkpoint (it has no 'format': 'pitvit' entry)")
    return ckpt
