"""The index of samples held inside container files (tar shards, archives, Parquet files), built once and cached.

An index says, for every sample in order, which file holds it, where (a tar member's byte offset and size, or a
Parquet row group and row), its label and its name. Building one reads every tar header (or every Parquet
footer and label column) once; afterwards a sample is one ``pread``. The index is cached as an ``.npz`` (plain
arrays, read with ``allow_pickle=False``) beside the data when that folder is writable, else in
``$XDG_CACHE_HOME/pitvit/index`` (``~/.cache/pitvit/index`` when unset). It is keyed by the files' paths,
sizes and modification times, and by how the samples were read (format, columns, class list): a change to any
of them rebuilds it.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pitvit.utils.errors import OutputError
from pitvit.utils.io import write_bytes

__all__ = ["SampleIndex", "cached_index", "cache_dir", "file_stats"]

log = logging.getLogger(__name__)

_VERSION = 1


@dataclass
class SampleIndex:
    """Samples in order: ``file[i]`` indexes ``files``; ``offset``/``size`` locate its bytes (tar) or its row
    group/row (Parquet); ``label[i]``; ``name[i]`` (bytes: the member's name, for messages)."""

    files: list[str]
    file: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    label: np.ndarray
    name: np.ndarray
    classes: list[str]
    meta: dict[str, Any]

    def __len__(self) -> int:
        return len(self.label)

    @classmethod
    def from_rows(cls, files: Sequence[str], rows: list[tuple[int, int, int, int, str]], classes: Sequence[str],
                  meta: dict[str, Any] | None = None) -> SampleIndex:
        """From ``(file, offset, size, label, name)`` rows."""
        f, o, s, lab, n = zip(*rows) if rows else ((), (), (), (), ())
        return cls(list(files), np.asarray(f, np.int32), np.asarray(o, np.int64), np.asarray(s, np.int64),
                   np.asarray(lab, np.int64), np.asarray([x.encode() for x in n], dtype=bytes),
                   list(classes), dict(meta or {}))

    def shard_sizes(self) -> list[int]:
        """Samples per file, in file order (the files hold consecutive runs of samples)."""
        return np.bincount(self.file, minlength=len(self.files)).tolist() if len(self.files) else []

    def to_bytes(self, key: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        header = json.dumps({"version": _VERSION, "key": key, "files": self.files, "classes": self.classes,
                             "meta": self.meta})
        np.savez(buf, header=np.frombuffer(header.encode(), np.uint8), file_id=self.file, offset=self.offset,
                 size=self.size, label=self.label, name=self.name)
        return buf.getvalue()

    @classmethod
    def read(cls, path: Path, key: dict[str, Any]) -> SampleIndex | None:
        """The index stored at ``path`` if it exists, is readable and was built for ``key``; else ``None``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                header = json.loads(z["header"].tobytes().decode())
                if header.get("version") != _VERSION or header.get("key") != key:
                    return None
                return cls(header["files"], z["file_id"], z["offset"], z["size"], z["label"], z["name"],
                           header["classes"], header["meta"])
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            return None


def file_stats(files: Sequence[str]) -> list[list[Any]]:
    """``[path, size, mtime_ns]`` of each file: what an index is keyed by."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append([os.path.abspath(f), st.st_size, st.st_mtime_ns])
    return out


def cache_dir() -> Path:
    """Where indexes go when the data's folder is not writable: ``$XDG_CACHE_HOME/pitvit/index``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pitvit" / "index"


def cached_index(files: Sequence[str], what: dict[str, Any], build: Callable[[], SampleIndex]) -> SampleIndex:
    """The index of ``files`` read as ``what`` says (format and options), from the cache or built and cached.

    The cache file, ``.pitvit-index-<hash>.npz``, goes in the folder of the first file if it is writable, else
    in :func:`cache_dir`; a failure to write it is logged and the run goes on with the index in memory.
    """
    key = {"what": what, "files": file_stats(files)}
    digest = hashlib.sha256(json.dumps({"what": what, "files": [s[0] for s in key["files"]]}).encode())
    name = f".pitvit-index-{digest.hexdigest()[:16]}.npz"
    beside = Path(os.path.abspath(files[0])).parent / name
    elsewhere = cache_dir() / name[1:]
    for candidate in (beside, elsewhere):
        found = SampleIndex.read(candidate, key)
        if found is not None:
            return found
    log.info("indexing %d file(s) from %s (once: the index is cached and rebuilt only when they change)",
             len(files), files[0])
    index = build()
    data = index.to_bytes(key)
    targets = [beside, elsewhere] if os.access(beside.parent, os.W_OK) else [elsewhere]
    for target in targets:
        try:
            write_bytes(target, data)
            log.info("indexed %d samples of %d file(s) in %s", len(index), len(files), target)
            break
        except OutputError as e:
            log.warning("could not cache the index (%s); it is rebuilt next time", e)
    return index
