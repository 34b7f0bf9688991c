"""Parquet files of encoded images: an image column (the JPEG/PNG bytes, or Hugging Face's ``{bytes, path}``
struct) and an integer label column, read with ``pyarrow`` (``pip install 'pitvit[parquet]'``).

The index records each row's file, row group and row; the label column is read once to build it. A file whose
row groups each hold one uncompressed image (what ``pitvit pack`` writes) is indexed down to the bytes: the
image's offset and size come from the footer and the short header of each group's dictionary page (the
Parquet format's own layout, read once), so a row is then one ``pread``, as a tar member is, and the 4-byte
length that precedes the value in the file is checked on every read. Other files are read through ``pyarrow``:
a row reads its row group's image column, and a worker keeps the last group it read, so files with large row
groups (the Hugging Face Hub's) are best read in file order (``data.shuffle=shards``). Column names are found (``image``, ``img``,
``jpg``, ``png``, ``webp``, or the only binary column; ``label``, ``cls``, ``target``, ``labels``, or the only
integer column) or given.
"""
from __future__ import annotations

import os
import struct
from typing import Any

from pitvit.utils.errors import DatasetError
from pitvit.utils.extras import require

from .index import SampleIndex, cached_index
from .records import RecordDataset
from .tars import read_classes_file, shard_files

__all__ = ["parquet_index", "ParquetDataset", "import_pyarrow"]

_IMAGE_NAMES = ("image", "img", "jpg", "jpeg", "png", "webp")
_LABEL_NAMES = ("label", "cls", "target", "labels", "class")


def import_pyarrow() -> Any:
    """pyarrow with its Parquet module, or the one-line error naming the ``parquet`` extra."""
    require("pyarrow.parquet", "reading or writing Parquet")
    return require("pyarrow")


def _is_image(t: Any, pa: Any) -> bool:
    if pa.types.is_struct(t):
        return any(t.field(i).name == "bytes" and _is_image(t.field(i).type, pa) for i in range(t.num_fields))
    return pa.types.is_binary(t) or pa.types.is_large_binary(t)


def _pick(path: str, schema: Any, given: str, names: tuple[str, ...], test: Any, what: str, option: str) -> str:
    cols = {f.name: f.type for f in schema}
    if given:
        if given not in cols or not test(cols[given]):
            raise DatasetError(f"{path}: no {what} column {given!r} among its columns {list(cols)}")
        return given
    for n in names:
        if n in cols and test(cols[n]):
            return n
    fits = [n for n, t in cols.items() if test(t)]
    if len(fits) == 1:
        return fits[0]
    raise DatasetError(f"{path}: cannot tell which column holds the {what} among {list(cols)}; name it with "
                       f"{option}")


def columns(path: str, schema: Any, image_column: str = "", label_column: str = "") -> tuple[str, str]:
    """The image and label columns of a file with ``schema``."""
    pa = import_pyarrow()
    image = _pick(path, schema, image_column, _IMAGE_NAMES, lambda t: _is_image(t, pa), "image (bytes)",
                  "data.image_column")
    label = _pick(path, schema, label_column, _LABEL_NAMES, pa.types.is_integer, "integer label",
                  "data.label_column")
    return image, label


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint of Thrift's compact protocol at ``pos``: ``(value, next position)``."""
    value = shift = 0
    while pos < len(buf):
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return (value >> 1) ^ -(value & 1), pos
    raise ValueError("the header ends inside a number")


_DICTIONARY_PAGE = 2  # Parquet's PageType.DICTIONARY_PAGE
_I32_FIELD = 0x15  # compact protocol: field id delta 1, type i32


def _page_sizes(head: bytes) -> tuple[int, int, int]:
    """``(type, uncompressed size, compressed size)``: the first three fields of a page header (Parquet's
    ``PageHeader``, Thrift compact protocol, fields 1-3 in order as every writer writes them)."""
    values, pos = [], 0
    for _ in range(3):
        if pos >= len(head) or head[pos] != _I32_FIELD:
            raise ValueError("not the page header this reader knows")
        value, pos = _varint(head, pos + 1)
        values.append(value)
    return values[0], values[1], values[2]


def _direct_rows(fd: int, metadata: Any, column: str) -> list[tuple[int, int]] | None:
    """``(offset, size)`` of the image in each row group, when every group holds one row whose image is the only
    entry of an uncompressed dictionary page (the page then holds its 4-byte length and its bytes, and ends where
    the data page starts); else ``None``."""
    leaf = next((i for i in range(metadata.num_columns) if metadata.schema.column(i).path == column), None)
    if leaf is None:
        return None
    out = []
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        chunk = group.column(leaf)
        if (group.num_rows != 1 or chunk.num_values != 1 or chunk.compression != "UNCOMPRESSED"
                or chunk.physical_type != "BYTE_ARRAY" or not chunk.has_dictionary_page):
            return None
        start, end = chunk.dictionary_page_offset, chunk.data_page_offset
        try:
            kind, size, stored = _page_sizes(os.pread(fd, 16, start))
        except ValueError:
            return None
        if kind != _DICTIONARY_PAGE or size != stored or not 4 < size < end - start:
            return None
        out.append((end - size + 4, size - 4))
    return out


def parquet_index(spec: str, image_column: str = "", label_column: str = "") -> SampleIndex:
    """The rows of the Parquet files ``spec`` names (a folder, a brace pattern or a glob).

    Raises:
        DatasetError: a file is unreadable, lacks the columns, or has a missing or out-of-range label.
    """
    pa = import_pyarrow()
    import pyarrow.parquet as pq

    files = shard_files(spec, ".parquet")
    folder = os.path.dirname(os.path.abspath(files[0]))
    classes = read_classes_file([folder, os.path.dirname(folder)])

    def build() -> SampleIndex:
        rows, cols, direct = [], None, []
        for f, path in enumerate(files):
            try:
                pf = pq.ParquetFile(path)
                cols = columns(path, pf.schema_arrow, image_column, label_column)
                labels = pf.read(columns=[cols[1]]).column(0).to_pylist()
                fd = os.open(path, os.O_RDONLY)
                try:
                    places = _direct_rows(fd, pf.metadata, cols[0])
                finally:
                    os.close(fd)
            except (OSError, pa.ArrowException) as e:
                raise DatasetError(f"{path}: cannot read it as Parquet ({e})") from e
            direct.append(places is not None)
            r = 0
            for g in range(pf.metadata.num_row_groups):
                for j in range(pf.metadata.row_group(g).num_rows):
                    label = labels[r]
                    if label is None or label < 0 or (classes is not None and label >= len(classes)):
                        raise DatasetError(f"{path}: row {r}: label {label} is missing or out of range"
                                           + ("" if classes is None else f" ({len(classes)} classes)"))
                    rows.append((f, *(places[g] if places is not None else (g, j)), label, f"row {r}"))
                    r += 1
        if not rows:
            raise DatasetError(f"the Parquet files at {spec} hold no row")
        names = classes or [str(i) for i in range(max(r[3] for r in rows) + 1)]
        return SampleIndex.from_rows(files, rows, names, {"format": "parquet", "columns": list(cols),
                                                          "direct": direct})

    # "read": 2 - indexes that locate the bytes of one-row groups (older ones are rebuilt once)
    what = {"format": "parquet", "classes": classes, "columns": [image_column, label_column], "read": 2}
    return cached_index(files, what, build)


class ParquetDataset(RecordDataset):
    """Rows of Parquet files (see :class:`RecordDataset`). In a file indexed to the bytes, ``offset`` and
    ``size`` locate the image; in the others they are the row group and the row."""

    def __init__(self, index: SampleIndex, transform: Any = None, *, strict_images: bool = False) -> None:
        super().__init__(index, transform, strict_images=strict_images, kind="parquet")
        self._direct = list(index.meta.get("direct", [False] * len(index.files)))
        self._group: tuple[int, int, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_group"] = None
        return state

    def open(self, f: int) -> Any:
        if self._direct[f]:
            return super().open(f)
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.index.files[f])

    def read_bytes(self, i: int) -> bytes:
        f = int(self.index.file[i])
        if self._direct[f]:
            size, offset = int(self.index.size[i]), int(self.index.offset[i])
            data = os.pread(self._handle(f), size + 4, offset - 4)
            if len(data) != size + 4 or struct.unpack_from("<I", data)[0] != size:
                raise OSError("the image is not where the file's index says (was the file rewritten in place?)")
            return data[4:]
        pa = import_pyarrow()
        g, row = int(self.index.offset[i]), int(self.index.size[i])
        if self._group is None or self._group[:2] != (f, g) or self._pid != os.getpid():
            try:
                # threads cost more than they save on one row group, and a worker is one process of many
                table = self._handle(f).read_row_group(g, columns=[self.index.meta["columns"][0]], use_threads=False)
            except pa.ArrowException as e:
                raise OSError(f"cannot read row group {g}: {e}") from e
            col = table.column(0)
            if pa.types.is_struct(col.type):
                col = col.combine_chunks().field("bytes")
            self._group = (f, g, col)
        value = self._group[2][row].as_py()
        if value is None:
            raise OSError("the image cell is empty")
        return value
