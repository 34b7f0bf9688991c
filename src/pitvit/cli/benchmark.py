"""`pitvit benchmark`: parameters, GMACs, inference/training images/s and peak memory."""
from __future__ import annotations

from pitvit.cli import add_engine_args, model_name
from pitvit.utils.names import BACKEND_PRECISIONS, BACKENDS, DEVICE_CHOICES


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "benchmark", formatter_class=formatter, help="parameters, GMACs, throughput and memory of a variant",
        description="Measure a registered variant on random inputs: parameters, GMACs (multiply-accumulates\n"
                    "per image), inference and training images/s (training: forward, cross-entropy, backward,\n"
                    "AdamW step), and peak memory (CUDA max_memory_allocated; on a CPU the growth of the\n"
                    "resident set). --compare timm measures timm's pit_*_224 the same way and prints ratios.\n"
                    "--amp auto runs bf16 where the device computes it natively (CPUs with AMX or AVX-512 BF16,\n"
                    "GPUs from Ampere on) and fp32 elsewhere, and logs which.\n"
                    "--backend all|onnxruntime|openvino instead times inference engines against eager PyTorch fp32\n"
                    "in one run, at batch 1 and --batch: torch.compile, ONNX Runtime, OpenVINO (fp32, and bf16\n"
                    "where the CPU computes it natively, int8: OpenVINO with NNCF, ONNX Runtime with its dynamic\n"
                    "quantization), with the ratio to eager, the largest logit difference to eager fp32 and\n"
                    "images/s as a share of the CPU's fp32 peak; --precision P times eager fp32 and P only.")
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
    p.add_argument("--backend", default="torch", choices=("all",) + BACKENDS,
                   help="torch: the training and inference figures above; all or another backend: the table of "
                        "inference engines (CPU)")
    p.add_argument("--precision", "--amp", dest="precision", default=None, choices=BACKEND_PRECISIONS,
                   help="autocast dtype of --backend torch (default: auto, bf16 where the device computes it "
                        "natively, else fp32 (none)); in the engine table: eager fp32 and this precision only "
                        "(int8: OpenVINO and ONNX Runtime; default: every precision the CPU runs natively)"
                        "%(default).0s")
    add_engine_args(p)  # --threads, --cache-dir, --calibration
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

    if args.backend != "torch":
        from pitvit.tools.bench_backends import compare_backends, format_backends

        r = compare_backends(args.model, backend=args.backend, precision=args.precision, batch=args.batch,
                             img_size=args.img_size, threads=args.threads, rounds=args.steps,
                             cache_dir=args.cache_dir, calibration=args.calibration)
        print(json.dumps(r, indent=1) if args.format == "json" else format_backends(r))
        return 0

    from pitvit.tools.benchmark import benchmark, format_table
    from pitvit.utils.errors import ConfigError

    if args.precision == "int8":
        raise ConfigError("--precision int8 is timed in the engine table (--backend all, onnxruntime or openvino), "
                          "not by --backend torch")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    rows = benchmark(args.model, batch=args.batch, img_size=args.img_size, compare=args.compare,
                     device=args.device, amp=args.precision or "auto", compile=args.compile, steps=args.steps,
                     warmup=args.warmup, train=args.train)
    print(json.dumps(rows, indent=1) if args.format == "json" else format_table(rows))
    return 0
