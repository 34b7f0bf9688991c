"""Reading the same JPEGs from an image folder, ImageNet's archive layout, WebDataset shards and Parquet files.

Generates ``--n`` baseline JPEGs of ImageNet's sizes (about 500x375, quality 90; ``bench_datapipe.make_folder``)
once into a temporary folder, in ``--classes`` class folders, then writes them as the original training archive
(a tar of per-class tars), as shards and as Parquet files (``pitvit pack``, ``--shard-size`` samples each).
For each layout it reports the time to build the index (the first read of a layout; the image folder's is the
folder walk) extrapolated linearly to ImageNet's 1,281,167 training images, and the samples/s of a training
loader (the global random order of ``pitvit train``; ``shards``: ``data.shuffle=shards``) reading and decoding
``--samples`` samples (``load_image``; no augmentation), with 1 and 2 worker processes, and each rate's ratio to
the folder's, all measured in the same run: the median of ``--rounds`` rounds, each over every row. The last
column is the CPU time (main process and workers) per sample read, median over rounds and worker counts: on a
machine other jobs share, the wall-clock rates move with their load, the CPU time hardly.

    python benchmarks/bench_formats.py --n 10000
"""
from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_datapipe import make_folder  # noqa: E402

from pitvit.data import build_dataset, build_loader  # noqa: E402
from pitvit.tools.pack import pack  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def decoded(img) -> torch.Tensor:
    """What the loader carries back: the decoded image's size (the decode is what is measured)."""
    return torch.tensor(img.size)


def write_train_archive(folder: Path, out: Path) -> None:
    """ImageNet's ``ILSVRC2012_img_train.tar``: one inner tar per class folder."""
    out.mkdir(parents=True)
    tmp = out / ".ILSVRC2012_img_train.tar.partial"
    with tarfile.open(tmp, "w") as outer:
        for cls in sorted(folder.iterdir()):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for f in sorted(cls.iterdir()):
                    inner.add(f, arcname=f.name)
            info = tarfile.TarInfo(f"{cls.name}.tar")
            info.size = buf.tell()
            buf.seek(0)
            outer.addfile(info, buf)
    tmp.rename(out / "ILSVRC2012_img_train.tar")


def drop_indexes(root: Path) -> None:
    for p in root.rglob(".pitvit-index-*"):
        p.unlink()


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the loader's workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def rate(root: Path, workers: int, shuffle: str, batch: int, samples: int, epoch: int) -> tuple[float, float]:
    """``(samples/s, CPU ms per sample)`` over the first ``samples`` of an epoch's order: wall time after the
    first batch (the workers started), CPU time of the main process and its workers over all batches read.

    On a machine shared with other work the wall-clock rate moves with the others' load; the CPU time per
    sample, what reading and decoding cost, barely does."""
    ds = build_dataset(root, "train", transform=decoded)
    loader = build_loader(ds, batch_size=batch, train=True, seed=0, num_workers=workers, shuffle=shuffle,
                          persistent_workers=False, pin_memory=False)
    loader.set_epoch(epoch)
    cpu0 = _cpu_seconds()
    n, total, t0 = 0, 0, None
    batches = iter(loader)
    for _, y in batches:
        total += len(y)
        if t0 is None:
            t0 = time.perf_counter()
            continue
        n += len(y)
        if n >= samples:
            break
    wall = time.perf_counter() - t0
    del batches  # shuts the workers down and joins them, so that their CPU time is counted
    gc.collect()
    return n / wall, (_cpu_seconds() - cpu0) / total * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000, help="JPEGs to generate")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--shard-size", type=int, default=1000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--samples", type=int, default=3000, help="samples read per measurement")
    p.add_argument("--rounds", type=int, default=3, help="measurements per row (the median is reported)")
    p.add_argument("--dir", default=None, help="where to generate (default: a temporary folder, removed after)")
    args = p.parse_args()
    torch.set_num_threads(1)
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="pitvit-bench-formats-"))
    try:
        t0 = time.perf_counter()
        folder = tmp / "folder"
        if not (folder / "train").is_dir():
            make_folder(folder, args.n, classes=args.classes)
        print(f"# {args.n} JPEGs generated in {time.perf_counter() - t0:.0f} s", flush=True)
        layouts = {"image folder": folder}
        if not (tmp / "imagenet" / "ILSVRC2012_img_train.tar").is_file():
            shutil.rmtree(tmp / "imagenet", ignore_errors=True)
            write_train_archive(folder / "train", tmp / "imagenet")
        layouts["ImageNet training archive (tar of tars)"] = tmp / "imagenet"
        for fmt in ("wds", "parquet"):
            if not (tmp / fmt / "classes.txt").is_file():  # written last: the folder is complete
                shutil.rmtree(tmp / fmt, ignore_errors=True)
                pack(str(folder), str(tmp / fmt), fmt=fmt, shard_size=args.shard_size, progress=False)
            layouts[f"{fmt} shards" if fmt == "wds" else "Parquet"] = tmp / fmt
        rows = []
        for name, root in layouts.items():
            drop_indexes(root)
            t0 = time.perf_counter()
            n = len(build_dataset(root, "train"))
            build = time.perf_counter() - t0
            for order in ["global", "shards"] if root != folder else ["global"]:
                rows.append([name if order == "global" else f"{name}, data.shuffle=shards", n, build, root, order,
                             [[] for _ in args.workers]])
        # rounds over every row and worker count, so that a busy spell of a shared machine hits all rows alike;
        # each round reads other samples (another epoch's order), the median is reported
        for r in range(args.rounds):
            for row in rows:
                for k, w in enumerate(args.workers):
                    row[5][k].append(rate(row[3], w, row[4], args.batch, args.samples, r))
            print(f"# round {r + 1}: " + "; ".join(
                f"{row[0]} {[(round(x[-1][0]), round(x[-1][1], 2)) for x in row[5]]}" for row in rows), flush=True)
        rows = [(name, n, build, [statistics.median(v[0] for v in x) for x in rates],
                 statistics.median(v[1] for x in rates for v in x)) for name, n, build, _, _, rates in rows]
        base, base_cpu = rows[0][3], rows[0][4]
        print(f"\n{args.n} JPEGs, {args.classes} classes, shards of {args.shard_size}, median of {args.rounds} "
              f"rounds of {args.samples} samples; "
              f"{datetime.now(timezone.utc):%Y-%m-%d}, {platform.machine()} {os.cpu_count()} CPUs, "
              f"torch {torch.__version__}\n")
        head = " | ".join(f"{w} worker{'s' * (w > 1)}: samples/s (x folder)" for w in args.workers)
        print(f"| layout | samples | index build (s) | extrapolated to 1.28 M (min) | {head} | "
              f"CPU ms per sample (x folder) |")
        print("|---|---|---|---|" + "---|" * len(args.workers) + "---|")
        for name, n, build, rates, cpu in rows:
            cells = " | ".join(f"{r:.0f} ({r / b:.2f})" for r, b in zip(rates, base))
            print(f"| {name} | {n} | {build:.2f} | {build / n * IMAGENET_TRAIN / 60:.1f} | {cells} | "
                  f"{cpu:.2f} ({cpu / base_cpu:.2f}) |")
    finally:
        if args.dir is None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
