"""``pitvit pack``: any image dataset pitvit reads, written as WebDataset shards or Parquet files.

The output keeps the source's splits (``OUT/train/``, ``OUT/val/``), its class names (``OUT/classes.txt``,
line i names label i) and its sample order, so that a run reading the packed files sees sample ``i`` where a run
reading the source saw it: the same batches, the same augmentation, the same weights. Files are copied as they
are (no re-encoding). Each shard is written atomically; a file that cannot be read, or is not an image, is
skipped and listed in the summary.

- ``wds``: ``OUT/SPLIT/SPLIT-000000.tar`` holding ``00000000.jpg`` + ``00000000.cls`` (the label as text) per
  sample, the ``webdataset`` library's layout.
- ``parquet``: ``OUT/SPLIT/SPLIT-000000.parquet`` with the columns ``key`` (the source's file name),
  ``image`` (the file's bytes) and ``label`` (int64), uncompressed (JPEG bytes do not compress), one row per row
  group by default so that reading one sample reads one image.
"""
from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pitvit.data import build_dataset, detect_kind
from pitvit.data.datasets import SPLITS
from pitvit.data.formats import CLASSES_FILE
from pitvit.data.formats.parquet import import_pyarrow
from pitvit.utils.errors import ConfigError, DatasetError, OutputError
from pitvit.utils.io import write_text, write_with
from pitvit.utils.logs import Progress, get_logger
from pitvit.utils.names import PACK_FORMATS

__all__ = ["pack", "PACK_FORMATS"]


log = get_logger()


def _sample(ds: Any, i: int) -> tuple[str, bytes, int]:
    """``(name, encoded bytes, label)`` of sample ``i``; raises ``OSError`` when unreadable."""
    if hasattr(ds, "read_bytes"):
        return ds.sample_name(i), ds.read_bytes(i), int(ds.index.label[i])
    path, label = ds.samples[i]
    with open(path, "rb") as f:
        return path, f.read(), int(label)


def _image_ext(name: str, data: bytes) -> str:
    """The lower-case extension to store (``jpg``...), from the name, else the header; raises if not an image."""
    with Image.open(io.BytesIO(data)) as img:  # the header only: the bytes are copied, never decoded
        fmt = (img.format or "").lower()
    ext = os.path.splitext(name.rsplit(":", 1)[-1])[1].lower().lstrip(".")
    return ext or {"jpeg": "jpg"}.get(fmt, fmt)


def _write_tar(path: Path, items: list[tuple[str, str, bytes, int]]) -> None:
    def writer(tmp: Path) -> None:
        with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
            for key, ext, data, label in items:
                for name, content in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mode, info.mtime = len(content), 0o644, 0
                    tf.addfile(info, io.BytesIO(content))
    write_with(path, writer)


def _write_parquet(path: Path, items: list[tuple[str, str, bytes, int]], row_group_size: int) -> None:
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    table = pa.table({"key": [k for k, _, _, _ in items],
                      "image": pa.array([d for _, _, d, _ in items], pa.binary()),
                      "label": pa.array([lab for _, _, _, lab in items], pa.int64())})
    write_with(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size, compression="none"))


def pack(src: str, out: str, *, fmt: str = "wds", shard_size: int = 1000, kind: str = "auto",
         splits: tuple[str, ...] = SPLITS, row_group_size: int = 1, progress: bool | None = None) -> dict[str, Any]:
    """Write the splits of ``src`` (any layout :func:`pitvit.data.build_dataset` reads) to ``out`` as ``fmt``.

    Args:
        src: the source dataset.
        out: the output folder (its split folders must not already hold files).
        fmt: ``wds`` or ``parquet``.
        shard_size: samples per shard.
        kind: the source's layout (``auto``: detected).
        splits: the splits to write, those ``src`` has.
        row_group_size: Parquet rows per row group (one: a random read reads one image, not a group).
        progress: draw a bar (default: when stderr is a terminal) instead of logging lines.

    Returns:
        ``{"splits": {split: {"samples", "shards", "bytes", "skipped": [(name, reason)]}}, "classes": n,
        "out": out}``.

    Raises:
        ConfigError: an unknown format, a shard size below 1, or pyarrow missing for Parquet.
        DatasetError: the source has none of the splits or cannot be read.
        OutputError: a split folder already holds files, or the output cannot be written.
    """
    if fmt not in PACK_FORMATS:
        raise ConfigError(f"unknown pack format {fmt!r}; valid: {', '.join(PACK_FORMATS)}")
    if shard_size < 1 or row_group_size < 1:
        raise ConfigError(f"--shard-size and the row group size must be >= 1, got {shard_size}, {row_group_size}")
    if fmt == "parquet":
        import_pyarrow()
    found = []
    for split in splits:
        try:
            if detect_kind(src, split) != "fashion_mnist":
                found.append(split)
        except DatasetError:
            continue
    if not found:
        raise DatasetError(f"{src} holds none of the splits {', '.join(splits)} in a layout pitvit packs "
                           f"(image folder, list files, ImageNet archives, shards, Parquet)")
    outdir = Path(out)
    for split in found:
        d = outdir / split
        if d.is_dir() and any(d.iterdir()):
            raise OutputError(f"{d} already holds files; pack into an empty folder")
    bar = sys.stderr.isatty() if progress is None else progress
    summary: dict[str, Any] = {"splits": {}, "out": str(outdir)}
    classes = None
    for split in found:
        ds = build_dataset(src, split, kind=kind)
        classes = classes or list(ds.classes)
        summary["splits"][split] = _pack_split(ds, outdir / split, split, fmt, shard_size, row_group_size, bar)
    write_text(outdir / CLASSES_FILE, "".join(f"{c}\n" for c in classes))
    summary["classes"] = len(classes)
    return summary


def _pack_split(ds: Any, folder: Path, split: str, fmt: str, shard_size: int, row_group_size: int,
                bar: bool) -> dict[str, Any]:
    n = len(ds)
    shards, written, skipped = 0, 0, []
    items: list[tuple[str, str, bytes, int]] = []
    meter = Progress(n, f"pack {split}", interval=max(n // 20, 1), bar=bar)

    def flush() -> None:
        nonlocal shards, written, items
        if not items:
            return
        path = folder / f"{split}-{shards:06d}.{'tar' if fmt == 'wds' else 'parquet'}"
        if fmt == "wds":
            _write_tar(path, items)
        else:
            _write_parquet(path, items, row_group_size)
        written += path.stat().st_size
        shards += 1
        items = []

    try:
        for i in range(n):
            name = str(i)
            try:
                name, data, label = _sample(ds, i)
                ext = _image_ext(name, data)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                why = ("not an image Pillow knows" if isinstance(e, UnidentifiedImageError)
                       else f"{type(e).__name__}: {e}")
                skipped.append((name, why))
                log.warning("skipped %s: %s", name, why)
                meter.update(i + 1, i + 1, f"{shards} shards")
                continue
            key = f"{i:08d}" if fmt == "wds" else os.path.basename(name.rsplit(":", 1)[-1])
            items.append((key, ext, data, label))
            if len(items) == shard_size:
                flush()
            meter.update(i + 1, i + 1, f"{shards} shards")
        flush()
    except OSError as e:
        if isinstance(e, OutputError):
            raise
        raise OutputError(f"cannot write {folder}: {e}") from e
    finally:
        meter.close()
    return {"samples": n - len(skipped), "shards": shards, "bytes": written, "skipped": skipped}
