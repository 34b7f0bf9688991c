"""Errors raised by :mod:`pitvit.data`, and the marker a dataset returns for an unreadable image."""
from __future__ import annotations

__all__ = ["DatasetError", "CorruptImageError", "SkippedSample"]


class DatasetError(RuntimeError):
    """A dataset cannot be built: a missing folder or file, an empty class, a malformed list or IDX file.

    Raised while the dataset is constructed, so before any training step runs.
    """


class CorruptImageError(DatasetError):
    """An image could not be decoded and ``strict_images=True`` made that fatal."""


class SkippedSample:
    """Returned by a dataset in place of ``(image, label)`` when an image cannot be decoded.

    The loader's collate function drops it and reports it (see :func:`pitvit.data.build_loader`).

    Attributes:
        path: the file that failed.
        reason: the decoder's error, as text.
    """

    __slots__ = ("path", "reason")

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason

    def __reduce__(self):  # plain pickling across worker processes, despite __slots__
        return (SkippedSample, (self.path, self.reason))

    def __repr__(self) -> str:
        return f"SkippedSample({self.path!r}, {self.reason!r})"
