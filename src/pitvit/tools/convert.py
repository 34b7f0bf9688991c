"""Convert PiT weights between published formats (official, timm, Paddle, safetensors, save_pretrained).

The surgery itself is :func:`pitvit.models.convert_state_dict`; this module reads, checks that the
weights build the model they claim to be, and writes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pitvit.models import model_from_checkpoint, read_weights, save_pretrained, save_weights
from pitvit.models.serialization import format_of
from pitvit.utils.names import CONVERT_FORMATS
from pitvit.utils.errors import ConfigError

__all__ = ["CONVERT_FORMATS", "convert"]

# What `convert` can write: save_weights' formats, and a save_pretrained directory.

def convert(src: str | os.PathLike, dst: str | os.PathLike, *, model: str | None = None,
            format: str | None = None, ema: bool = False, allow_nonfinite: bool = False) -> dict[str, Any]:
    """Read PiT weights in any format and write them in another.

    Args:
        src: a checkpoint file or ``save_pretrained`` directory, in any format :func:`pitvit.load_weights` reads.
        dst: the file (or directory, for ``"pretrained"``) to write.
        model: the registered variant; needed unless ``src`` carries it (pitvit checkpoints, save_pretrained).
        format: one of :data:`CONVERT_FORMATS`; default from ``dst``'s extension, and a path without an
            extension is a ``save_pretrained`` directory.
        ema: convert the EMA weights of a training checkpoint.
        allow_nonfinite: convert weights holding NaN or inf instead of refusing them.

    Returns:
        ``{"src", "detected", "model", "dst", "format", "bytes"}``: what was read and what was written.

    Raises:
        ConfigError: an unknown format, or ``dst`` is ``src`` (converting in place would destroy the source).
    """
    dst = Path(dst)
    fmt = format or ("pretrained" if not dst.suffix else None)
    if fmt is not None and fmt not in CONVERT_FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; valid: {', '.join(CONVERT_FORMATS)}")
    if dst.resolve() == Path(src).resolve():
        raise ConfigError(f"{dst}: the destination is the source; write the converted weights elsewhere")
    weights = read_weights(src, ema=ema)
    # Building the model checks that every tensor fits; classes and input size are the checkpoint's own.
    net = model_from_checkpoint(weights, allow_nonfinite=allow_nonfinite, **({"model": model} if model else {}))
    if fmt == "pretrained":
        save_pretrained(net, dst)
        size = sum(p.stat().st_size for p in dst.iterdir() if p.is_file())
    else:
        save_weights(net, dst, fmt)
        size = dst.stat().st_size
        fmt = fmt or format_of(dst)
    return {"src": str(src), "detected": weights.summary(), "model": net.model_name or "PiT", "dst": str(dst),
            "format": fmt, "bytes": size}
