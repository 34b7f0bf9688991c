"""ImageNet-1k (ILSVRC 2012) read from its original archives, without extracting them.

- ``ROOT/ILSVRC2012_img_train.tar``: one inner tar per class (``n01440764.tar``), read in place (offsets of
  the inner tars' members are offsets into the outer file).
- ``ROOT/ILSVRC2012_img_val.tar``: the 50,000 ``ILSVRC2012_val_%08d.JPEG`` of one folder; their labels come
  from the devkit.
- ``ROOT/ILSVRC2012_devkit_t12.tar.gz`` (or the folder it extracts to): ``data/meta.mat`` (the ``synsets``
  struct array: ``ILSVRC2012_ID``, ``WNID``, ``words``, ``num_children``...) read with ``scipy.io.loadmat``,
  and ``data/ILSVRC2012_validation_ground_truth.txt`` (line i: the ILSVRC2012_ID of validation image i).

Class order is the sorted WordNet IDs of the 1,000 leaf synsets, the order of the extracted class folders
(``train/n01440764/...``), so a model trained from the archives and one trained from the folders agree on
label indices; within a class, samples are sorted by file name, as an image folder sorts them.
"""
from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path
from typing import Any

from pitvit.utils.errors import DatasetError
from pitvit.utils.extras import require
from pitvit.utils.logs import Progress

from .index import SampleIndex, cached_index
from .tars import tar_members

__all__ = ["TRAIN_TAR", "VAL_TAR", "DEVKIT", "has_imagenet_archive", "imagenet_index", "read_devkit"]

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"
DEVKIT = "ILSVRC2012_devkit_t12"
_META = "data/meta.mat"
_GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"
_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d+)\.JPEG$", re.IGNORECASE)


def _archive(root: Path, split: str) -> Path | None:
    name = {"train": TRAIN_TAR, "val": VAL_TAR}.get(split)
    return root / name if name and (root / name).is_file() else None


def has_imagenet_archive(root: str | os.PathLike, split: str) -> bool:
    """Whether ``root`` holds the original archive of ``split`` (``train`` or ``val``)."""
    return _archive(Path(root), split) is not None


def _devkit_files(root: Path) -> tuple[str, bytes, bytes] | None:
    """``(where, meta.mat bytes, ground truth bytes)`` from the devkit archive or folder in ``root``."""
    folder = root / DEVKIT
    if (folder / _META).is_file():
        gt = folder / _GROUND_TRUTH
        return str(folder), (folder / _META).read_bytes(), gt.read_bytes() if gt.is_file() else b""
    for name in (f"{DEVKIT}.tar.gz", f"{DEVKIT}.tar"):
        path = root / name
        if path.is_file():
            found: dict[str, bytes] = {}
            try:
                with tarfile.open(path) as tf:
                    for m in tf:
                        for want in (_META, _GROUND_TRUTH):
                            if m.isfile() and m.name.endswith(want):
                                found[want] = tf.extractfile(m).read()
            except (tarfile.TarError, OSError, EOFError) as e:
                raise DatasetError(f"{path}: cannot read the devkit archive ({e})") from e
            if _META not in found:
                raise DatasetError(f"{path} holds no {_META}; expected ImageNet's {DEVKIT} archive")
            return str(path), found[_META], found.get(_GROUND_TRUTH, b"")
    return None


def read_devkit(root: str | os.PathLike) -> tuple[list[str], dict[int, str], list[int], str] | None:
    """``(sorted leaf WNIDs, ILSVRC2012_ID -> WNID, validation ground truth IDs, where)``, or ``None`` without a
    devkit in ``root``.

    Raises:
        MissingExtraError: scipy is missing (``pip install 'pitvit[imagenet]'``).
        DatasetError: the devkit is malformed.
    """
    files = _devkit_files(Path(root))
    if files is None:
        return None
    where, meta, gt = files
    loadmat = require("scipy.io", "reading ImageNet's devkit (meta.mat)").loadmat
    try:
        synsets = loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, IndexError) as e:
        raise DatasetError(f"{where}: {_META} is not ImageNet's synset table ({type(e).__name__}: {e})") from e
    if not ids:
        raise DatasetError(f"{where}: {_META} lists no leaf synset")
    try:
        truth = [int(line) for line in gt.decode().split()]
    except ValueError:
        raise DatasetError(f"{where}: {_GROUND_TRUTH} holds something other than class IDs") from None
    return sorted(ids.values()), ids, truth, where


def _train_rows(path: Path, wnids: list[str] | None, devkit: str | None) -> tuple[list, list[str]]:
    inner = [(n, o, s) for n, o, s in tar_members(str(path)) if n.lower().endswith(".tar")]
    if not inner:
        raise DatasetError(f"{path} holds no per-class tar; expected ImageNet's {TRAIN_TAR}")
    found = sorted(os.path.splitext(os.path.basename(n))[0] for n, _, _ in inner)
    if wnids is not None and found != wnids:
        extra, missing = sorted(set(found) - set(wnids)), sorted(set(wnids) - set(found))
        raise DatasetError(f"the devkit {devkit} does not match {path}: classes in the archive but not the devkit "
                           f"{extra[:5]}, in the devkit but not the archive {missing[:5]}")
    classes = wnids or found
    label = {c: i for i, c in enumerate(classes)}
    rows = []
    meter = Progress(len(inner), f"indexing {path.name}", interval=50, bar=False)
    with open(path, "rb") as fh:
        for k, (name, offset, size) in enumerate(sorted(inner, key=lambda x: os.path.basename(x[0])), 1):
            wnid = os.path.splitext(os.path.basename(name))[0]
            members = tar_members(f"{path}:{name}", fileobj=_Window(fh, offset, size), size=size, base=offset)
            for mname, moffset, msize in sorted(members, key=lambda x: x[0]):
                rows.append((0, moffset, msize, label[wnid], f"{name}/{mname}"))
            meter.update(k, len(rows), "class tars")
    return rows, classes


def _val_rows(path: Path, ids: dict[int, str], truth: list[int], classes: list[str],
              devkit: str) -> list[tuple[int, int, int, int, str]]:
    label = {c: i for i, c in enumerate(classes)}
    rows = []
    for name, offset, size in tar_members(str(path)):
        m = _VAL_NAME.search(name)
        if m is None:
            continue
        k = int(m.group(1))
        if not 1 <= k <= len(truth):
            raise DatasetError(f"the devkit {devkit} does not match {path}: member {name} has no line in "
                               f"{_GROUND_TRUTH} ({len(truth)} lines)")
        if truth[k - 1] not in ids:
            raise DatasetError(f"{devkit}: {_GROUND_TRUTH} line {k} (for {name}) names class ID {truth[k - 1]}, "
                               f"which is not a leaf synset of {_META}")
        rows.append((0, offset, size, label[ids[truth[k - 1]]], name))
    if not rows:
        raise DatasetError(f"{path} holds no ILSVRC2012_val_*.JPEG; expected ImageNet's {VAL_TAR}")
    rows.sort(key=lambda r: (r[3], os.path.basename(r[4])))  # as the validation images sorted into class folders
    return rows


def imagenet_index(root: str | os.PathLike, split: str) -> SampleIndex:
    """The samples of ImageNet's original archive of ``split`` in ``root`` (see the module docstring).

    Raises:
        DatasetError: the archive is missing or malformed, or the devkit (needed for ``val``) is missing or does
            not match the archive; the message names the file and the member.
    """
    root = Path(root)
    path = _archive(root, split)
    if path is None:
        raise DatasetError(f"{root} holds no {TRAIN_TAR if split == 'train' else VAL_TAR} for split {split!r}")
    devkit_files = [str(p) for p in (root / f"{DEVKIT}.tar.gz", root / f"{DEVKIT}.tar", root / DEVKIT / _META,
                                     root / DEVKIT / _GROUND_TRUTH) if p.is_file()]

    def build() -> SampleIndex:
        devkit = read_devkit(root)
        if split == "train":
            rows, classes = _train_rows(path, devkit[0] if devkit else None, devkit[3] if devkit else None)
        else:
            if devkit is None:
                raise DatasetError(f"the validation labels of {path} come from ImageNet's devkit: put "
                                   f"{DEVKIT}.tar.gz in {root}")
            rows = _val_rows(path, devkit[1], devkit[2], devkit[0], devkit[3])
            classes = devkit[0]
        return SampleIndex.from_rows([str(path)], rows, classes, {"format": "imagenet", "split": split})

    return cached_index([str(path)] + devkit_files, {"format": "imagenet", "split": split}, build)


class _Window:
    """A read-only, seekable view of ``size`` bytes of ``f`` from ``start`` (an inner tar, for ``tarfile``)."""

    def __init__(self, f: Any, start: int, size: int) -> None:
        self.f, self.start, self.size, self.pos = f, start, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.pos if n is None or n < 0 else min(n, self.size - self.pos)
        self.f.seek(self.start + self.pos)
        data = self.f.read(max(n, 0))
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = pos if whence == 0 else self.pos + pos if whence == 1 else self.size + pos
        return self.pos

    def tell(self) -> int:
        return self.pos
