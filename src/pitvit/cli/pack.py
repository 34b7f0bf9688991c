"""`pitvit pack`: a dataset written as WebDataset shards or Parquet files, for reading in place."""
from __future__ import annotations

from pitvit.cli import add_data_format_arg
from pitvit.utils.names import PACK_FORMATS

DESCRIPTION = """\
Write every split of a dataset (train, val, test: those SRC has) as WebDataset shards or Parquet files,
keeping the split folders, the class names (OUT/classes.txt) and the sample order: training from OUT gives
the weights training from SRC gives, bit for bit. Image files are copied, not re-encoded; files that cannot
be read or are not images are skipped and listed.

SRC may be any layout pitvit reads (--data of `pitvit train`; detected):
  image folder     SRC/train/CLASS/IMAGE, SRC/val/CLASS/IMAGE
  list files       SRC/train_list.txt, SRC/val_list.txt ("<path> <label>" lines)
  ImageNet         SRC/ILSVRC2012_img_train.tar, SRC/ILSVRC2012_img_val.tar, SRC/ILSVRC2012_devkit_t12.tar.gz
                   (read in place; the devkit needs scipy: pip install 'pitvit[imagenet]')
  shards, Parquet  SRC/train/*.tar, SRC/train/*.parquet

OUT:
  wds      OUT/train/train-000000.tar ... (KEY.jpg + KEY.cls per sample)
  parquet  OUT/train/train-000000.parquet ... (columns key, image, label; needs pip install 'pitvit[parquet]')

examples:
  pitvit pack /data/imagenet /data/imagenet-wds --shard-size 1000
  pitvit pack /data/imagenet /data/imagenet-parquet --format parquet
  pitvit train --config pit_ti --data /data/imagenet-wds --set data.shuffle=shards
"""


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("pack", formatter_class=formatter, help="write a dataset as WebDataset shards or Parquet",
                       description=DESCRIPTION)
    p.add_argument("src", help="the dataset to read")
    p.add_argument("out", help="the folder to write (its split folders must be empty or absent)")
    p.add_argument("--format", choices=PACK_FORMATS, default="wds", help="what to write")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard")
    p.add_argument("--row-group-size", type=int, default=1, metavar="N",
                   help="parquet: rows per row group (a random read reads a whole group)")
    add_data_format_arg(p, "SRC")
    p.set_defaults(func=run)


def run(args) -> int:
    from pitvit.tools.pack import pack

    r = pack(args.src, args.out, fmt=args.format, shard_size=args.shard_size, kind=args.data_format,
             row_group_size=args.row_group_size)
    for split, s in r["splits"].items():
        print(f"{split}: {s['samples']} samples in {s['shards']} {args.format} shard(s), "
              f"{s['bytes'] / 1e6:.1f} MB, {len(s['skipped'])} file(s) skipped")
        for name, reason in s["skipped"][:10]:
            print(f"  skipped {name}: {reason}")
        if len(s["skipped"]) > 10:
            print(f"  ... and {len(s['skipped']) - 10} more")
    print(f"wrote {r['out']} ({r['classes']} classes in classes.txt)")
    return 0
