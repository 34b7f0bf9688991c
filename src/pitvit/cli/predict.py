"""`pitvit predict`: top-k classes and probabilities for image files and folders, or a dataset's samples."""
from __future__ import annotations

from pitvit.cli import add_backend_args, add_data_format_arg, add_model_args
from pitvit.utils.names import DEVICE_CHOICES, PREDICT_FORMATS


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "predict", formatter_class=formatter, help="classify images: top-k class names and probabilities",
        description="Classify image files (folders are searched recursively), or every sample of a dataset's\n"
                    "split (--data DIR, any layout `pitvit eval` reads, each sample shown with its true label),\n"
                    "with the model's own preprocessing. Class names: the checkpoint's, or ImageNet-1k's for a\n"
                    "1000-way head. Unreadable images are reported on stderr and skipped; the exit status is 1\n"
                    "only when no image could be read.")
    p.add_argument("inputs", nargs="*", metavar="IMAGE_OR_DIR",
                   help="image files and/or folders of images (or --data instead)%(default).0s")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="classify a dataset instead: ROOT/SPLIT/CLASS/*.jpg, ROOT/SPLIT_list.txt, ImageNet's original "
                        "archives, WebDataset shards (ROOT/SPLIT/*.tar or a brace pattern with {split}), Parquet "
                        "files or Fashion-MNIST IDX files; samples are named by the dataset (FILE:MEMBER of a "
                        "shard, FILE:row N of a Parquet file)%(default).0s")
    p.add_argument("--split", default=None, help="with --data: the split to classify (default: val)%(default).0s")
    add_data_format_arg(p, "--data", default=None)
    add_model_args(p, "use")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--format", choices=PREDICT_FORMATS, default="table",
                   help="output format (with --data, each sample's true label too)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--device", default="cpu", choices=DEVICE_CHOICES,
                   help="where --backend torch runs (auto: CUDA when available); the others run on the CPU")
    add_backend_args(p, "auto")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (inductor): pays off for many images; compiling takes a while")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the predictions (in --format) to FILE, atomically, instead of printing them"
                        "%(default).0s")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from pitvit.tools.predict import format_predictions, predict

    preds, problems = predict(args.model, args.weights, args.inputs, data=args.data, split=args.split,
                              data_format=args.data_format, topk=args.topk, batch_size=args.batch_size,
                              device=args.device, amp=args.precision, compile=args.compile, ema=args.ema,
                              backend=args.backend, threads=args.threads, cache_dir=args.cache_dir,
                              calibration=args.calibration, allow_nonfinite=args.allow_nonfinite)
    for path, reason in problems:
        print(f"cannot read {path}: {reason}", file=sys.stderr)
    if preds and args.out:
        from pitvit.utils.io import write_text

        write_text(args.out, format_predictions(preds, args.format) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    elif preds:
        print(format_predictions(preds, args.format))
    return 0 if preds else 1
