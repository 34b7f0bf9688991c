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

__all__ = ["capture_rng", "restore_rng", "load_checkpoint", "run_differences", "order_changes"]


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
        MissingPathError: nothing at ``path`` (a ConfigError and a FileNotFoundError).
        CheckpointError: unreadable, unsafe, damaged, or not a pitvit training checkpoint (the message names
            the file).
    """
    from pitvit.models import read_checkpoint
    from pitvit.utils.errors import CheckpointError

    ckpt = read_checkpoint(path)
    if ckpt.get("format") != "pitvit":
        raise CheckpointError(f"{path}: not a pitvit training checkpoint (it has no 'format': 'pitvit' entry)")
    return ckpt


def _preview(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (", ..." if len(names) > n else "")


def run_differences(ckpt: dict[str, Any], model: torch.nn.Module, class_names: list[str],
                    input_size: int) -> list[str]:
    """What makes ``ckpt`` another run's checkpoint than the run these objects would train: another model, other
    classes, another input size, or weights of other names or shapes. Empty when it can be continued."""
    out = []
    name = getattr(model, "model_name", "")
    if ckpt.get("model_name") != name:
        out.append(f"model {ckpt.get('model_name')!r}, this run {name!r}")
    saved = [str(c) for c in ckpt.get("class_names") or []]
    if saved and saved != [str(c) for c in class_names]:
        out.append(f"{len(saved)} classes ({_preview(saved)}), this run {len(class_names)} "
                   f"({_preview([str(c) for c in class_names])})")
    size = ((ckpt.get("pretrained_cfg") or {}).get("input_size") or [None])[-1]
    if size is not None and size != input_size:
        out.append(f"{size} px inputs, this run {input_size} px")
    if not out:  # the same model, classes and size: an architecture change (model.arch) shows in the shapes
        stored, mine = ckpt.get("state_dict") or {}, model.state_dict()
        if stored.keys() != mine.keys():
            out.append(f"weights named otherwise ({_preview(sorted(set(stored) ^ set(mine)))})")
        else:
            shapes = [f"{k} {tuple(stored[k].shape)}, this run {tuple(v.shape)}" for k, v in mine.items()
                      if tuple(stored[k].shape) != tuple(v.shape)]
            if shapes:
                out.append("weights of other shapes: " + _preview(shapes, 2))
    return out


_ORDER_KEYS = {"global_batch_size": "global batch", "num_samples": "training images", "seed": "seed",
               "num_repeats": "repeated augmentation", "shuffle": "shuffling",
               "shard_window": "shard-wise shuffling window"}


def order_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """How the sampler states of a checkpoint and of this run differ in what sets an epoch's batches
    (``EpochBatchSampler.state_dict``): ``["global batch 16 -> 8"]``."""
    return [f"{what} {saved[k]} -> {now[k]}" for k, what in _ORDER_KEYS.items()
            if k in saved and k in now and saved[k] != now[k]]
