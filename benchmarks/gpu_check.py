"""Every GPU figure of the project from one command, written as one JSON file and one Markdown table.

On a machine with CUDA (sized for one H200 and 16 CPU cores; it needs only torch, torchvision and timm, with the
project on ``PYTHONPATH=src``) it runs in at most ``--budget-s`` seconds (default 480), in six sections:

- ``parity``: logits on CUDA against the CPU for every registered variant, fp32 with TF32 off (max |difference|).
- ``amp_steps``: training steps of pit_ti under bf16 autocast, and under fp16 autocast with a GradScaler, through
  the trainer's own step: finite losses and weights, and a loss that falls on a fixed batch.
- ``keyed_draws``: the keyed random draws (drop path per sample and block, mixup/cutmix per group) against the
  plain ones on a pit_ti training step at batch 256 (``benchmarks/bench_keyed.py``, alternating, same run; target
  keyed / plain <= 1.02), and the keyed drop-path bits on the device equal to the CPU's.
- ``train_epoch``: ``pitvit train`` for one epoch on a small folder of JPEGs with ``data.pipeline=gpu`` and
  ``train.amp=auto``, then the same command with ``train.epochs=2``, which must resume from ``last.pt``; both
  again under ``torchrun --nproc_per_node=1`` (the NCCL process group and DDP).
- ``pipelines``: pit_ti training images/s with the official recipe's augmentation, compiled, fed by the CPU
  pipeline (a worker per core), by the GPU pipeline, and from device memory (the model alone), as
  ``benchmarks/bench_datapipe.py`` measures them; targets: >= 8,000 img/s end to end with the GPU pipeline, at
  least 0.8 of the model-only rate, and >= 10,000 img/s for the model alone.
- ``vs_timm``: pitvit against timm's PiT (pit_ti, pit_s, pit_b), inference and training, bf16, eager and compiled,
  all timed in turn in one process (``pitvit.tools.benchmark.compare_settings``); and ``pitvit benchmark
  --compare timm --amp auto`` once, as a user runs it.

Each section is independent: an error is recorded with its traceback and the next section runs. Each has a budget
(and may use what earlier sections left over); work that would not fit is recorded as skipped. The files are
rewritten after every step, so what ran survives an interruption, and a watchdog ends the process 30 s past the
budget. Without CUDA (or with ``--reduced``) every section runs in a reduced form on the CPU (tiny models, a few
steps, gloo instead of NCCL, no compilation unless ``--compile``): the test suite runs it so that it cannot rot.

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out gpu_check_out       # on the GPU machine
    PYTHONPATH=src python3 benchmarks/gpu_check.py --reduced                  # CPU, well under a minute
"""
from __future__ import annotations

import time

T0 = time.monotonic()  # the budget counts from here, before the heavy imports

import argparse  # noqa: E402
import faulthandler  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

HERE = Path(__file__).resolve().parent
try:
    import pitvit  # noqa: E402
except ImportError:  # run from a clone without PYTHONPATH=src
    sys.path.insert(0, str(HERE.parent / "src"))
    import pitvit  # noqa: E402
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402

import bench_datapipe  # noqa: E402
import bench_keyed  # noqa: E402
from pitvit.utils.io import write_text  # noqa: E402

SRC = Path(pitvit.__file__).resolve().parents[1]  # what subprocesses need on PYTHONPATH
SECTION_NAMES = ("parity", "amp_steps", "keyed_draws", "train_epoch", "pipelines", "vs_timm")
BUDGETS = {"parity": 40, "amp_steps": 25, "keyed_draws": 20, "train_epoch": 90, "pipelines": 150,
           "vs_timm": 155}  # seconds
MIN_SECTION_S = 5.0  # a section that would start with less than this is recorded as skipped

# Sizes of the full run (one H200, 16 cores) and of the reduced one (a CPU, inside the test suite).
FULL = dict(parity_models=None, parity_batch=4, amp_model="pit_ti", amp_batch=64, amp_steps=12,
            train_model="pit_ti", train_images=256, val_images=64, train_batch=32, train_workers=8,
            train_shapes=bench_datapipe.SHAPES, pipe_model="pit_ti", pipe_images=2048, pipe_batch=256,
            pipe_steps=30, pipe_warmup=5, pipe_shapes=bench_datapipe.SHAPES, timm_models=("pit_ti", "pit_s", "pit_b"),
            timm_batch=256, timm_img=None, timm_rounds=5, timm_iters=5, timm_warmup=3, timm_amp="bf16",
            source_size=512, keyed_model="pit_ti", keyed_batch=256, keyed_steps=10, keyed_rounds=3)
REDUCED = dict(parity_models=("pit_test", "pit_nano", "pit_ti_distilled"), parity_batch=2, amp_model="pit_test",
               amp_batch=8, amp_steps=4, train_model="pit_test", train_images=32, val_images=8, train_batch=8,
               train_workers=0, train_shapes=[((64, 48), 1), ((48, 64), 1)], pipe_model="pit_test", pipe_images=16,
               pipe_batch=4, pipe_steps=2, pipe_warmup=1, pipe_shapes=[((64, 48), 1), ((48, 64), 1)],
               timm_models=("pit_ti",), timm_batch=2, timm_img=32, timm_rounds=3, timm_iters=1, timm_warmup=1,
               timm_amp="fp32", source_size=96, keyed_model="pit_test", keyed_batch=16, keyed_steps=2,
               keyed_rounds=1)
TARGETS = {"model_only": 10_000.0, "gpu_pipeline": 8_000.0, "gpu_vs_model_only": 0.8}  # one H200: the project's targets


def say(msg: str) -> None:
    print(f"[gpu_check {time.monotonic() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- the record
@dataclass
class Section:
    """One section's results as they come; ``deadline`` is a ``time.monotonic()`` value."""

    name: str
    budget_s: float
    deadline: float
    status: str = "pending"
    results: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, what: str, value: Any, target: str, ok: bool | None) -> None:
        """A measured figure against what it should be; ``ok`` None where it is not judged (reduced mode)."""
        self.checks.append({"what": what, "value": value, "target": target, "ok": ok})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("status", "budget_s", "elapsed_s", "results", "checks", "skipped",
                                              "error")}


@dataclass
class Ctx:
    """What every section needs: where, how big, the temporary folder, and the record to save."""

    device: torch.device
    reduced: bool
    compile: bool
    size: dict[str, Any]
    tmp: Path
    out: Path
    meta: dict[str, Any]
    sections: dict[str, Section] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def judged(self) -> bool:
        """Whether targets are judged: a full run on CUDA (the targets are an H200's)."""
        return self.cuda and not self.reduced

    def save(self) -> None:
        self.meta["elapsed_s"] = round(time.monotonic() - T0, 1)
        data = {"meta": self.meta, "sections": {n: s.to_dict() for n, s in self.sections.items()}}
        write_text(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str) + "\n")
        write_text(self.out / "gpu_check.md", markdown(data))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- parity
def parity(ctx: Ctx, sec: Section) -> None:
    """Logits of every variant on the device against the CPU's (fp32, TF32 off), random weights (seed 0)."""
    from pitvit import create_model, get_pretrained_cfg, list_models

    names = list(ctx.size["parity_models"] or list_models())
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for name in names:
            if sec.left() < 3:
                sec.skipped.append(name)
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = create_model(name).eval()
            x = torch.randn(ctx.size["parity_batch"], *get_pretrained_cfg(name).input_size,
                            generator=torch.Generator().manual_seed(1))
            with torch.inference_mode():
                ref = model(x)
                got = model.to(ctx.device)(x.to(ctx.device)).cpu()
            diff, scale = (got - ref).abs().max().item(), ref.abs().max().item()
            tol = 1e-3 * max(scale, 1.0)  # fp32 reorderings differ by ~1e-6 relative; a wrong op by O(scale)
            sec.results.append({"model": name, "max_abs_diff": diff, "max_abs_logit": scale, "tolerance": tol,
                                "ok": diff <= tol})
            ctx.save()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    worst = max((r["max_abs_diff"] for r in sec.results), default=float("nan"))
    sec.check(f"{ctx.device.type} logits = CPU logits, {len(sec.results)} variants", worst,
              "max |diff| <= 1e-3 x max(|logit|, 1)", all(r["ok"] for r in sec.results) and bool(sec.results))


# ---------------------------------------------------------------------------- amp_steps
def amp_steps(ctx: Ctx, sec: Section) -> None:
    """Steps of the trainer's TrainStep on one fixed batch under bf16, and fp16 with a GradScaler."""
    from pitvit import create_model, get_pretrained_cfg
    from pitvit.train.distill import ClassificationLoss
    from pitvit.train.engine import TrainStep

    name, batch, n = ctx.size["amp_model"], ctx.size["amp_batch"], ctx.size["amp_steps"]
    dev = ctx.device
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *get_pretrained_cfg(name).input_size, generator=gen).to(dev)
    for amp, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = create_model(name).to(dev).train()
        y = torch.randint(0, model.num_classes, (batch,), generator=gen).to(dev)
        before = [p.detach().clone() for p in model.parameters()]
        head_dtypes: list[torch.dtype] = []
        model.head.register_forward_hook(lambda m, i, o: head_dtypes.append(o.dtype))
        scaler = torch.amp.GradScaler(dev.type) if dtype is torch.float16 else None
        step = TrainStep(model, torch.optim.AdamW(model.parameters(), lr=1e-3), ClassificationLoss(), dev,
                         amp_dtype=dtype, scaler=scaler)
        losses = [float(step(x, y)) for _ in range(n)]
        finite = all(math.isfinite(v) for v in losses) and all(bool(torch.isfinite(p).all())
                                                                for p in model.parameters())
        moved = max((p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
        rec = {"precision": amp, "model": name, "batch": batch, "steps": n, "losses": losses,
               "autocast_dtype": str(head_dtypes[-1]).replace("torch.", ""), "max_weight_change": moved,
               "scale": scaler.get_scale() if scaler is not None else None, "finite": finite}
        rec["ok"] = finite and moved > 0 and losses[-1] < losses[0] and head_dtypes[-1] == dtype
        sec.results.append(rec)
        sec.check(f"{amp} training step{' with GradScaler' if scaler else ''}", losses[-1],
                  "finite, autocast in effect, loss falls on a fixed batch", rec["ok"])
        ctx.save()
        del model, step
        _free(dev)


# ---------------------------------------------------------------------------- keyed_draws
def keyed_draws(ctx: Ctx, sec: Section) -> None:
    """Keyed against plain random draws in one training step (bench_keyed), and the device's keyed bits."""
    from pitvit.utils.keyed import hash_keys

    z = ctx.size
    keys = torch.arange(1 << 20, dtype=torch.int64)
    same = bool(torch.equal(hash_keys(keys.to(ctx.device), 2**61 + 12345).cpu(), hash_keys(keys, 2**61 + 12345)))
    sec.check(f"keyed bits on {ctx.device.type} = CPU bits", same, "equal (drop path masks alike)", same)
    r = bench_keyed.keyed_vs_plain(z["keyed_model"], z["keyed_batch"], z["keyed_steps"], z["keyed_rounds"],
                                   str(ctx.device))
    sec.results.append({"row": "keyed vs plain draws", **r, "bits_equal_cpu": same})
    sec.check(f"keyed / plain step time, {r['model']} batch {r['batch']}", round(r["ratio"], 3), "<= 1.02",
              r["ratio"] <= 1.02 if ctx.judged() else None)
    ctx.save()


# ---------------------------------------------------------------------------- train_epoch
def _run(cmd: list[str], *, env: dict[str, str], timeout: float, cwd: Path) -> tuple[int | str, float, str]:
    """Run a command in its own session; on timeout kill the whole group (torchrun and its workers)."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=max(timeout, 1.0))
        rc: int | str = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
        rc = "timeout"
    return rc, time.monotonic() - start, out or ""


def _run_state(run_dir: Path) -> dict[str, Any]:
    """What a run folder holds: the checkpoint's epoch and the epochs of ``metrics.jsonl``."""
    state: dict[str, Any] = {"ckpt_epoch": None, "metric_epochs": [], "train_img_s": None, "val_top1": None}
    if (run_dir / "last.pt").is_file():
        ckpt = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
        state["ckpt_epoch"] = int(ckpt["epoch"])
    if (run_dir / "metrics.jsonl").is_file():
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        state["metric_epochs"] = [r["epoch"] for r in rows]
        if rows:
            state["train_img_s"], state["val_top1"] = rows[-1].get("train_img_s"), rows[-1].get("val_top1")
    return state


def _train_in_process(args: list[str]) -> tuple[int | str, float, str]:
    """``pitvit train ARGS`` through the command line's own entry point, in this process."""
    from pitvit.cli import main as cli
    from pitvit.utils.logs import setup_logging

    start = time.monotonic()
    try:
        rc: int | str = cli(args)
        out = ""
    except Exception:  # a bug in pitvit: keep its traceback
        rc, out = "exception", traceback.format_exc()
    finally:
        setup_logging(0)  # the run pointed the logger at its log.txt
    return rc, time.monotonic() - start, out


def train_epoch(ctx: Ctx, sec: Section) -> None:
    """``pitvit train`` one epoch with the GPU pipeline, then resumed for a second; as is (in this process) and
    under torchrun (a subprocess: its agent and one worker)."""
    z = ctx.size
    root = ctx.tmp / "folder"
    for split, n, seed in (("train", z["train_images"], 0), ("val", z["val_images"], 1)):
        bench_datapipe.make_folder(root, n, classes=4, seed=seed, split=split, shapes=z["train_shapes"],
                                   source_size=z["source_size"])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
               PYTHONUNBUFFERED="1")
    if ctx.reduced:
        env["OMP_NUM_THREADS"] = "1"
    if ctx.cuda:
        env["NCCL_DEBUG"] = "INFO"  # prints "NCCL version ..." once the communicator exists
    overrides = ["data.pipeline=gpu", f"model.name={z['train_model']}", f"data.batch_size={z['train_batch']}",
                 f"data.num_workers={min(z['train_workers'], os.cpu_count() or 1)}", "train.amp=auto",
                 f"train.device={ctx.device.type}", "log.plot=false", "log.interval=2", "log.progress_bar='off'",
                 "sched.warmup_epochs=0"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "pitvit"]
    for launcher in ("pitvit", "torchrun"):
        run_dir = ctx.tmp / f"run_{launcher}"
        for epochs in (1, 2):
            if sec.left() < 10:
                sec.skipped.append(f"{launcher}, train.epochs={epochs}")
                continue
            args = ["train", "--config", "pit_ti", "--data", str(root), "--output", str(run_dir)]
            for o in overrides + [f"train.epochs={epochs}"]:
                args += ["--set", o]
            say(f"train_epoch: {launcher}, train.epochs={epochs}")
            if launcher == "pitvit":
                rc, seconds, out = _train_in_process(args)
            else:
                rc, seconds, out = _run(torchrun + args, env=env, timeout=sec.left() - 5, cwd=ctx.tmp)
            log_txt = (run_dir / "log.txt").read_text() if (run_dir / "log.txt").is_file() else ""
            rec = {"launcher": launcher, "epochs": epochs, "rc": rc, "seconds": round(seconds, 1),
                   "resumed": "resuming" in log_txt, "command": " ".join((torchrun[1:] if launcher == "torchrun"
                                                                          else ["pitvit"]) + args),
                   **_run_state(run_dir)}
            if launcher == "torchrun" and ctx.cuda:
                rec["nccl"] = "NCCL version" in out
            rec["ok"] = (rc == 0 and rec["ckpt_epoch"] == epochs and rec["metric_epochs"] == list(range(1, epochs + 1))
                         and rec["resumed"] == (epochs == 2) and rec.get("nccl", True))
            if rc != 0:
                rec["output_tail"] = (out + log_txt)[-3000:]
            sec.results.append(rec)
            ctx.save()
        runs = [r for r in sec.results if r["launcher"] == launcher]
        what = "pitvit train" if launcher == "pitvit" else "torchrun --nproc_per_node=1 -m pitvit train"
        sec.check(f"{what}, data.pipeline=gpu: an epoch, then resumed for a second",
                  [r["ckpt_epoch"] for r in runs], "checkpoint epochs [1, 2], the second run resumed from last.pt"
                  + (" (NCCL)" if launcher == "torchrun" and ctx.cuda else ""),
                  len(runs) == 2 and all(r["ok"] for r in runs))


# ---------------------------------------------------------------------------- pipelines
def pipelines(ctx: Ctx, sec: Section) -> None:
    """Training images/s fed by each pipeline and from memory (``bench_datapipe.measure_pipelines``)."""
    z = ctx.size
    start = time.monotonic()
    root = bench_datapipe.make_folder(ctx.tmp / "jpegs", z["pipe_images"], classes=10, shapes=z["pipe_shapes"],
                                      source_size=z["source_size"])
    workers = 1 if ctx.reduced else os.cpu_count() or 1
    say(f"pipelines: {z['pipe_images']} JPEGs made in {time.monotonic() - start:.1f}s; {workers} workers")
    torch._dynamo.reset()

    def report(label: str, key: str, rate: float, n: int) -> None:
        say(f"pipelines: {label}: {rate:,.0f} img/s")
        sec.results.append({"row": label, "key": key, "img_s": rate, "images": n})
        ctx.save()

    res = bench_datapipe.measure_pipelines(
        root, device=ctx.device, model=z["pipe_model"], batch=z["pipe_batch"], steps=z["pipe_steps"],
        warmup=z["pipe_warmup"], workers=workers, compile=ctx.compile, deadline=sec.deadline - 10, report=report)
    sec.skipped += res["skipped"]
    for r in sec.results:
        r["x_model_only"] = r["img_s"] / res["model_only"] if "model_only" in res else None
    summary = {k: v for k, v in res.items() if not isinstance(v, list)}
    summary.update(model=z["pipe_model"], batch=z["pipe_batch"], workers=workers, compiled=ctx.compile,
                   cpus=os.cpu_count())
    if sec.left() > 20:  # one batch of each pipeline, the CPU one in this process
        summary["fidelity_levels"] = bench_datapipe.fidelity(root, z["pipe_batch"], ctx.device,
                                                             bench_datapipe.preprocessing(z["pipe_model"]))
    sec.results.append({"summary": summary})
    judged = ctx.judged() and ctx.compile
    how = "compiled" if ctx.compile else "eager"
    for key, what in (("model_only", f"{z['pipe_model']} training, {how}, the model alone (img/s)"),
                      ("gpu_pipeline", f"{z['pipe_model']} training end to end, GPU pipeline (img/s)"),
                      ("gpu_vs_model_only", "GPU pipeline / model alone")):
        value = res.get(key)
        sec.check(what, value, f">= {TARGETS[key]:,g}", value >= TARGETS[key] if judged and value else None)
    torch._dynamo.reset()


# ---------------------------------------------------------------------------- vs_timm
def _tool_benchmark(ctx: Ctx, sec: Section) -> None:
    """``pitvit benchmark --model pit_ti --compare timm --amp auto`` as a user runs it."""
    from pitvit.tools.benchmark import benchmark

    z = ctx.size
    rows = benchmark("pit_ti", batch=z["timm_batch"], img_size=z["timm_img"], compare="timm", device=str(ctx.device),
                     amp="auto", steps=1 if ctx.reduced else 10, warmup=0 if ctx.reduced else 3,
                     train=not ctx.reduced)
    sec.results.append({"kind": "pitvit benchmark --compare timm --amp auto", "rows": rows})
    ctx.save()


def vs_timm(ctx: Ctx, sec: Section) -> None:
    """pitvit and timm, bf16, eager for every (model, mode), then compiled in order of importance."""
    from pitvit.tools.benchmark import compare_settings

    z = ctx.size
    _tool_benchmark(ctx, sec)
    common = dict(batch=z["timm_batch"], img_size=z["timm_img"], device=ctx.device, rounds=z["timm_rounds"],
                  iters=z["timm_iters"], warmup=z["timm_warmup"])
    items = [(m, mode) for mode in ("train", "infer") for m in z["timm_models"]]
    amp = z["timm_amp"]  # bf16 on the GPU; fp32 in the reduced run (the CPU's bf16 is emulated, and slow)
    for m, mode in items:
        if sec.left() < 15:
            sec.skipped.append(f"{m} {mode} eager")
            continue
        say(f"vs_timm: {m} {mode}, eager")
        sec.results.append({"kind": "eager", **compare_settings(m, mode=mode, settings=[amp], **common)})
        ctx.save()
        _free(ctx.device)
    estimate = 150.0 if ctx.cuda else 300.0  # seconds for a compiled item (two compilations), until measured
    for m, mode in items if ctx.compile else []:
        if sec.left() < estimate:
            sec.skipped.append(f"{m} {mode} compiled (about {estimate:.0f} s needed, {max(sec.left(), 0):.0f} s left)")
            continue
        say(f"vs_timm: {m} {mode}, eager and compiled")
        torch._dynamo.reset()  # fresh compile caches: none of the earlier graphs counts against the recompile limit
        start = time.monotonic()
        sec.results.append({"kind": "compiled", **compare_settings(m, mode=mode, settings=[amp, amp + "+compile"],
                                                                   **common)})
        estimate = 1.2 * (time.monotonic() - start)
        ctx.save()
        _free(ctx.device)
    _judge_vs_timm(ctx, sec)
    torch._dynamo.reset()


def _judge_vs_timm(ctx: Ctx, sec: Section) -> None:
    rows = {(r["model"], r["mode"], r["kind"]): r for r in sec.results if r.get("kind") in ("eager", "compiled")}
    amp = ctx.size["timm_amp"]
    compiled = rows.get(("pit_ti", "train", "compiled"), {}).get("settings", {}).get(amp + "+compile")
    judged = ctx.judged()
    value = compiled["pitvit_img_s"] if compiled else None
    sec.check(f"pitvit pit_ti training, {amp}, compiled (img/s)", value, ">= 10,000",
              value >= 10_000 if judged and value else None)
    ratio = compiled["timm_over_pitvit"] if compiled else None
    sec.check("pitvit / timm, pit_ti training, compiled (time ratio timm/pitvit)", ratio, ">= 0.98 (parity or faster)",
              ratio >= 0.98 if judged and ratio else None)


# ---------------------------------------------------------------------------- the Markdown table
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.2e}" if 0 < abs(v) < 1e-2 else f"{v:,.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(head: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]


def _section_rows(name: str, results: list[dict[str, Any]]) -> list[str]:
    if name == "parity":
        return _table(["model", "max abs diff", "max abs logit", "ok"],
                      [[r["model"], r["max_abs_diff"], r["max_abs_logit"], r["ok"]] for r in results])
    if name == "amp_steps":
        return _table(["precision", "model", "batch", "first loss", "last loss", "autocast", "scale", "ok"],
                      [[r["precision"], r["model"], r["batch"], r["losses"][0], r["losses"][-1], r["autocast_dtype"],
                        r["scale"], r["ok"]] for r in results])
    if name == "keyed_draws":
        return _table(["model", "batch", "device", "steps", "plain s/step", "keyed s/step", "keyed / plain",
                       "bits = CPU"],
                      [[r["model"], r["batch"], r["device"], r["steps"], r["plain_s"], r["keyed_s"], r["ratio"],
                        r["bits_equal_cpu"]] for r in results])
    if name == "train_epoch":
        return _table(["launcher", "train.epochs", "exit", "s", "checkpoint epoch", "resumed", "train img/s",
                       "val top-1", "ok"],
                      [[r["launcher"], r["epochs"], r["rc"], r["seconds"], r["ckpt_epoch"],
                        "yes" if r["resumed"] else "no (new run)",
                        r["train_img_s"], r["val_top1"], r["ok"]] for r in results])
    if name == "pipelines":
        lines = _table(["run", "img/s", "x model only"],
                       [[r["row"], r["img_s"], r.get("x_model_only")] for r in results if "row" in r])
        summary = next((r["summary"] for r in results if "summary" in r), {})
        f = summary.get("fidelity_levels")
        if f:
            lines += ["", f"GPU against CPU pipeline, one batch each, same seed (erasing in const mode), uint8 levels: "
                          f"train mean {f['train_mean']:.4f} max {f['train_max']:.0f}, eval mean "
                          f"{f['eval_mean']:.4f} max {f['eval_max']:.0f}."]
        if summary:
            lines += ["", f"{summary['model']}, batch {summary['batch']}, {summary['workers']} workers, "
                          f"{summary['cpus']} CPUs, {'compiled' if summary['compiled'] else 'eager'}; CPU decodes in "
                          f"the GPU pipeline: {summary.get('gpu_pipeline_fallback') or 'none'}."]
        return lines
    lines = []
    for r in results:
        if "rows" in r:
            lines += [f"`{r['kind']}`:", ""] + _table(
                ["impl", "model", "amp", "infer img/s", "train img/s", "infer peak MiB", "train peak MiB"],
                [[x["impl"], x["model"], x["amp"], x.get("infer_img_s"), x.get("train_img_s"),
                  x.get("infer_peak_mib"), x.get("train_peak_mib")] for x in r["rows"]]) + [""]
    rows = [[r["model"], r["mode"], name_, s["pitvit_img_s"], s["timm_img_s"], s["timm_over_pitvit"],
             s.get("speedup", {}).get("pitvit"), s.get("speedup", {}).get("timm"),
             f"{s['warmup_s']['pitvit']:.0f} / {s['warmup_s']['timm']:.0f}", r["rounds"]]
            for r in results if r.get("kind") in ("eager", "compiled") for name_, s in r["settings"].items()]
    return lines + _table(["model", "mode", "setting", "pitvit img/s", "timm img/s", "timm/pitvit time",
                           "pitvit x vs eager", "timm x vs eager", "warm-up s", "rounds"], rows)


def markdown(data: dict[str, Any]) -> str:
    m = data["meta"]
    lines = [f"# gpu_check: {m['date']}, {m['device_name']}", "",
             f"{m['mode']} run; torch {m['torch']}, torchvision {m['torchvision']}, timm {m['timm']}, CUDA "
             f"{m['cuda']}, {m['cpus']} CPUs ({m['cpu']}); precision auto on the device: {m['auto_precision']}; "
             f"budget {m['budget_s']:.0f} s, took {m['elapsed_s']:.0f} s. Command: `{m['command']}`.", "",
             "## Checks", ""]
    checks = [[name, c["what"], c["value"], c["target"], "not judged" if c["ok"] is None else c["ok"]]
              for name, s in data["sections"].items() for c in s["checks"]]
    lines += _table(["section", "check", "measured", "target", "met"], checks)
    for name, s in data["sections"].items():
        lines += ["", f"## {name}: {s['status']}, {s['elapsed_s']:.0f} s (budget {s['budget_s']:.0f} s)", ""]
        if s["error"]:
            lines += ["```", s["error"].strip()[-1500:], "```", ""]
        if s["skipped"]:
            lines += [f"Skipped for time: {', '.join(s['skipped'])}.", ""]
        if s["results"]:
            lines += _section_rows(name, s["results"])
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main
SECTIONS: dict[str, Callable[[Ctx, Section], None]] = {
    "parity": parity, "amp_steps": amp_steps, "keyed_draws": keyed_draws, "train_epoch": train_epoch, "pipelines": pipelines, "vs_timm": vs_timm}


def _meta(args: argparse.Namespace, device: torch.device, reduced: bool, compile: bool) -> dict[str, Any]:
    import timm
    import torchvision

    from pitvit.utils.precision import resolve_amp

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else \
        platform.processor()
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "mode": "reduced" if reduced else "full",
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"CPU ({cpu})", "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version(), "cpu": cpu, "cpus": os.cpu_count(),
            "compile": compile, "budget_s": args.budget_s, "auto_precision": resolve_amp("auto", device),
            "command": " ".join([Path(sys.executable).name] + sys.argv), "elapsed_s": 0.0}


def run_sections(ctx: Ctx, names: list[str], budget_s: float) -> None:
    """Each section in turn, within its share of the budget; a failure is recorded and the next one runs."""
    end = T0 + budget_s
    for i, name in enumerate(names):
        reserve = sum(BUDGETS[n] for n in names[i + 1:])
        sec = ctx.sections[name] = Section(name, BUDGETS[name], end - reserve)
        if sec.left() < MIN_SECTION_S:
            sec.status, sec.skipped = "skipped", ["no time left"]
            ctx.save()
            continue
        say(f"{name}: start ({sec.left():.0f} s available)")
        start, sec.status = time.monotonic(), "running"
        try:
            SECTIONS[name](ctx, sec)
            sec.status = "partial" if sec.skipped else "ok"
        except Exception:  # recorded; the next section is independent
            sec.status, sec.error = "failed", traceback.format_exc()
            say(f"{name}: failed\n{sec.error}")
        finally:
            sec.elapsed_s = round(time.monotonic() - start, 1)
            _free(ctx.device)
            ctx.save()
        say(f"{name}: {sec.status} in {sec.elapsed_s:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check_out", help="folder for gpu_check.json and gpu_check.md")
    p.add_argument("--budget-s", type=float, default=480.0, help="the whole run's time budget in seconds")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--reduced", action="store_true", help="tiny sizes (the default without CUDA)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile where the sections measure compiled models (default: on in a full run, off in a "
                        "reduced one)")
    p.add_argument("--sections", nargs="+", default=list(SECTION_NAMES), choices=SECTION_NAMES)
    args = p.parse_args(argv)
    faulthandler.dump_traceback_later(args.budget_s + 30 - (time.monotonic() - T0), exit=True)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    reduced = args.reduced or device.type != "cuda"
    compile = (not reduced) if args.compile is None else args.compile
    from pitvit.utils.logs import setup_logging

    setup_logging(0)  # the library's lines (the precision auto picked) on stderr
    with tempfile.TemporaryDirectory(prefix="pitvit-gpu-check-") as tmp:
        ctx = Ctx(device, reduced, compile, REDUCED if reduced else FULL, Path(tmp), Path(args.out),
                  _meta(args, device, reduced, compile))
        say(f"{ctx.meta['mode']} run on {ctx.meta['device_name']}, compile {compile}, budget {args.budget_s:.0f} s, "
            f"writing {ctx.out / 'gpu_check.json'}")
        run_sections(ctx, [n for n in SECTION_NAMES if n in args.sections], args.budget_s)
    faulthandler.cancel_dump_traceback_later()
    print(markdown({"meta": ctx.meta, "sections": {n: s.to_dict() for n, s in ctx.sections.items()}}))
    return 1 if any(s.status == "failed" for s in ctx.sections.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
