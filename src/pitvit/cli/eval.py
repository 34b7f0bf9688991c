"""`pitvit eval`: top-1, top-5 and loss on a labelled dataset, on 1..N processes (torchrun)."""
from __future__ import annotations

from pitvit.cli import add_backend_args, add_data_format_arg, add_model_args
from pitvit.utils.names import DEVICE_CHOICES


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "eval", formatter_class=formatter, help="top-1/top-5/loss of a model on a labelled dataset",
        description="Evaluate a model with its own preprocessing (input size, crop_pct, interpolation,\n"
                    "mean/std from the checkpoint or the registry). Several processes:\n"
                    "  torchrun --nproc_per_node=N -m pitvit eval ...")
    add_model_args(p, "evaluate")
    p.add_argument("--data", default=None, metavar="DIR",
                   help="dataset root: ROOT/SPLIT_list.txt, ROOT/SPLIT/CLASS/*.jpg, ImageNet's original archives, "
                        "WebDataset shards (ROOT/SPLIT/*.tar or a brace pattern with {split}), Parquet files "
                        "(ROOT/SPLIT/*.parquet) or Fashion-MNIST IDX files "
                        "(default: the Fashion-MNIST package folder)%(default).0s")
    p.add_argument("--split", default="val", help="split to evaluate")
    add_data_format_arg(p, "--data")
    p.add_argument("--batch-size", type=int, default=64, help="images per process and step")
    p.add_argument("--workers", type=int, default=4, help="data-loading processes per process")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES,
                   help="where --backend torch runs (auto: CUDA when available); the others run on the CPU")
    add_backend_args(p, "fp32", " (the default here: published figures are measured in fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor) before evaluating")
    p.add_argument("--out", default=None, metavar="JSON",
                   help="also write the result here as JSON (default: print only)%(default).0s")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import os
    import sys

    from pitvit.tools.evaluate import evaluate_model
    from pitvit.utils.io import write_text

    r = evaluate_model(args.model, args.weights, args.data, split=args.split, kind=args.data_format, ema=args.ema,
                       allow_nonfinite=args.allow_nonfinite, batch_size=args.batch_size, workers=args.workers,
                       device=args.device, amp=args.precision, compile=args.compile, backend=args.backend,
                       threads=args.threads, cache_dir=args.cache_dir,
                       calibration=args.calibration)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    what = r["model"] + (" (EMA)" if r["ema"] else "")
    # Printed before --out is written: a path that cannot be written loses nothing.
    print(f"{what} on {r['data'] or 'Fashion-MNIST'} [{r['split']}], {r['n']} images"
          + (f" ({r['skipped_images']} unreadable, skipped)" if r["skipped_images"] else "")
          + f": top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}  "
          f"[{r['backend']} {r['precision']}]", flush=True)
    if args.out:
        write_text(args.out, json.dumps(r, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
