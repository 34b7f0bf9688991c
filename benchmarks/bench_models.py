"""pitvit's PiT against timm's PiT, measured side by side in one process.

For each model, mode (inference, a full training step) and precision (fp32, bf16 autocast) both
implementations get the same weights and the same batch; their timings are interleaved (pitvit, timm,
pitvit, timm, ...) so that load from other processes hits both alike, and the table reports the median
time per step of each and the ratio timm / pitvit (above 1: pitvit is faster).

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
from pitvit.models.weights import load_weights


def build_pair(name: str, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = pitvit.create_model(name).to(device)
    ref = timm.create_model(ours.pretrained_cfg.timm_name, pretrained=False).to(device)
    load_weights(ours, ref.state_dict())  # the timm layout is detected and converted
    return ours, ref


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
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    print(f"# torch {torch.__version__}, timm {timm.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {device}, batch {args.batch}", flush=True)
    print("| model | mode | precision | pitvit ms/step | timm ms/step | ratio timm/pitvit | rounds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        ours, ref = build_pair(name, device)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.batch, 3, 224, 224, generator=g).to(device)
        y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
        for mode in ("infer", "train"):
            for amp in (False, True):
                steps = [make_step(m, mode, amp, x, y) for m in (ours, ref)]
                est = 0.0
                for s in steps:  # warm-up (allocator, kernels, optimizer state) and a first estimate
                    s()
                    est = max(est, time_once(s, 1, device))
                # bf16 without native CPU support is ~10x slower: fewer rounds keep each row near the budget
                rounds = max(3, min(args.rounds, int(args.row_seconds / (2 * est * args.iters))))
                times = ([], [])
                for r in range(rounds):
                    order = (0, 1) if r % 2 == 0 else (1, 0)
                    for i in order:
                        times[i].append(time_once(steps[i], args.iters, device))
                t_ours, t_ref = (statistics.median(t) for t in times)
                print(f"| {name} | {mode} | {'bf16' if amp else 'fp32'} | {t_ours * 1e3:.1f} | {t_ref * 1e3:.1f} "
                      f"| {t_ref / t_ours:.3f} | {rounds} |", flush=True)
        # the timed training steps changed the weights; the next model starts fresh


if __name__ == "__main__":
    main()
