"""pitvit's PiT against timm's PiT, measured side by side in one process, in several settings.

For each model and mode (inference; a full training step: forward, cross-entropy, backward, AdamW) both
implementations get the same weights and the same batch, in each setting (precision fp32/bf16, eager or
``torch.compile``), and every one of those steps is timed once per round, in an order that rotates from round to
round (:func:`pitvit.tools.benchmark.compare_settings`): load from other processes hits all of them alike, and
the ratios between settings come from the same rounds. The table reports the median time per step, the ratio
timm / pitvit of the medians (above 1: pitvit is faster) and of the fastest rounds, and each implementation's
speed-up over the first setting (the median over rounds of the per-round ratio). Warm-up (which compiles a
compiled setting) is reported apart.

    python benchmarks/bench_models.py                      # pit_ti and pit_s, batch 32, fp32 / bf16 / fp32+compile
    python benchmarks/bench_models.py --models pit_s --modes infer --settings fp32 fp32+compile
    python benchmarks/bench_models.py --models pit_b --batch 256 --device cuda --settings bf16 bf16+compile
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import timm
import torch

from pitvit.tools.benchmark import compare_settings, parse_setting
from pitvit.utils.device import cpu_bf16_support


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    if torch.cuda.is_available():
        gpu = f", {torch.cuda.get_device_name()}"
    else:
        gpu = ""
    native = cpu_bf16_support()
    return (f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, native bf16: {native or 'none'}; "
            f"auto precision on this CPU: {'bf16' if native else 'fp32'}){gpu}")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def print_rows(res: dict, base: str) -> None:
    for name, r in res["settings"].items():
        up = r.get("speedup", {})
        print(f"| {res['model']} | {res['mode']} | {name} | {r['pitvit_ms']:.1f} | {r['timm_ms']:.1f} "
              f"| {r['timm_over_pitvit']:.3f} | {r['best_ratio']:.3f} | {up.get('pitvit', float('nan')):.2f} "
              f"| {up.get('timm', float('nan')):.2f} | {r['warmup_s']['pitvit']:.1f} / {r['warmup_s']['timm']:.1f} "
              f"| {res['rounds']} |", flush=True)
    for name, why in res["skipped"].items():
        print(f"| {res['model']} | {res['mode']} | {name} | skipped: {why} | | | | | | | |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["pit_ti", "pit_s"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--settings", nargs="+", default=["fp32", "bf16", "fp32+compile"],
                   help="precision (fp32, bf16, fp16) optionally with +compile; the first is the speed-ups' base")
    p.add_argument("--rounds", type=int, default=7, help="most timing rounds per row (medians taken)")
    p.add_argument("--iters", type=int, default=1, help="steps per timing")
    p.add_argument("--row-seconds", type=float, default=120.0,
                   help="time budget of a row's timed rounds (fewer rounds when slow, at least 3)")
    p.add_argument("--max-step-seconds", type=float, default=60.0,
                   help="a setting whose step takes longer than this after its warm-up is timed no further and "
                        "reported as skipped (0: no limit; emulated bf16 training takes about a minute per step "
                        "on a 2-core AVX2 CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", default="", help="also write the results to this JSON file")
    args = p.parse_args()
    for s in args.settings:
        parse_setting(s)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, timm {timm.__version__}, {machine()}, {torch.get_num_threads()} threads, "
          f"device {args.device}, batch {args.batch}", flush=True)
    print(f"# load average (1, 5, 15 min) at start: {load()}", flush=True)
    base = args.settings[0]
    print(f"| model | mode | setting | pitvit ms/step | timm ms/step | timm/pitvit (median) | timm/pitvit (best) "
          f"| pitvit speed-up vs {base} | timm speed-up vs {base} | warm-up s pitvit / timm | rounds |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    results = []
    for name in args.models:
        for mode in args.modes:
            res = compare_settings(name, mode=mode, settings=args.settings, batch=args.batch, device=args.device,
                                   rounds=args.rounds, iters=args.iters, budget_s=args.row_seconds,
                                   max_step_s=args.max_step_seconds)
            print_rows(res, base)
            results.append(res)
    print(f"# load average at end: {load()}", flush=True)
    if args.json:
        from pitvit.utils.io import write_text

        write_text(args.json, json.dumps({"machine": machine(), "torch": torch.__version__, "rows": results},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
