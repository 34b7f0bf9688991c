"""pitvit's PiT against timm's PiT, measured side by side in one process.

For each model, mode (inference, a full training step) and precision (fp32, bf16 autocast) both
implementations get the same weights and the same batch, rebuilt every round in alternating order; their
timings are interleaved (pitvit, timm,
pitvit, timm, ...) so that load from other processes hits both alike, and the table reports the median
time per step of each, the ratio timm / pitvit of the medians (above 1: pitvit is faster), and the ratio of
the fastest rounds (the least disturbed by other load on a shared machine).

    python benchmarks/bench_models.py                 # pit_ti and pit_s, batch 32, on this CPU
    python benchmarks/bench_models.py --models pit_b --batch 64 --device cuda
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import pitvit
from pitvit.models import load_weights


def build_pair(name: str, timm_state: dict, device: torch.device, ours_first: bool) -> list[torch.nn.Module]:
    """Both models with the same weights, built in the given order (memory placement moves with it)."""
    builders = [lambda: pitvit.create_model(name),
                lambda: timm.create_model(pitvit.get_pretrained_cfg(name).timm_name, pretrained=False)]
    built = {}
    for i in ((0, 1) if ours_first else (1, 0)):
        built[i] = builders[i]().to(device)
    load_weights(built[0], timm_state)  # the timm layout is detected and converted
    built[1].load_state_dict(timm_state)
    return [built[0], built[1]]


def make_step(model: torch.nn.Module, mode: str, amp: bool, x: torch.Tensor, y: torch.Tensor):
    dev = x.device.type
    if mode == "infer":
        model.eval()

        @torch.inference_mode()
        def step():
            with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
                return model(x)
        return step
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss
    return step


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(step, iters: int, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    return (time.perf_counter() - t) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["pit_ti", "pit_s"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=7, help="most interleaved timing rounds per row (median taken)")
    p.add_argument("--iters", type=int, default=1, help="steps per timing")
    p.add_argument("--row-seconds", type=float, default=60.0,
                   help="time budget per row: slow rows get fewer rounds (at least 3)")
    p.add_argument("--modes", nargs="+", default=["infer", "train"], choices=["infer", "train"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--max-step-seconds", type=float, default=0.0,
                   help="skip (and say so) a row whose first step takes longer than this (0: no limit)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"# torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}", flush=True)
    print("| model | mode | precision | pitvit ms/step (median) | timm ms/step (median) | ratio timm/pitvit (median) "
          "| ratio (best rounds) | rounds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        torch.manual_seed(0)
        timm_state = timm.create_model(pitvit.get_pretrained_cfg(name).timm_name, pretrained=False).state_dict()
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
        y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
        for mode in args.modes:
            for prec in args.precisions:
                amp = prec == "bf16"
                times: tuple[list[float], list[float]] = ([], [])
                rounds, r = args.rounds, 0
                while r < rounds:
                    # Each round builds both models afresh, in alternating order, and times them in alternating
                    # order: placement in memory and load from other processes then hit both alike.
                    models = build_pair(name, timm_state, device, ours_first=r % 2 == 0)
                    steps = [make_step(m, mode, amp, x, y) for m in models]
                    for s in steps:  # warm-up: allocator, kernels, optimizer state
                        warm = time_once(s, 1, device)
                        if r == 0 and args.max_step_seconds and warm > 2 * args.max_step_seconds:
                            break  # hopeless (a warm-up step costs at most ~2 timed ones): skip at once
                    else:
                        warm = 0.0
                    if warm:
                        est = warm / 2
                        break
                    order = (0, 1) if r % 2 == 0 else (1, 0)
                    for i in order:
                        times[i].append(time_once(steps[i], args.iters, device))
                    if r == 0:
                        est = max(times[0][0], times[1][0])
                        if args.max_step_seconds and est > args.max_step_seconds:
                            break
                        # bf16 without native CPU support is ~10x slower: fewer rounds keep rows near the budget
                        rounds = max(3, min(args.rounds, int(args.row_seconds / (4 * est * args.iters))))
                    r += 1
                if r < rounds:
                    print(f"| {name} | {mode} | {prec} | skipped: a step takes about {est:.0f} s "
                          f"(> --max-step-seconds {args.max_step_seconds:g}) | | | | |", flush=True)
                    continue
                t_ours, t_ref = (statistics.median(t) for t in times)
                b_ours, b_ref = (min(t) for t in times)  # the least disturbed round of each
                print(f"| {name} | {mode} | {prec} | {t_ours * 1e3:.1f} | {t_ref * 1e3:.1f} "
                      f"| {t_ref / t_ours:.3f} | {b_ref / b_ours:.3f} | {rounds} |", flush=True)


if __name__ == "__main__":
    main()
