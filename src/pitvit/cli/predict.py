"""`pitvit predict`: top-k classes and probabilities for image files and folders."""
from __future__ import annotations

from pitvit.cli import add_backend_args, add_model_args
from pitvit.utils.names import DEVICE_CHOICES, PREDICT_FORMATS


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "predict", formatter_class=formatter, help="classify images: top-k class names and probabilities",
        description="Classify image files (folders are searched recursively) with the model's own\n"
                    "preprocessing. Class names: the checkpoint's, or ImageNet-1k's for a 1000-way head.\n"
                    "Unreadable files are reported on stderr and skipped; the exit status is 1 only when\n"
                    "no image could be read.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders of images")
    add_model_args(p, "use")
    p.add_argument("--topk", type=int, default=5, help="classes shown per image")
    p.add_argument("--format", choices=PREDICT_FORMATS, default="table", help="output format")
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

    preds, problems = predict(args.model, args.weights, args.inputs, topk=args.topk, batch_size=args.batch_size,
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
