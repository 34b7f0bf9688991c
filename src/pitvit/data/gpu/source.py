"""The CPU side of the GPU pipeline: worker processes read file bytes, sort out what the device can decode, and
draw each sample's augmentation parameters. No pixel work happens here except for the fallback files.

A JPEG goes to the device decoder when its header says baseline or extended sequential (SOF0/SOF1), 8-bit, with
one (gray) or three (YCbCr) components. Everything else takes the *CPU fallback*, decoded here with PIL exactly as
the CPU pipeline decodes it (:func:`pitvit.data.images.load_image`) and counted by reason: ``progressive``
(nvjpeg decodes those in software, ~50x slower than baseline), ``cmyk`` (4 components), ``jpeg`` (another JPEG
process, or an unparsable header), ``png``, ``other`` (any other format PIL reads).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from pitvit.utils.errors import DatasetError
from pitvit.utils.io import open_regular
from pitvit.utils.seed import mix_seed

from ..images import SkippedSample, load_image, unreadable
from ..loader import KeyedDataset
from .params import ParamDrawer, TrainSpec

__all__ = ["jpeg_info", "EncodedDataset", "EncodedBatch", "collate_encoded", "decode_with_pil"]

_SOF_DEVICE = {0xC0, 0xC1}
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_NO_LENGTH = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8}


def jpeg_info(data: bytes) -> tuple[str, int, int]:
    """``(kind, height, width)`` from a file's first bytes: ``kind`` is ``device`` for a JPEG the device
    decoder takes, else the fallback reason (``progressive``, ``cmyk``, ``jpeg``, ``png``, ``other``);
    height and width are 0 when not read from a JPEG header."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png", 0, 0
    if data[:2] != b"\xff\xd8":
        return "other", 0, 0
    pos, n = 2, len(data)
    adobe_transform = -1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return "jpeg", 0, 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _NO_LENGTH:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return "jpeg", 0, 0
        length = (data[pos + 2] << 8) | data[pos + 3]
        seg = data[pos + 4: pos + 2 + length]
        if marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        if marker in _SOF_DEVICE or marker in _SOF_OTHER:
            if len(seg) < 6:
                return "jpeg", 0, 0
            precision, h, w, comps = seg[0], (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
            if comps == 4:
                return "cmyk", h, w
            if marker == 0xC2:
                return "progressive", h, w
            if marker in _SOF_OTHER or precision != 8 or comps not in (1, 3) or h == 0 or w == 0:
                return "jpeg", h, w
            if comps == 3 and adobe_transform == 0:  # stored as RGB, not YCbCr
                return "jpeg", h, w
            return "device", h, w
        pos += 2 + length
    return "jpeg", 0, 0


def decode_with_pil(data: bytes, path: str, strict: bool) -> torch.Tensor | SkippedSample:
    """Decode as the CPU pipeline does (:func:`pitvit.data.images.load_image`, then RGB): ``(H, W, 3)`` uint8."""
    img = load_image(data, strict, name=path)
    if isinstance(img, SkippedSample):
        return img
    return torch.from_numpy(np.asarray(img.convert("RGB")).copy())


class EncodedDataset(KeyedDataset):
    """Items are dicts: ``data`` (the file's bytes as a 1-d uint8 tensor, or the decoded ``(H, W, 3)`` fallback),
    ``kind`` (``device`` or the fallback reason), ``hw``, ``label``, ``path`` and, for training, ``params``
    drawn from ``mix_seed(seed, epoch, index, repeat)`` (see :mod:`pitvit.data.gpu.params`).

    Args:
        samples: ``(path, label)`` pairs (an image dataset's ``.samples``).
        classes: class names.
        seed: the run's seed.
        spec: the training augmentation, or ``None`` for evaluation (no parameters).
        strict_images: an unreadable file raises :class:`CorruptImageError` instead of being skipped.
        allow_fallback: ``False`` makes a file that needs the CPU fallback a :class:`DatasetError`.
        read: ``read(index)`` gives sample ``index``'s encoded bytes, for samples held inside other files
            (:meth:`pitvit.data.formats.RecordDataset.read_bytes`; the paths are then names for messages);
            default: read the file at the sample's path.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], seed: int,
                 spec: TrainSpec | None, *, strict_images: bool = False, allow_fallback: bool = True,
                 read: Callable[[int], bytes] | None = None) -> None:
        self.read = read
        self.samples = list(samples)
        self.classes = list(classes)
        self.seed = int(seed)
        self.spec = spec
        self.strict_images = strict_images
        self.allow_fallback = allow_fallback
        self.epoch = 0
        self._drawer: ParamDrawer | None = None

    @property
    def targets(self) -> list[int]:
        return [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_drawer"] = None  # generators are rebuilt in each worker
        return state

    def load(self, index: int, epoch: int, repeat: int) -> dict[str, Any] | SkippedSample:
        path, label = self.samples[index]
        try:
            if self.read is not None:
                data = self.read(index)
            else:
                with open_regular(path) as f:
                    data = f.read()
        except OSError as e:
            return unreadable(path, e, self.strict_images)
        kind, h, w = jpeg_info(data)
        if kind == "device":
            pixels = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            if not self.allow_fallback:
                raise DatasetError(f"{path} needs the CPU decoder ({kind}) and the fallback is disabled; "
                                   f"allow it (allow_fallback=True) or convert the file to a baseline JPEG")
            pixels = decode_with_pil(data, path, self.strict_images)
            if isinstance(pixels, SkippedSample):
                return pixels
            h, w = pixels.shape[:2]
        item = {"data": pixels, "kind": kind, "hw": (h, w), "label": int(label), "path": path}
        if self.spec is not None:
            if self._drawer is None:
                self._drawer = ParamDrawer(self.spec)
            item["key"] = mix_seed(self.seed, epoch, index, repeat)
            item["params"] = self._drawer(item["key"], h, w)
        return item

    def __repr__(self) -> str:
        return f"EncodedDataset(n={len(self)}, classes={len(self.classes)}, train={self.spec is not None})"


class EncodedBatch:
    """What a worker sends per batch: the items' bytes or fallback pixels, their sizes, labels, parameters,
    sample keys (training: ``mix_seed(seed, epoch, index, repeat)``, which key the erasing noise), and the
    :class:`SkippedSample` records of the files that could not be read."""

    __slots__ = ("data", "kinds", "hw", "labels", "params", "paths", "skipped", "keys")

    def __init__(self, data, kinds, hw, labels, params, paths, skipped, keys=None) -> None:
        self.data, self.kinds, self.hw, self.labels = data, kinds, hw, labels
        self.params, self.paths, self.skipped, self.keys = params, paths, skipped, keys

    def __len__(self) -> int:
        return len(self.data)

    def __reduce__(self):
        # Sent from a worker, every tensor travels in its own shared-memory segment with its own file
        # descriptor: a batch of 256 files would hold 256 of them (and a few prefetched batches exhaust a 1024
        # descriptor limit). The file bytes are therefore packed into one tensor and split back into views.
        enc = [i for i, k in enumerate(self.kinds) if k == "device"]
        blob = torch.cat([self.data[i] for i in enc]) if enc else torch.empty(0, dtype=torch.uint8)
        sizes = [int(self.data[i].numel()) for i in enc]
        data = [None if k == "device" else d for d, k in zip(self.data, self.kinds)]
        return (_unpack_batch, (blob, sizes, data, self.kinds, self.hw, self.labels, self.params, self.paths,
                                self.skipped, self.keys))


def _unpack_batch(blob, sizes, data, kinds, hw, labels, params, paths, skipped, keys=None) -> EncodedBatch:
    parts = iter(torch.split(blob, sizes)) if sizes else iter(())
    data = [next(parts) if k == "device" else d for d, k in zip(data, kinds)]
    return EncodedBatch(data, kinds, hw, labels, params, paths, skipped, keys)


def collate_encoded(items: list[Any]) -> EncodedBatch:
    good = [b for b in items if not isinstance(b, SkippedSample)]
    skipped = [b for b in items if isinstance(b, SkippedSample)]
    params = None
    if good and "params" in good[0]:
        params = torch.from_numpy(np.stack([b["params"] for b in good]))
    return EncodedBatch(
        data=[b["data"] for b in good], kinds=[b["kind"] for b in good], hw=[b["hw"] for b in good],
        labels=torch.tensor([b["label"] for b in good], dtype=torch.int64), params=params,
        paths=[b["path"] for b in good], skipped=skipped,
        keys=torch.tensor([b["key"] for b in good], dtype=torch.int64) if good and "key" in good[0] else None)
