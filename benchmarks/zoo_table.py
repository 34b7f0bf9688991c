"""The README's model zoo table: parameters, GMACs, paper top-1, and CPU inference images/s.

    python benchmarks/zoo_table.py                  # batch 32, fp32, this machine's CPU

Images/s come from `pitvit benchmark --model NAME --batch 32 --no-train --device cpu` (the same function),
measured one variant after the other in this process.
"""
from __future__ import annotations

import argparse

from pitvit.models import get_pretrained_cfg
from pitvit.tools.benchmark import benchmark
from pitvit.tools.zoo import zoo_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    args = p.parse_args()
    print("| model | params | GMACs | input | paper top-1 | CPU img/s (batch %d) |" % args.batch)
    print("|---|---:|---:|---|---:|---:|")
    order = ["pit_ti", "pit_xs", "pit_s", "pit_b"]
    rank = {n: i for i, n in enumerate(order + [f"{n}_distilled" for n in order])}
    for row in sorted(zoo_rows(), key=lambda r: (rank.get(r["model"], len(rank)), r["model"])):
        name = row["model"]
        (bench,) = benchmark(name, batch=args.batch, device="cpu", steps=args.steps, warmup=args.warmup,
                             train=False)
        pre = get_pretrained_cfg(name)
        top1 = "-" if pre.paper_top1 is None else f"{pre.paper_top1:.1f}"
        print(f"| `{name}` | {row['params']:,} | {row['gmacs']:.3f} | {row['input']} | {top1} "
              f"| {bench['infer_img_s']:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
