"""Image files: which names count as images, and the one way pitvit decodes them.

Every reader goes through :func:`load_image` (the datasets, the GPU pipeline's CPU
fallback, ``pitvit predict``), so an image decodes to the same pixels everywhere. Decoding is eager (Pillow's
``Image.open`` is lazy and a truncated file would fail later, far from its name); ``L`` and ``RGB`` images keep
their mode, 16-bit and 32-bit integer and float grayscale images are scaled to 8 bits from their range (Pillow's
own conversion clips them, so a 16-bit PNG came out nearly white and a float TIFF in [0, 1] black), and every
other mode becomes ``RGB``. Only regular files are opened: a FIFO named ``x.jpg`` is refused, not waited on.
"""
from __future__ import annotations

import contextlib
import io
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from pitvit.utils.errors import CorruptImageError
from pitvit.utils.io import open_regular

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "SkippedSample", "load_image", "unreadable"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Pillow's wide grayscale modes: 16-bit (PNG, TIFF, PGM with maxval > 255), 32-bit integer (which Pillow also
# gives some 16-bit files) and 32-bit float (TIFF); see _scaled
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")


class SkippedSample(NamedTuple):
    """Returned in place of ``(image, label)`` for an image that cannot be decoded; the loader drops and counts it.

    Attributes:
        path: the file.
        reason: why it could not be read (the decoder's error type and message).
    """

    path: str
    reason: str


def is_image_file(name: str) -> bool:
    """Whether a file name has one of :data:`IMAGE_EXTENSIONS` (any case) and is not hidden."""
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def _scaled(img: Image.Image) -> Image.Image:
    """A wide grayscale image (16/32-bit integer, 32-bit float) as ``L``, scaled from its range, not clipped.

    The range is the mode's: ``I;16*`` is ``0..65535``; ``I`` (32-bit signed, which Pillow also gives 16-bit PNGs)
    is ``0..65535`` when every value fits it, else ``0..2**31-1``; ``F`` is ``0..1`` when every value fits it
    (float TIFFs, as scientific and medical tools write them), else ``0..255``, else ``0..65535``. Values are
    mapped with ``round(v * 255 / top)``. Negative or non-finite values, or floats above 65535, have no range
    to scale from: the file is refused (``ValueError``, so it is skipped and counted like any undecodable one).
    """
    v = np.asarray(img)
    if img.mode == "F":
        v = v.astype(np.float64)
        if not np.isfinite(v).all():
            raise ValueError("mode F image with non-finite values (NaN or inf) cannot be shown as 8 bits")
        tops = (1.0, 255.0, 65535.0)
    else:
        v = v.astype(np.int64)
        tops = (65535,) if img.mode.startswith("I;16") else (65535, 2 ** 31 - 1)
    lo, hi = (v.min(), v.max()) if v.size else (0, 0)
    top = next((t for t in tops if hi <= t), None)
    if lo < 0 or top is None:
        raise ValueError(f"mode {img.mode} image with values in [{lo}, {hi}], outside every range pitvit scales "
                         f"from ({', '.join(f'0..{t:g}' for t in tops)}); convert it to 8 or 16 bits first")
    if img.mode == "F":
        out = np.floor(v * (255.0 / top) + 0.5)
    else:
        out = (v * 255 + top // 2) // top
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "L")


def _decode(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode fully; raises what Pillow or the file system raise (a FIFO, device or folder is refused unopened)."""
    with contextlib.ExitStack() as stack:
        f = io.BytesIO(source) if isinstance(source, bytes) else stack.enter_context(open_regular(source))
        with Image.open(f) as img:
            img.load()  # the decoded pixels stay with the image once the file is closed
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in _WIDE_GRAY:
        return _scaled(img)
    return img.convert("RGB")


# What Pillow raises for data it cannot decode: OSError (UnidentifiedImageError, "image file is truncated", and a
# file deleted mid-run), SyntaxError (some plugins), ValueError, and DecompressionBombError for an image of more
# than twice Image.MAX_IMAGE_PIXELS.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def unreadable(path: str, error: BaseException, strict: bool) -> SkippedSample:
    """The record of a file that could not be read, or, when ``strict``, the :class:`CorruptImageError` naming it.

    Raises:
        CorruptImageError: when ``strict``.
    """
    reason = f"{type(error).__name__}: {error}"
    if isinstance(error, Image.DecompressionBombError):
        reason += " (raise PIL.Image.MAX_IMAGE_PIXELS to read it)"
    if strict:
        raise CorruptImageError(f"cannot read image {path}: {reason}") from error
    return SkippedSample(str(path), reason)


def load_image(source: str | os.PathLike | bytes, strict: bool, *,
               name: str | None = None) -> Image.Image | SkippedSample:
    """Decode an image file (its path, or its content) to an ``L`` or ``RGB`` image.

    Args:
        source: the file's path, or its bytes.
        strict: an undecodable file raises instead of giving a :class:`SkippedSample`.
        name: the file's name for messages (default: ``source`` when it is a path).

    Returns:
        The image, or a :class:`SkippedSample` with the reason when the file cannot be decoded.

    Raises:
        CorruptImageError: the file cannot be decoded and ``strict`` is set; the message names it and says why.
    """
    try:
        return _decode(source)
    except _DECODE_ERRORS as e:
        return unreadable(name or ("<image bytes>" if isinstance(source, bytes) else os.fspath(source)), e, strict)
