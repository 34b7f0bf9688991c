"""Image files: which names count as images, and the one way pitvit decodes them.

Every reader goes through :func:`load_image` (the datasets, the GPU pipeline's CPU
fallback, ``pitvit predict``), so an image decodes to the same pixels everywhere. Decoding is eager (Pillow's
``Image.open`` is lazy and a truncated file would fail later, far from its name); ``L`` and ``RGB`` images keep
their mode, 16-bit and 32-bit integer grayscale images are scaled to 8 bits (Pillow's own conversion clips
them, so a 16-bit PNG came out nearly white), and every other mode becomes ``RGB``.
"""
from __future__ import annotations

import io
import os
from typing import NamedTuple

import numpy as np
from PIL import Image

from pitvit.utils.errors import CorruptImageError

__all__ = ["IMAGE_EXTENSIONS", "is_image_file", "SkippedSample", "load_image", "unreadable"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".tif", ".tiff", ".webp", ".gif")

# Pillow's integer grayscale modes: 16-bit (PNG, TIFF, PGM with maxval > 255) and 32-bit, which Pillow also
# gives some 16-bit files; both are read as 16-bit samples
_WIDE_GRAY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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


def _to_8_bit(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as ``L``: ``round(v * 255 / 65535)``, in integers."""
    v = np.asarray(img).astype(np.int64).clip(0, 65535)
    return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), "L")


def _decode(source: str | os.PathLike | bytes) -> Image.Image:
    """Decode fully; raises what Pillow or the file system raise."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
        img.load()  # leaving the block closes the file; the decoded pixels stay with the image
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in _WIDE_GRAY:
        return _to_8_bit(img)
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
