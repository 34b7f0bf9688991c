"""A dataset of samples read from inside container files through a :class:`~.index.SampleIndex`.

Each sample is decoded by :func:`pitvit.data.images.load_image` from its bytes, like a file of an image
folder, so the same images give the same pixels whichever layout holds them; an undecodable member is a
:class:`~pitvit.data.images.SkippedSample` named ``FILE:MEMBER`` (or a ``CorruptImageError`` when strict).
Files are opened lazily in each process (worker processes open their own) and read with ``os.pread``, which
keeps no file position to share.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from ..images import SkippedSample, load_image, unreadable
from .index import SampleIndex

__all__ = ["RecordDataset"]


class RecordDataset:
    """Samples inside files: ``(transform(PIL image), label)``, with ``.classes``, ``.targets``,
    ``read_bytes(i)``, ``sample_name(i)`` and ``shard_sizes`` (samples per file, for ``data.shuffle=shards``).

    Args:
        index: where each sample is.
        transform: applied to the PIL image.
        strict_images: an undecodable member raises instead of being skipped.
        kind: the format's name (for ``repr``).
    """

    def __init__(self, index: SampleIndex, transform: Callable[[Any], Any] | None = None, *,
                 strict_images: bool = False, kind: str = "records") -> None:
        self.index = index
        self.classes = list(index.classes)
        self.transform = transform
        self.strict_images = strict_images
        self.kind = kind
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # each process opens its own files
        return state

    @property
    def targets(self) -> list[int]:
        return self.index.label.tolist()

    @property
    def shard_sizes(self) -> list[int]:
        return self.index.shard_sizes()

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(name, label)`` pairs, as an image folder's ``(path, label)``."""
        return [(self.sample_name(i), int(t)) for i, t in enumerate(self.index.label)]

    def __len__(self) -> int:
        return len(self.index)

    def sample_name(self, i: int) -> str:
        """``FILE:MEMBER`` (tar) or ``FILE:row N`` (Parquet)."""
        return f"{self.index.files[self.index.file[i]]}:{self.index.name[i].decode()}"

    def _handle(self, f: int) -> Any:
        if self._pid != os.getpid():  # inherited through fork: these belong to the parent
            self._handles, self._pid = {}, os.getpid()
        h = self._handles.get(f)
        if h is None:
            h = self._handles[f] = self.open(f)
        return h

    def open(self, f: int) -> Any:
        """A handle on file ``f`` of the index (here a file descriptor, for ``os.pread``)."""
        return os.open(self.index.files[f], os.O_RDONLY)

    def read_bytes(self, i: int) -> bytes:
        """The sample's encoded bytes (a tar member's content). Raises ``OSError`` when they cannot be read."""
        size, offset = int(self.index.size[i]), int(self.index.offset[i])
        data = os.pread(self._handle(int(self.index.file[i])), size, offset)
        if len(data) != size:
            raise OSError(f"file ends inside the member ({len(data)} of {size} bytes)")
        return data

    def __getitem__(self, i: int) -> tuple[Any, int] | SkippedSample:
        try:
            data = self.read_bytes(i)
        except OSError as e:
            return unreadable(self.sample_name(i), e, self.strict_images)
        img = load_image(data, self.strict_images, name=self.sample_name(i))
        if isinstance(img, SkippedSample):
            return img
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.index.label[i])

    def __repr__(self) -> str:
        return f"RecordDataset(kind={self.kind!r}, files={len(self.index.files)}, classes={len(self.classes)}, " \
               f"n={len(self)})"
