"""Datasets read in place: ImageNet's original archives, WebDataset shards, Parquet files, and `pitvit pack`.

The fixtures are made here (tests/imagenet_layout.py: ImageNet's extracted folders and its three archives, with a
devkit whose meta.mat scipy.io.savemat writes in the devkit's structure). References: torchvision's
ImageFolder over the extracted folders (class order and sample order), the bytes of the image files themselves
and Python's tarfile / pyarrow reading the same members and rows; the run from the image folder for the runs from
the other formats.
"""
from __future__ import annotations

import io
import shutil
import signal
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from imagenet_layout import CLASSES, WNIDS_BY_ID, jpeg, write_archives, write_folder

from pitvit.data import SkippedSample, build_dataset, build_loader
from pitvit.data.formats import expand_braces
from pitvit.data.formats.imagenet import read_devkit
from pitvit.data.sampler import shard_order
from pitvit.tools.pack import pack
from pitvit.utils.errors import ConfigError, CorruptImageError, DatasetError, OutputError

pytest.importorskip("pyarrow")
pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The same images as a folder, ImageNet's archives, shards and Parquet files (shards of 5 samples)."""
    t = tmp_path_factory.mktemp("layouts")
    folder, truth = write_folder(t / "folder")
    write_archives(folder, t / "imagenet", truth)
    pack(str(folder), str(t / "wds"), shard_size=5)
    pack(str(folder), str(t / "parquet"), fmt="parquet", shard_size=5)
    return t


FORMATS = ("imagenet", "wds", "parquet")


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_holds_the_folders_samples_in_its_order(layouts, fmt):
    """Sample i of each format is file i of torchvision's ImageFolder over the extracted folders: same bytes, same
    label, same class list (sorted WordNet IDs, whatever the devkit's ILSVRC2012_ID order), in train and val."""
    from torchvision.datasets import ImageFolder

    for split in ("train", "val"):
        ref = ImageFolder(str(layouts / "folder" / split))
        ds = build_dataset(layouts / fmt, split)  # the format is detected
        assert ds.kind == fmt and ds.classes == ref.classes == CLASSES
        assert len(ds) == len(ref.samples)
        for i, (path, label) in enumerate(ref.samples):
            assert ds.read_bytes(i) == Path(path).read_bytes(), (split, i)
            assert ds.targets[i] == label
        img, label = ds[0]
        assert img.size == (24, 24) and label == ref.samples[0][1]


def _fit(data: str, out: Path, *extra: str) -> dict:
    from pitvit.train import load_config
    from pitvit.train.runner import fit

    fit(load_config(None, ["model.name=pit_test", "data.batch_size=8", "data.num_workers=0", "train.amp=none",
                           "train.epochs=1", "data.input_size=32", "log.plot=false", "optim.lr=2e-3",
                           "optim.lr_base_batch=0", "sched.warmup_epochs=0", f"data.path={data}",
                           f"train.output={out}", *extra]))
    return torch.load(out / "last.pt", weights_only=True)["state_dict"]


def test_one_epoch_from_each_format_gives_the_folder_runs_weights(layouts, tmp_path):
    """A 1-epoch pit_test run (official augmentation, mixup, EMA) from the archives, the shards and the Parquet
    files ends with the weights of the same run from the image folder, bit for bit; shard-wise shuffling, a
    different order, does not (the comparison can fail)."""
    ref = _fit(str(layouts / "folder"), tmp_path / "folder")
    for fmt in FORMATS:
        got = _fit(str(layouts / fmt), tmp_path / fmt)
        assert all(torch.equal(got[k], ref[k]) for k in ref), fmt
    other = _fit(str(layouts / "wds"), tmp_path / "shards", "data.shuffle=shards", "data.shard_window=2")
    assert not all(torch.equal(other[k], ref[k]) for k in ref)


def test_predict_over_each_format_gives_the_folders_top_k(layouts):
    """predict over ImageNet's archives, the shards and the Parquet files gives, sample for sample, exactly the
    top-k (indices and probabilities, bit for bit) and the labels of predict over the image folder they were packed
    from, each sample named by its dataset; the folder's own run gives what predict over its image files as loose
    files gives (the file path, which reads no dataset), and torchvision's ImageFolder's labels. Every sample's
    top-k differs from every other's, so a sample out of order would fail the comparison."""
    from torchvision.datasets import ImageFolder

    from pitvit.models import create_model
    from pitvit.tools.predict import predict_dataset, predict_files

    torch.manual_seed(0)
    model = create_model("pit_test")
    common = dict(topk=3, batch_size=4, amp="fp32")
    for split in ("train", "val"):
        ref = ImageFolder(str(layouts / "folder" / split))
        folder, errors = predict_dataset(model, build_dataset(layouts / "folder", split), **common)
        assert not errors and [p.path for p in folder] == [path for path, _ in ref.samples]
        assert [p.label for p in folder] == [(t, CLASSES[t]) for _, t in ref.samples]
        assert len({tuple(p.top) for p in folder}) == len(folder) == len(ref.samples)
        files, _ = predict_files(model, [path for path, _ in ref.samples], **common)
        assert [p.top for p in files] == [p.top for p in folder] and {p.label for p in files} == {None}
        for fmt in FORMATS:
            ds = build_dataset(layouts / fmt, split)
            got, errors = predict_dataset(model, ds, **common)
            assert not errors and [p.path for p in got] == [ds.sample_name(i) for i in range(len(ds))]
            assert [(p.top, p.label) for p in got] == [(p.top, p.label) for p in folder], (fmt, split)


def test_predict_cli_data_json_csv_table_backends_and_unreadable_members(layouts, tmp_path, capsys):
    """`pitvit predict --data` over Parquet files and shards: each sample's name, true label and top-k (the
    reference: predict_dataset over the image folder, in fp32) in JSON, CSV and the table; onnxruntime gives the
    same top-1; a member that does not decode is reported on stderr and skipped."""
    import csv
    import json

    import numpy as np

    from pitvit.cli import main as cli
    from pitvit.models import create_model, save_pretrained
    from pitvit.tools.evaluate import load_model
    from pitvit.tools.predict import predict_dataset

    torch.manual_seed(0)
    save_pretrained(create_model("pit_test"), tmp_path / "m")
    ref, _ = predict_dataset(load_model(None, tmp_path / "m"), build_dataset(layouts / "folder", "val"), topk=2,
                             batch_size=4, amp="fp32")
    parquet = build_dataset(layouts / "parquet", "val")
    args = ["predict", "--data", str(layouts / "parquet"), "--weights", str(tmp_path / "m"), "--topk", "2",
            "--batch-size", "4"]
    assert cli(args + ["--precision", "fp32", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [parquet.sample_name(i) for i in range(len(parquet))]
    assert rows[0]["path"].endswith(".parquet:row 0")
    assert [r["label"] for r in rows] == [{"index": p.label[0], "name": p.label[1]} for p in ref]
    assert [[(q["index"], q["name"], q["prob"]) for q in r["predictions"]] for r in rows] == [p.top for p in ref]
    assert cli(args + ["--backend", "onnxruntime", "--cache-dir", "none", "--format", "json"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert [r["predictions"][0]["index"] for r in onnx] == [p.top[0][0] for p in ref]
    assert [r["predictions"][0]["prob"] for r in onnx] == pytest.approx([p.top[0][2] for p in ref], abs=1e-5)

    shards = ["predict", "--data", str(layouts / "wds"), "--data-format", "wds", "--split", "val", "--weights",
              str(tmp_path / "m"), "--topk", "2", "--precision", "fp32"]
    assert cli(shards + ["--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 2 * len(ref) and table[0]["path"].endswith(".tar:00000000.jpeg")
    assert [(int(r["label_index"]), r["label_name"]) for r in table[::2]] == [p.label for p in ref]
    assert [int(r["index"]) for r in table] == [i for p in ref for i, _, _ in p.top]
    assert cli(shards) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith(f".tar:00000000.jpeg  (label: {ref[0].label[1]} ({ref[0].label[0]}))")
    assert lines[1].strip() == f"{100 * ref[0].top[0][2]:6.2f}%  {ref[0].top[0][1]} ({ref[0].top[0][0]})".strip()

    rng = np.random.default_rng(0)
    _shard(tmp_path / "d" / "val" / "a.tar", [("k0.jpg", jpeg(rng, 0)), ("k0.cls", b"0"),
                                              ("k1.jpg", b"not a jpeg"), ("k1.cls", b"1")])
    assert cli(["predict", "--data", str(tmp_path / "d"), "--model", "pit_test", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert [r["path"] for r in json.loads(captured.out)] == [f"{tmp_path / 'd' / 'val' / 'a.tar'}:k0.jpg"]
    assert f"cannot read {tmp_path / 'd' / 'val' / 'a.tar'}:k1.jpg: " in captured.err


def test_shard_order_reads_a_window_of_shards_at_a_time():
    sizes = [3, 4, 2, 5, 3]
    starts = [0, 3, 7, 9, 14]
    a = shard_order(sizes, seed=1, epoch=2, window=2)
    assert a == shard_order(sizes, seed=1, epoch=2, window=2)  # a function of (seed, epoch)
    assert a != shard_order(sizes, seed=1, epoch=3, window=2)
    assert sorted(a) == list(range(17))
    shard_of = [max(k for k in range(5) if starts[k] <= i) for i in a]
    pos = 0
    seen = []
    while pos < len(a):  # each window: exactly the samples of 2 (the last: 1) whole shards
        first = shard_of[pos]
        window = {first}
        n = 0
        while pos + n < len(a) and (len(window) < 2 or shard_of[pos + n] in window):
            window.add(shard_of[pos + n])
            n += 1
        if len(window) == 2 or pos + n == len(a):
            assert n == sum(sizes[k] for k in window)
        seen += sorted(window)
        pos += n
    assert sorted(seen) == list(range(5))


def test_shards_shuffle_needs_a_dataset_in_shards(layouts):
    with pytest.raises(ConfigError, match="shuffle=shards needs a dataset held in shards"):
        build_loader(build_dataset(layouts / "folder", "train"), batch_size=4, train=True, seed=0,
                     shuffle="shards", num_workers=0)


def test_brace_patterns_and_split_placeholder(layouts, tmp_path):
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{train,val}-{8..10}") == ["train-8", "train-9", "train-10", "val-8", "val-9", "val-10"]
    ds = build_dataset(f"{layouts}/wds/{{split}}/{{split}}-{{000000..000001}}.tar", "val")
    assert ds.kind == "wds" and len(ds) == 6 and ds.classes == CLASSES
    with pytest.raises(DatasetError, match="1 of the 3 files named by"):
        build_dataset(f"{layouts}/wds/val/val-{{000000..000002}}.tar", "val", kind="wds")
    # the Hugging Face Hub's flat layout (timm/imagenet-1k-wds: imagenet1k-train-0000.tar ...), found by --data DIR
    for k, shard in enumerate(sorted((layouts / "wds" / "train").glob("*.tar"))):
        shutil.copy(shard, tmp_path / f"imagenet1k-train-{k:04d}.tar")
    ds = build_dataset(tmp_path, "train")
    assert ds.kind == "wds" and len(ds) == 24 and ds.classes == [str(i) for i in range(3)]  # no classes.txt


def test_devkit_classes_and_ids(layouts):
    classes, ids, truth, where = read_devkit(layouts / "imagenet")
    assert classes == CLASSES and ids == {i + 1: w for i, w in enumerate(WNIDS_BY_ID)}  # the inner node is no class
    assert len(truth) == 6 and where.endswith("ILSVRC2012_devkit_t12.tar.gz")


def test_index_is_cached_beside_the_data_else_in_the_cache_folder_and_rebuilt_on_change(tmp_path, monkeypatch):
    from pitvit.data.formats import index as index_mod

    folder, _ = write_folder(tmp_path / "f", n_train=2, n_val=1)
    pack(str(folder), str(tmp_path / "w"), shard_size=4)
    shards = tmp_path / "w" / "train"
    built = []
    real = index_mod.SampleIndex.from_rows
    monkeypatch.setattr(index_mod.SampleIndex, "from_rows", lambda *a, **k: built.append(1) or real(*a, **k))
    assert len(build_dataset(tmp_path / "w", "train")) == 6 and len(built) == 1
    assert len(list(shards.glob(".pitvit-index-*.npz"))) == 1
    build_dataset(tmp_path / "w", "train")
    assert len(built) == 1  # read from the cache
    with tarfile.open(shards / "train-000001.tar", "a") as tf:  # a changed shard: one more sample
        for name, data in (("extra.jpg", jpeg(__import__("numpy").random.default_rng(0), 0)), ("extra.cls", b"2")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    ds = build_dataset(tmp_path / "w", "train")
    assert len(built) == 2 and len(ds) == 7 and ds.targets[-1] == 2
    # a folder it cannot write: the index goes to $XDG_CACHE_HOME/pitvit/index
    for p in shards.glob(".pitvit-index-*"):
        p.unlink()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(index_mod.os, "access", lambda *a: False)
    build_dataset(tmp_path / "w", "train")
    assert not list(shards.glob(".pitvit-index-*"))
    assert len(list((tmp_path / "cache" / "pitvit" / "index").glob("*.npz"))) == 1


def _shard(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_bad_shards_fail_in_one_line_naming_the_file_and_member(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    good = [(f"k{i}.jpg", jpeg(rng, 0)) for i in range(2)] + [(f"k{i}.cls", b"1") for i in range(2)]
    # a truncated shard (cut inside a member, and cut at a header)
    s = _shard(tmp_path / "cut" / "train" / "a.tar", good)
    data = s.read_bytes()
    s.write_bytes(data[:700])
    with pytest.raises(DatasetError, match=r"a\.tar is truncated or damaged after member k0\.jpg"):
        build_dataset(tmp_path / "cut", "train", kind="wds")
    s.write_bytes(data[:512 * 3 + 100])
    with pytest.raises(DatasetError, match=r"a\.tar is truncated"):
        build_dataset(tmp_path / "cut", "train", kind="wds")
    _shard(tmp_path / "nolabel" / "train" / "a.tar", good[:3])
    with pytest.raises(DatasetError, match=r"a\.tar: member k1\.jpg has no label \(k1\.cls is missing\)"):
        build_dataset(tmp_path / "nolabel", "train")
    _shard(tmp_path / "range" / "train" / "a.tar", good[:3] + [("k1.cls", b"3")])
    (tmp_path / "range" / "classes.txt").write_text("a\nb\nc\n")
    with pytest.raises(DatasetError, match=r"a\.tar: member k1\.cls: label 3 is out of range \(classes.txt names 3"):
        build_dataset(tmp_path / "range", "train")
    (tmp_path / "notar" / "train").mkdir(parents=True)
    (tmp_path / "notar" / "train" / "a.tar").write_bytes(b"x" * 2000)
    with pytest.raises(DatasetError, match=r"a\.tar: cannot read it as a tar"):
        build_dataset(tmp_path / "notar", "train")


def test_a_corrupt_member_is_skipped_and_counted_or_fails_when_strict(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    _shard(tmp_path / "d" / "train" / "a.tar", [("k0.jpg", jpeg(rng, 0)), ("k0.cls", b"0"),
                                                ("k1.jpg", b"not a jpeg"), ("k1.cls", b"1")])
    from pitvit.data import build_transform

    ds = build_dataset(tmp_path / "d", "train", transform=build_transform(False, input_size=16, mean=(0.5,) * 3,
                                                                          std=(0.5,) * 3))
    assert isinstance(ds[1], SkippedSample) and ds[1].path.endswith("a.tar:k1.jpg")
    loader = build_loader(ds, batch_size=2, train=False, seed=0, num_workers=0)
    assert [len(y) for _, y in loader] == [1] and loader.skipped == 1
    strict = build_dataset(tmp_path / "d", "train", strict_images=True)
    with pytest.raises(CorruptImageError, match=r"a\.tar:k1\.jpg"):
        strict[1]


def test_parquet_columns_detected_given_or_missing(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import numpy as np

    rng = np.random.default_rng(0)
    imgs = [jpeg(rng, c) for c in (0, 1, 2)]
    d = tmp_path / "hf" / "data"
    d.mkdir(parents=True)
    # the Hugging Face Hub's layout: an Image feature (a {bytes, path} struct) and a label column
    pq.write_table(pa.table({"image": pa.array([{"bytes": b, "path": None} for b in imgs]), "label": [2, 0, 1]}),
                   d / "train-00000-of-00001.parquet")
    ds = build_dataset(tmp_path / "hf", "train")
    assert ds.kind == "parquet" and ds.targets == [2, 0, 1] and ds.read_bytes(1) == imgs[1]
    (tmp_path / "odd" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"a": imgs, "b": imgs, "y": [0, 1, 2], "z": [0, 0, 0]}),
                   tmp_path / "odd" / "train" / "p.parquet")
    with pytest.raises(DatasetError, match=r"p\.parquet: cannot tell which column holds the image .* "
                                           r"data\.image_column"):
        build_dataset(tmp_path / "odd", "train")
    ds = build_dataset(tmp_path / "odd", "train", image_column="b", label_column="y")
    assert ds.read_bytes(2) == imgs[2] and ds.targets == [0, 1, 2]
    with pytest.raises(DatasetError, match=r"p\.parquet: no integer label column 'q' among its columns"):
        build_dataset(tmp_path / "odd", "train", image_column="b", label_column="q")
    (tmp_path / "neg" / "train").mkdir(parents=True)
    pq.write_table(pa.table({"image": imgs, "label": [0, -1, 2]}), tmp_path / "neg" / "train" / "p.parquet")
    with pytest.raises(DatasetError, match=r"p\.parquet: row 1: label -1 is missing or out of range"):
        build_dataset(tmp_path / "neg", "train")


def test_parquet_rows_located_to_the_byte_read_what_pyarrow_reads(layouts, tmp_path):
    """Files of one-row groups (what pack writes) are indexed down to each image's bytes and read with one
    pread; the reference is pyarrow reading the same cells. Files laid out otherwise (groups of several rows,
    compressed pages, no dictionary page) are read through pyarrow. A file rewritten in place under the same size
    and time is caught by the length check and the row skipped, never decoded from the wrong bytes."""
    import os

    import pyarrow as pa
    import pyarrow.parquet as pq

    packed = build_dataset(layouts / "parquet", "train")
    assert packed.index.meta["direct"] == [True] * len(packed.index.files)
    for f in packed.index.files:
        cells = pq.read_table(f, columns=["image"]).column(0).to_pylist()
        rows = [i for i in range(len(packed)) if packed.index.files[packed.index.file[i]] == f]
        assert [packed.read_bytes(i) for i in rows] == cells
    src = pq.read_table(packed.index.files[0])
    for name, opts in (("groups", dict(row_group_size=2)), ("snappy", dict(row_group_size=1, compression="snappy")),
                       ("plain", dict(row_group_size=1, use_dictionary=False))):
        (tmp_path / name / "train").mkdir(parents=True)
        pq.write_table(src, tmp_path / name / "train" / "p.parquet", **opts)
        ds = build_dataset(tmp_path / name, "train")
        assert ds.index.meta["direct"] == [False], name
        assert [ds.read_bytes(i) for i in range(len(ds))] == src.column("image").to_pylist(), name
    (tmp_path / "moved" / "train").mkdir(parents=True)
    path = tmp_path / "moved" / "train" / "p.parquet"
    pq.write_table(src, path, row_group_size=1, compression="none")
    ds = build_dataset(tmp_path / "moved", "train", transform=lambda im: 0)
    assert ds.index.meta["direct"] == [True] and ds[1] == (0, src.column("label")[1].as_py())
    st, at = os.stat(path), int(ds.index.offset[1]) - 4
    with open(path, "r+b") as fh:  # the length before row 1's image, changed; size and mtime kept
        fh.seek(at)
        fh.write(b"\xff\xff\xff\x7f")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ds = build_dataset(tmp_path / "moved", "train", transform=lambda im: 0)
    assert ds.index.meta["direct"] == [True]  # the cached index: the file looks unchanged
    skipped = ds[1]
    assert isinstance(skipped, SkippedSample) and "not where the file's index says" in skipped.reason
    assert ds[0] == (0, src.column("label")[0].as_py())
    with pytest.raises((OSError, pa.ArrowException)):  # pyarrow agrees the file is damaged there
        pq.read_table(path).column("image").to_pylist()


def test_missing_pyarrow_names_the_extra(layouts, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=r"pip install 'pitvit\[parquet\]'"):
        pack(str(layouts / "folder"), "/nonexistent/out", fmt="parquet")


def test_devkit_that_does_not_match_the_archive(tmp_path):
    folder, truth = write_folder(tmp_path / "f", n_train=1, n_val=1)
    arch = write_archives(folder, tmp_path / "a", truth, wnids_by_id=["n03000003", "n01000001", "n09999999"])
    with pytest.raises(DatasetError, match=r"devkit .*ILSVRC2012_devkit_t12\.tar\.gz does not match "
                                           r".*ILSVRC2012_img_train\.tar: .*\['n02000002'\].*\['n09999999'\]"):
        build_dataset(arch, "train")
    arch = write_archives(folder, tmp_path / "b", truth[:2])  # the ground truth misses image 3
    with pytest.raises(DatasetError, match=r"does not match .*ILSVRC2012_img_val\.tar: member "
                                           r"ILSVRC2012_val_00000003\.JPEG has no line"):
        build_dataset(arch, "val")
    (arch / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(DatasetError, match="validation labels .* come from ImageNet's devkit"):
        build_dataset(arch, "val")
    assert len(build_dataset(arch, "train")) == 3  # training needs no devkit: classes = sorted inner tars


def test_pack_cli_summary_skips_and_refuses_a_full_folder(tmp_path, capsys):
    from pitvit.cli import main

    folder, _ = write_folder(tmp_path / "f", n_train=2, n_val=1)
    (folder / "train" / CLASSES[0] / "broken.jpg").write_bytes(b"garbage")
    assert main(["pack", str(folder), str(tmp_path / "out"), "--shard-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "train: 6 samples in 2 wds shard(s)" in out and "1 file(s) skipped" in out and "broken.jpg" in out
    assert "val: 3 samples in 1 wds shard(s)" in out
    assert (tmp_path / "out" / "classes.txt").read_text().split() == CLASSES
    assert not [p for p in (tmp_path / "out").rglob(".*tmp*")]
    assert main(["pack", str(folder), str(tmp_path / "out")]) == OutputError.exit_code
    assert "already holds files" in capsys.readouterr().err


def test_gpu_source_reads_the_same_bytes_from_shards(layouts):
    """The GPU stage's workers take the encoded bytes from the shards (no PIL): the batches equal the folder's."""
    from pitvit.data.gpu import GpuStage

    out = []
    for src in ("folder", "wds", "parquet", "imagenet"):
        stage = GpuStage("cpu", input_size=16, aug="official", prefetch=0)
        loader = build_loader(build_dataset(layouts / src, "train"), batch_size=8, train=True, seed=3, stage=stage,
                              num_workers=0)
        loader.set_epoch(0)
        out.append(list(loader))
    for other in out[1:]:
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(out[0], other))


@pytest.mark.slow
def test_sigterm_mid_epoch_on_shards_resumes_exactly(tmp_path):
    """tests/test_faults.py's interrupted-run machinery on shards read shard-wise, with a loader worker: a
    `pitvit train` whose process group gets SIGTERM in epoch 2, run again, ends with the uninterrupted run's
    weights and EMA."""
    from test_faults import _interrupt, _last, _sets, _temps

    from pitvit.cli import main as cli

    folder, _ = write_folder(tmp_path / "f", n_train=64, n_val=2)  # 192 images: 12 batches of 16 an epoch
    pack(str(folder), str(tmp_path / "w"), shard_size=10)

    def argv(run: Path) -> list[str]:
        return [sys.executable, "-m", "pitvit", "train", "--data", str(tmp_path / "w"), "--output", str(run),
                *_sets("data.num_workers=1", "train.epochs=3", "log.interval=1", "data.input_size=32",
                       "data.shuffle=shards", "data.shard_window=3")]

    assert cli(argv(tmp_path / "ref")[3:]) == 0
    ref = _last(tmp_path / "ref")
    run = tmp_path / "run"
    proc = _interrupt(argv(run), run, signal.SIGTERM)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    ckpt = _last(run)
    assert ckpt["epoch"] in (1, 2) and 0 < ckpt["step_in_epoch"] < 12 and not _temps(run)  # saved mid-epoch
    assert cli(argv(run)[3:]) == 0  # the same command again
    end = _last(run)
    assert end["epoch"] == 3
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(end[key][k], ref[key][k]) for k in ref[key]), key
