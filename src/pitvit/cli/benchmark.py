"""`pitvit benchmark`: parameters, GMACs, inference/training images/s and peak memory."""
from __future__ import annotations

from pitvit.cli import model_name
from pitvit.utils.names import AMP_CHOICES, DEVICE_CHOICES


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "benchmark", formatter_class=formatter, help="parameters, GMACs, throughput and memory of a variant",
        description="Measure a registered variant on random inputs: parameters, GMACs (multiply-accumulates\n"
                    "per image), inference and training images/s (training: forward, cross-entropy, backward,\n"
                    "AdamW step), and peak memory (CUDA max_memory_allocated; on a CPU the growth of the\n"
                    "resident set). --compare timm measures timm's pit_*_224 the same way and prints ratios.\n"
                    "--amp auto runs bf16 where the device computes it natively (CPUs with AMX or AVX-512 BF16,\n"
                    "GPUs from Ampere on) and fp32 elsewhere, and logs which.")
    # "%(default).0s" prints nothing; it stops the formatter from appending a default that means nothing
    # ("None" for a required option, "True" for a switch that turns something off).
    p.add_argument("--model", required=True, type=model_name,
                   help="registered model name, see `pitvit models` (required)%(default).0s")
    p.add_argument("--batch", type=int, default=64, help="images per step")
    p.add_argument("--img-size", type=int, default=None,
                   help="square input side in px (default: the variant's evaluation size)%(default).0s")
    p.add_argument("--compare", choices=("timm",), default=None,
                   help="also measure timm's same architecture (default: no comparison)%(default).0s")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES, help="auto: CUDA when available")
    p.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                   help="autocast dtype; auto: bf16 where the device computes it natively, else fp32 (none is fp32 too)")
    p.add_argument("--compile", action="store_true",
                   help="time torch.compile'd models (inductor; the warm-up steps compile, at least 2)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per phase")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each phase")
    p.add_argument("--no-train", dest="train", action="store_false",
                   help="measure inference only (default: inference and training)%(default).0s")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from pitvit.tools.benchmark import benchmark, format_table

    rows = benchmark(args.model, batch=args.batch, img_size=args.img_size, compare=args.compare,
                     device=args.device, amp=args.amp, compile=args.compile, steps=args.steps, warmup=args.warmup,
                     train=args.train)
    print(json.dumps(rows, indent=1) if args.format == "json" else format_table(rows))
    return 0
