"""Fashion-MNIST (Xiao et al., 2017, arXiv 1708.07747) from its IDX files, parsed with numpy.

The files are the ones Debian's ``dataset-fashion-mnist`` package installs in
``/usr/share/datasets/fashion-mnist/`` (gzipped, ``train-images-idx3-ubyte.gz`` ...); plain (gunzipped)
files are read as well. Nothing is downloaded.

IDX format: two zero bytes, a type code, the number of dimensions, then each dimension as a big-endian
uint32, then the values in C order, big-endian.
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from pitvit.utils.errors import DatasetError

__all__ = ["FASHION_MNIST_CLASSES", "DEFAULT_FASHION_MNIST_DIR", "read_idx", "FashionMNIST"]

DEFAULT_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}

_SPLIT_PREFIX = {"train": "train", "val": "t10k", "test": "t10k"}

_INSTALL_HINT = ("install it with `sudo apt-get install dataset-fashion-mnist` (or `make data`), "
                 "or pass the folder holding the IDX files as root")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped when its name ends in ``.gz``) into an array of its declared shape.

    Raises:
        DatasetError: the file is missing, not IDX, truncated, or holds more data than its header says.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"IDX file not found: {path}")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"corrupt IDX file {path}: cannot decompress ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetError(f"corrupt IDX file {path}: bad magic number (expected two zero bytes, a type "
                           f"code and a dimension count)")
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        raise DatasetError(f"corrupt IDX file {path}: unknown type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"corrupt IDX file {path}: truncated header ({len(raw)} bytes for {ndim} dims)")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        raise DatasetError(f"corrupt IDX file {path}: header declares shape {shape} ({expected} bytes of "
                           f"data) but the file holds {found} bytes")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def has_fashion_mnist(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds the Fashion-MNIST training images (gzipped or not)."""
    return _find(Path(folder), "train-images-idx3-ubyte") is not None


class FashionMNIST:
    """Fashion-MNIST as a map-style dataset of ``(transform(PIL 'L' 28x28 image), label)``.

    Args:
        root: the folder with the IDX files (default ``/usr/share/datasets/fashion-mnist``).
        split: ``train`` (60,000 images) or ``val``/``test`` (the 10,000 test images).
        transform: applied to the PIL image.
    """

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train",
                 transform: Callable[[Any], Any] | None = None) -> None:
        if split not in _SPLIT_PREFIX:
            raise DatasetError(f"unknown Fashion-MNIST split {split!r}; valid: train, val, test")
        folder = Path(root if root is not None else DEFAULT_FASHION_MNIST_DIR)
        prefix = _SPLIT_PREFIX[split]
        paths = {}
        for part, stem in (("images", f"{prefix}-images-idx3-ubyte"), ("labels", f"{prefix}-labels-idx1-ubyte")):
            p = _find(folder, stem)
            if p is None:
                raise DatasetError(f"Fashion-MNIST not found: {folder / (stem + '.gz')} is missing; "
                                   + _INSTALL_HINT)
            paths[part] = p
        images = read_idx(paths["images"])
        labels = read_idx(paths["labels"])
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetError(f"corrupt IDX file {paths['images']}: expected uint8 images of shape "
                               f"(N, H, W), found {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"Fashion-MNIST files disagree: {len(images)} images in {paths['images']} "
                               f"but labels of shape {labels.shape} in {paths['labels']}")
        if len(labels) and (labels.min() < 0 or labels.max() >= len(FASHION_MNIST_CLASSES)):
            raise DatasetError(f"corrupt IDX file {paths['labels']}: labels must lie in 0..9, found "
                               f"{int(labels.min())}..{int(labels.max())}")
        self.root = str(folder)
        self.split = split
        self.transform = transform
        self.images = images
        self.targets = [int(t) for t in labels]
        self.classes = list(FASHION_MNIST_CLASSES)

    def __len__(self) -> int:
        return len(self.targets)

    def sample_name(self, index: int) -> str:
        """``SPLIT[index]``: the image's place in its split (``test[0]`` is the first test image)."""
        return f"{self.split}[{index}]"

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img = Image.fromarray(self.images[index])  # uint8 (H, W): mode L
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]

    def __repr__(self) -> str:
        return f"FashionMNIST(root={self.root!r}, split={self.split!r}, n={len(self)})"
