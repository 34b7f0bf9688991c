"""Tar files read in place: member offsets with the standard library's ``tarfile`` (headers only, the data is
skipped by seeking), and WebDataset shards (``KEY.jpg`` + ``KEY.cls``; lists of shards by brace pattern).

A WebDataset sample is the group of members sharing a *key*: the member's path up to the first dot of its file
name (``a/n01440764_1.JPEG`` + ``a/n01440764_1.cls``; as in the ``webdataset`` library). Its image is the member
whose extension is an image's (``jpg``, ``jpeg``, ``png``, ``webp``...), its label the integer written in
``cls``; other members (``json``, ``txt``) are ignored. Samples keep the shards' order and, within a shard,
the order of the image members.
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path
from typing import IO, Sequence

from pitvit.utils.errors import DatasetError
from pitvit.utils.logs import Progress

from ..images import IMAGE_EXTENSIONS
from .index import SampleIndex, cached_index

__all__ = ["tar_members", "expand_braces", "shard_files", "wds_index", "read_classes_file", "CLASSES_FILE"]

CLASSES_FILE = "classes.txt"
_BLOCK = 512
_IMAGE_EXT = {e.lstrip(".") for e in IMAGE_EXTENSIONS}


def tar_members(path: str, fileobj: IO[bytes] | None = None, size: int | None = None,
                base: int = 0) -> list[tuple[str, int, int]]:
    """``(name, offset of its data, size)`` of each regular file in a tar, in the archive's order.

    Args:
        path: the tar (named in errors; opened unless ``fileobj`` is given).
        fileobj, size, base: a tar inside another file: its file object, length, and the offset of its first
            byte in the outer file (added to every offset).

    Raises:
        DatasetError: not a tar, or cut short (a member's data or the end-of-archive blocks missing), naming
            the file and the last member read.
    """
    out: list[tuple[str, int, int]] = []
    try:
        if size is None:
            size = os.path.getsize(path)
        with tarfile.open(path if fileobj is None else None, mode="r:", fileobj=fileobj) as tf:
            for m in tf:
                if m.isfile():
                    out.append((m.name, base + m.offset_data, m.size))
                end = m.offset_data + (-(-m.size // _BLOCK) * _BLOCK if m.isfile() else 0)
    except (tarfile.TarError, OSError) as e:
        if out:
            raise DatasetError(f"{path} is truncated or damaged after member {out[-1][0]} ({e}); copy it again") from e
        raise DatasetError(f"{path}: cannot read it as a tar ({e})") from e
    if out:
        # tarfile takes a file cut at a header for the end of the archive: every writer ends a tar with two zero
        # blocks, so fewer bytes than that after the last member's data means the file was cut short
        if end + 2 * _BLOCK > size:
            raise DatasetError(f"{path} is truncated: it ends inside or just after member {out[-1][0]} "
                               f"({size} bytes); copy it again")
    return out


def expand_braces(pattern: str) -> list[str]:
    """Shell-style braces: ``a-{000..002}.tar`` (zero-padded ranges) and ``{train,val}``, nested in order."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        parts = body.split(",")
    return [x for p in parts for x in expand_braces(pattern[:m.start()] + p + pattern[m.end():])]


def shard_files(spec: str, suffix: str) -> list[str]:
    """The files a spec names: a folder (its ``*{suffix}`` files, sorted), a brace pattern, or a glob.

    Raises:
        DatasetError: nothing matches, or a file a brace pattern names does not exist.
    """
    if os.path.isdir(spec):
        files = sorted(str(p) for p in Path(spec).iterdir() if p.name.endswith(suffix) and not p.name.startswith("."))
    elif "{" in spec:
        files = expand_braces(spec)
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise DatasetError(f"{len(missing)} of the {len(files)} files named by {spec} do not exist, "
                               f"e.g. {missing[:3]}")
    else:
        files = sorted(glob.glob(spec))
    if not files:
        raise DatasetError(f"no {suffix} files found at {spec}")
    return files


def read_classes_file(folders: Sequence[str]) -> list[str] | None:
    """Class names from the first ``classes.txt`` (one name per line, line i names label i) in ``folders``."""
    for d in folders:
        p = Path(d) / CLASSES_FILE
        if p.is_file():
            return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return None


def _split_key(name: str) -> tuple[str, str]:
    folder, base = os.path.split(name)
    stem, _, ext = base.partition(".")
    return os.path.join(folder, stem), ext.lower()


def _shard_rows(f: int, path: str, classes: list[str] | None) -> list[tuple[int, int, int, int, str]]:
    members = tar_members(path)
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, tuple[str, int, int]] = {}
    for name, offset, size in members:
        key, ext = _split_key(name)
        if ext == "cls":
            labels[key] = (name, offset, size)
        elif ext.rsplit(".", 1)[-1] in _IMAGE_EXT and key not in images:
            images[key] = (name, offset, size)
    rows = []
    with open(path, "rb") as fh:
        for key, (name, offset, size) in images.items():
            if key not in labels:
                raise DatasetError(f"{path}: member {name} has no label ({key}.cls is missing)")
            cls_name, cls_offset, cls_size = labels[key]
            fh.seek(cls_offset)
            text = fh.read(cls_size).decode(errors="replace").strip()
            try:
                label = int(text)
            except ValueError:
                raise DatasetError(f"{path}: member {cls_name} holds {text[:40]!r}, not an integer label") from None
            if label < 0 or (classes is not None and label >= len(classes)):
                n = "" if classes is None else f" (classes.txt names {len(classes)} classes)"
                raise DatasetError(f"{path}: member {cls_name}: label {label} is out of range{n}")
            rows.append((f, offset, size, label, name))
    return rows


def wds_index(spec: str) -> SampleIndex:
    """The samples of the WebDataset shards ``spec`` names (a folder of ``.tar`` files or a brace pattern).

    Class names come from ``classes.txt`` in the shards' folder or the one above it; without it they are the
    label numbers ``"0" .. str(max label)``.

    Raises:
        DatasetError: a shard is unreadable or truncated, a member has no label or one out of range.
    """
    files = shard_files(spec, ".tar")
    folder = os.path.dirname(os.path.abspath(files[0]))
    classes = read_classes_file([folder, os.path.dirname(folder)])

    def build() -> SampleIndex:
        meter = Progress(len(files), "indexing shards", interval=100, bar=False)
        rows: list = []
        for f, p in enumerate(files):
            rows += _shard_rows(f, p, classes)
            meter.update(f + 1, len(rows), "shards")
        if not rows:
            raise DatasetError(f"the shards at {spec} hold no image with a label")
        names = classes or [str(i) for i in range(max(r[3] for r in rows) + 1)]
        return SampleIndex.from_rows(files, rows, names, {"format": "wds"})

    return cached_index(files, {"format": "wds", "classes": classes}, build)
