"""Datasets: class folders, the Paddle reproduction's list files, Fashion-MNIST; and ``build_dataset``.

Every dataset checks its files when it is built, so that a wrong path fails before training starts, and
every image dataset returns a :class:`SkippedSample` (or raises :class:`CorruptImageError` when strict) for
an image that cannot be decoded mid-run.
"""
from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from pitvit.utils.errors import ConfigError, DatasetError
from pitvit.utils.names import DATASET_KINDS
from pitvit.utils.io import file_kind, open_regular

from .formats import FORMATS, LAYOUTS, build_records, detect_format
from .fashion_mnist import DEFAULT_FASHION_MNIST_DIR, FashionMNIST, has_fashion_mnist
from .images import IMAGE_EXTENSIONS, SkippedSample, is_image_file, load_image

__all__ = ["find_images", "ImageFolderDataset", "ListDataset", "FashionMNIST", "Subset", "build_dataset",
           "detect_kind", "holdout_indices"]

log = logging.getLogger(__name__)

KINDS = DATASET_KINDS  # the one table, in pitvit.utils.names (the CLI offers it without importing data)
SPLITS = ("train", "val", "test")

_FOLDER_LAYOUT = "ROOT/train/<class>/<image> and ROOT/val/<class>/<image>"
_LIST_LAYOUT = ("ROOT/train_list.txt and ROOT/val_list.txt, one '<path relative to ROOT> <integer label>' "
                "per line (optional ROOT/labels.txt: one class name per line, line i names label i)")


class _ImageFileDataset:
    """Shared behaviour of the datasets backed by one image file per sample."""

    samples: list[tuple[str, int]]
    classes: list[str]
    transform: Callable[[Any], Any] | None
    strict_images: bool

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        """The sample's image file."""
        return self.samples[index][0]

    def __getitem__(self, index: int) -> tuple[Any, int] | SkippedSample:
        path, target = self.samples[index]
        img = load_image(path, self.strict_images)
        if isinstance(img, SkippedSample):
            return img
        if self.transform is not None:
            img = self.transform(img)
        return img, target


class ImageFolderDataset(_ImageFileDataset):
    """Images in class subfolders: ``root/<class>/**/<image>``; labels index the sorted class names.

    Args:
        root: the split's folder (``ROOT/train`` or ``ROOT/val``).
        transform: applied to the PIL image.
        classes: the class names to label with (another split's, so that labels agree across splits);
            default: this folder's subfolders, sorted. A subfolder not in ``classes`` is an error.
        strict_images: an undecodable image raises instead of being skipped.

    Raises:
        DatasetError: ``root`` is missing or has no class folders, a class folder holds no image, or a
            folder is not among ``classes``.
    """

    def __init__(self, root: str | os.PathLike, transform: Callable[[Any], Any] | None = None, *,
                 classes: Sequence[str] | None = None, strict_images: bool = False) -> None:
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder not found: {root}; expected the layout {_FOLDER_LAYOUT}")
        found = _class_dirs(root)
        if not found:
            raise DatasetError(f"no class folders in {root}; expected the layout {_FOLDER_LAYOUT}")
        classes = list(classes) if classes is not None else found
        index = {c: i for i, c in enumerate(classes)}
        unknown = [c for c in found if c not in index]
        if unknown:
            raise DatasetError(f"{root} has class folder(s) {unknown[:5]} that are not among the "
                               f"{len(classes)} training classes")
        samples, empty = [], []
        walk = _Walk(root)
        for c in found:
            files = walk.images(root / c)
            if not files:
                empty.append(c)
            samples += [(f, index[c]) for f in files]
        if empty:
            raise DatasetError(f"{len(empty)} class folder(s) in {root} hold no image "
                               f"(extensions {', '.join(IMAGE_EXTENSIONS)}): {empty[:5]}")
        if walk.skipped:
            log.warning("%s: left out %d file(s) or link(s), e.g. %s", root, len(walk.skipped),
                        "; ".join(f"{p}: {why}" for p, why in walk.skipped[:3]))
        self.root = str(root)
        self.classes = classes
        self.samples = samples
        self.left_out = walk.skipped  # (path, why) of what the walk did not take
        self.transform = transform
        self.strict_images = strict_images

    def __repr__(self) -> str:
        return f"ImageFolderDataset(root={self.root!r}, classes={len(self.classes)}, n={len(self)})"


def _class_dirs(root: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))


def find_images(folder: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """The image files under ``folder`` (sorted), walked as a dataset's class folder is (see :class:`_Walk`), and
    ``(path, why)`` for what the walk left out (special files, dangling links, links back into the tree)."""
    walk = _Walk(Path(folder))
    return walk.images(Path(folder)), walk.skipped


class _Walk:
    """The image files under a split's class folders, and what the walk left out.

    Links to files are followed (a link is one more name for its image). A link to a folder is followed only
    when it leads out of the split's tree, and only once: one that leads back into the tree (``loop -> .``,
    ``up -> ..``, a link to another class) or to an ancestor of it would count images again, under another
    class's label, or for ever. Special files (FIFOs, sockets, devices) with an image's name are never opened,
    since reading a FIFO blocks until someone writes to it; they and dangling links are counted in ``skipped``.
    """

    def __init__(self, root: Path) -> None:
        self.root = os.path.realpath(root)
        self.visited: set[str] = set()
        self.skipped: list[tuple[str, str]] = []  # (path, why)

    def _inside_tree(self, real: str) -> bool:
        return any(a == b or a.startswith(b.rstrip(os.sep) + os.sep) for a, b in ((real, self.root), (self.root, real)))

    def images(self, folder: Path) -> list[str]:
        """The images under one class folder, sorted by path; none when the walk has been there already."""
        real = os.path.realpath(folder)
        if real in self.visited:
            self.skipped.append((str(folder), f"the folder {real} was already walked as another class"))
            return []
        self.visited.add(real)
        return sorted(self._walk(str(folder)))

    def _walk(self, folder: str) -> list[str]:
        out = []
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            self.skipped.append((folder, f"cannot list the folder ({e.strerror})"))
            return out
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(entry.path)
                if entry.is_symlink() and (self._inside_tree(real) or real in self.visited):
                    self.skipped.append((entry.path, f"a link to the folder {real}, which the walk reaches "
                                                     f"anyway (a loop, or a folder of this tree)"))
                    continue
                if real in self.visited:
                    continue
                self.visited.add(real)
                out += self._walk(entry.path)
            elif is_image_file(entry.name):
                try:
                    mode = entry.stat().st_mode  # follows links; never opens the file
                except OSError as e:
                    self.skipped.append((entry.path, f"a dangling link ({e.strerror})"))
                    continue
                if stat.S_ISREG(mode):
                    out.append(entry.path)
                else:
                    self.skipped.append((entry.path, f"{file_kind(mode)}, not a regular file"))
        return out


class ListDataset(_ImageFileDataset):
    """The Paddle reproduction's format: ``ROOT/{split}_list.txt``, one ``<relative path> <label>`` per line.

    Labels are used as written. Class names come from ``ROOT/labels.txt`` (one name per line, line i names
    label i) when present, otherwise they are the label numbers as strings, ``"0" .. str(max label)``, where
    the maximum is taken over every ``*_list.txt`` in ROOT so that the splits agree.

    Args:
        root: the folder holding the list files; image paths are relative to it.
        split: ``train``, ``val`` or ``test``.
        transform: applied to the PIL image.
        strict_images: an undecodable image raises instead of being skipped.

    Raises:
        DatasetError: the list file is missing or malformed, or names images that do not exist (the count
            and the first few are given).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train",
                 transform: Callable[[Any], Any] | None = None, *, strict_images: bool = False) -> None:
        root = Path(root)
        list_file = root / f"{split}_list.txt"
        if not list_file.exists():
            raise DatasetError(f"list file not found: {list_file}; expected the layout {_LIST_LAYOUT}")
        entries = _read_list(list_file)
        if not entries:
            raise DatasetError(f"list file {list_file} names no image")
        samples = [(str(root / rel), label) for rel, label in entries]
        missing = _missing_files([p for p, _ in samples])
        if missing:
            raise DatasetError(f"{list_file} names {len(missing)} image(s) that do not exist under {root}, "
                               f"e.g. {[os.path.relpath(p, root) for p in missing[:5]]}")
        max_label = max(label for _, label in entries)
        for other in sorted(root.glob("*_list.txt")):
            if other != list_file:
                max_label = max([max_label] + [label for _, label in _read_list(other)])
        labels_file = root / "labels.txt"
        if labels_file.exists():
            classes = [line.strip() for line in _read_text(labels_file).splitlines() if line.strip()]
            if len(classes) <= max_label:
                raise DatasetError(f"{labels_file} names {len(classes)} classes but the list files use "
                                   f"label {max_label}")
        else:
            classes = [str(i) for i in range(max_label + 1)]
        self.root = str(root)
        self.split = split
        self.classes = classes
        self.samples = samples
        self.transform = transform
        self.strict_images = strict_images

    def __repr__(self) -> str:
        return (f"ListDataset(root={self.root!r}, split={self.split!r}, classes={len(self.classes)}, "
                f"n={len(self)})")


def _read_text(path: Path) -> str:
    """A list or labels file's text; a FIFO or device is refused unopened, not waited on."""
    try:
        with open_regular(path) as f:
            return f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def _read_list(list_file: Path) -> list[tuple[str, int]]:
    entries = []
    for lineno, line in enumerate(_read_text(list_file).splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)  # paths may contain spaces; the label is the last field
        try:
            if len(parts) != 2:
                raise ValueError
            label = int(parts[1])
            if label < 0:
                raise ValueError
        except ValueError:
            raise DatasetError(f"{list_file}:{lineno}: expected '<relative path> <label >= 0>', "
                               f"found {line!r}") from None
        entries.append((parts[0], label))
    return entries


def _missing_files(paths: list[str]) -> list[str]:
    # one directory listing per folder instead of one stat per file: ImageNet's list has 1.28M lines
    listing: dict[str, set[str] | None] = {}
    missing = []
    for p in paths:
        d, name = os.path.split(p)
        if d not in listing:
            try:
                listing[d] = set(os.listdir(d or "."))
            except OSError:
                listing[d] = None
        names = listing[d]
        if names is None or name not in names:
            missing.append(p)
    return missing


def detect_kind(root: str | os.PathLike | None, split: str) -> str:
    """The dataset kind found at ``root``: ``list``, ``fashion_mnist`` or ``imagefolder``.

    ``root=None`` means Fashion-MNIST in its Debian folder.
    """
    if root is None:
        return "fashion_mnist"
    root = Path(root)
    if (root / f"{split}_list.txt").exists():
        return "list"
    if has_fashion_mnist(root):
        return "fashion_mnist"
    found = detect_format(root, split)
    if found is not None:
        return found
    if (root / split).is_dir():
        return "imagefolder"
    missing = "" if root.exists() else f"{root} does not exist; "
    raise DatasetError(
        f"cannot tell which dataset is at {root} (split {split!r}): {missing}expected an imagefolder "
        f"({_FOLDER_LAYOUT}), a list ({_LIST_LAYOUT}) or fashion_mnist (ROOT/train-images-idx3-ubyte.gz and the "
        f"other IDX files; default ROOT {DEFAULT_FASHION_MNIST_DIR}), or {LAYOUTS}")


def build_dataset(root: str | os.PathLike | None, split: str, *, kind: str = "auto",
                  transform: Callable[[Any], Any] | None = None, strict_images: bool = False,
                  image_column: str = "", label_column: str = "") -> Any:
    """Build a dataset of ``(transform(PIL image), label)`` with ``.classes`` (list of str) and ``.targets``.

    Args:
        root: the dataset folder (for ``fashion_mnist`` the folder of the IDX files; ``None`` means the
            Debian package's folder).
        split: ``train``, ``val`` or ``test``. For an image folder, labels of every split follow the class
            folders of ``ROOT/train`` when it exists, so that they agree with the training labels.
        kind: ``auto``, ``imagefolder``, ``list``, ``fashion_mnist``, or a format read in place (``imagenet``,
            ``wds``, ``parquet``: :mod:`pitvit.data.formats`); ``auto`` looks for ``ROOT/{split}_list.txt``, then
            the IDX files, then those formats, then ``ROOT/{split}/``.
        transform: applied to each PIL image (see :func:`pitvit.data.build_transform`).
        strict_images: an image that cannot be decoded mid-run raises :class:`CorruptImageError`
            naming the file; by default the sample is skipped and counted by the loader.
        image_column, label_column: a Parquet file's columns (default: found by name and type).

    Raises:
        ConfigError: an unknown ``kind`` or ``split``.
        DatasetError: the layout is not found or is inconsistent; the message names the path and the
            expected layout.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown dataset kind {kind!r}; valid: {', '.join(KINDS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if kind == "auto":
        kind = detect_kind(root, split)
    if kind == "fashion_mnist":
        return FashionMNIST(root, split, transform)
    if root is None:
        raise DatasetError(f"dataset kind {kind!r} needs a root folder")
    if kind == "list":
        return ListDataset(root, split, transform, strict_images=strict_images)
    if kind in FORMATS:
        return build_records(kind, root, split, transform, strict_images=strict_images,
                             image_column=image_column, label_column=label_column)
    root = Path(root)
    classes = None
    if split != "train" and (root / "train").is_dir():
        classes = _class_dirs(root / "train") or None
    return ImageFolderDataset(root / split, transform, classes=classes, strict_images=strict_images)


class Subset:
    """The samples ``indices`` of ``dataset``, in that order.

    ``targets``, ``samples``, ``images`` (for a dataset held in memory) and the per-sample methods
    ``read_bytes(i)`` and ``sample_name(i)`` (datasets held in other files) are those of the subset, so a
    consumer that reads samples by index (the GPU pipeline) reads the subset's; ``classes`` and any other
    attribute (``transform``...) are the dataset's.
    """

    _PER_SAMPLE = ("read_bytes",)  # methods taking a sample index that only some datasets have

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Any:
        return self.dataset[self.indices[index]]

    def sample_name(self, index: int) -> str:
        return self.dataset.sample_name(self.indices[index])

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "indices"):  # not yet set (unpickling): avoid recursing
            raise AttributeError(name)
        value = getattr(self.dataset, name)
        if name in self._PER_SAMPLE:
            indices = self.indices
            return lambda index: value(indices[index])
        return value

    @property
    def targets(self) -> list[int]:
        targets = self.dataset.targets
        return [targets[i] for i in self.indices]

    @property
    def samples(self) -> list[tuple[str, int]]:
        samples = self.dataset.samples
        return [samples[i] for i in self.indices]

    @property
    def images(self) -> Any:
        images = getattr(self.dataset, "images", None)
        if images is None:
            raise AttributeError(f"{type(self.dataset).__name__} holds no images in memory")
        return images[self.indices]

    def __repr__(self) -> str:
        return f"Subset({self.dataset!r}, n={len(self)})"


def holdout_indices(n: int, holdout: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into ``(train, held out)``: ``holdout`` indices drawn at random, always the same ones
    for the same ``n`` and ``holdout`` (numpy's legacy ``RandomState(0)``, whose stream numpy keeps fixed across
    versions; independent of the run's seed), each list sorted.

    Raises:
        ConfigError: ``holdout`` is not in ``1 .. n - 1``.
    """
    if not 0 < holdout < n:
        raise ConfigError(f"data.holdout must hold out between 1 and {n - 1} of the {n} training images, "
                          f"got {holdout}")
    perm = np.random.RandomState(0).permutation(n)
    return sorted(perm[holdout:].tolist()), sorted(perm[:holdout].tolist())
