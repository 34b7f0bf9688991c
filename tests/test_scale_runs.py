"""Whole runs at several scales: the full recipe (RandAugment, random erasing, mixup 0.8 / cutmix 1.0 in groups
of 4, drop path 0.1, EMA, warmup + cosine) on 1 process of batch 16, 2 of 8 and 4 of 4 (torchrun, gloo, CPU),
elastic resumes (2 processes stopped by SIGTERM mid-epoch and resumed as 1, and 1 resumed as 2), and processes
started by hand with SLURM's variables only, exactly as ``srun`` starts them.

The reference is always the uninterrupted 1-process run: every weight and EMA weight within 1e-4 relative per
tensor (||a - b|| / ||a||). Adam's ``eps`` is raised to 1e-3 (README, "Train": with the recipe's 1e-8, tensors
whose gradients are near zero amplify float summation order). Slow: each run takes a few minutes on 2 cores.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_runs import _env, _images, _process_tree

pytestmark = pytest.mark.slow

RECIPE = ["model.name=pit_test", "data.num_workers=0", "train.amp=none", "train.device=cpu", "optim.lr=2e-3",
          "optim.lr_base_batch=0", "sched.warmup_epochs=1", "sched.stepping=step", "log.plot=false",
          "train.threads=1", "train.epochs=3", "optim.eps=1e-3", "log.interval=1", "ema.decay=0.9",
          "aug.mix_group=4", "aug.re_prob=0.25", "model.drop_path=0.1", "aug.mixup=0.8", "aug.cutmix=1.0"]
LIMIT = 1e-4
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _train(data: Path, out: Path, batch: int, procs: int = 1, extra: tuple[str, ...] = ()) -> list[str]:
    launch = [sys.executable] if procs == 1 else [*TORCHRUN, f"--nproc_per_node={procs}"]
    sets = [x for s in (*RECIPE, f"data.batch_size={batch}", *extra) for x in ("--set", s)]
    return [*launch, "-m", "pitvit", "train", "--data", str(data), "--output", str(out), *sets]


def _run(argv: list[str], **env: str) -> str:
    r = subprocess.run(argv, env=_env(**env), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr


def relative_differences(a: dict, b: dict) -> dict[str, float]:
    return {k: ((a[k].double() - b[k].double()).norm() / a[k].double().norm()).item()
            for k in a if a[k].is_floating_point() and a[k].norm() > 0}


def assert_same_run(ref: Path, other: Path) -> None:
    a, b = (torch.load(p / "last.pt", weights_only=True) for p in (ref, other))
    assert a["epoch"] == b["epoch"] == 3 and b["step_in_epoch"] == 0
    for part in ("state_dict", "ema_state_dict"):
        rel = relative_differences(a[part], b[part])
        worst = max(rel, key=rel.get)
        print(f"{other.name} {part}: largest relative difference {rel[worst]:.2e} ({worst})")
        assert rel[worst] < LIMIT, (part, worst, rel[worst])


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> tuple[Path, Path]:
    """The data and the reference: 1 process, batch 16, uninterrupted."""
    root = tmp_path_factory.mktemp("scale")
    data = _images(root / "data")
    _run(_train(data, root / "one", 16))
    first = torch.load(root / "one" / "last.pt", weights_only=True)
    assert first["config"]["aug"]["mixup"] == 0.8 and first["config"]["model"]["drop_path"] == 0.1
    init = __import__("pitvit").create_model("pit_test", num_classes=4).state_dict()
    assert (first["state_dict"]["head.weight"] - init["head.weight"]).abs().max() > 1e-2  # the weights moved
    return data, root / "one"


@pytest.mark.parametrize("procs", [2, 4])
def test_processes_give_the_one_process_run(one, tmp_path, procs):
    """2 x 8 and 4 x 4 under torchrun against 1 x 16: the same run (measured: README, "Multi-process")."""
    data, ref = one
    _run(_train(data, tmp_path / f"{procs}x{16 // procs}", 16 // procs, procs))
    assert_same_run(ref, tmp_path / f"{procs}x{16 // procs}")


def _stop_in_epoch_2(proc: subprocess.Popen, run: Path, signal_pid: int | None = None) -> None:
    """Send SIGTERM to one training process once epoch 2 has begun (the others learn it by all-reduce)."""
    deadline = time.time() + 600
    while not ((run / "log.txt").exists() and "epoch 2 [" in (run / "log.txt").read_text()):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "the run did not reach epoch 2"
        time.sleep(0.05)
    pids = _process_tree(proc.pid)
    os.kill(signal_pid if signal_pid is not None else pids[-1], signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["step_in_epoch"] > 0, "not stopped mid-epoch"


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)], ids=["2-to-1", "1-to-2"])
def test_elastic_resume_mid_epoch(one, tmp_path, before, after):
    """Stopped by SIGTERM in epoch 2 with ``before`` processes, resumed with ``after`` (same global batch 16):
    the uninterrupted 1-process run's weights, and the log says what changed."""
    data, ref = one
    run = tmp_path / "elastic"
    proc = subprocess.Popen(_train(data, run, 16 // before, before), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _stop_in_epoch_2(proc, run)
    err = _run(_train(data, run, 16 // after, after))
    log = (run / "log.txt").read_text()
    assert f"elastic resume: processes {before} -> {after}" in log, log[-2000:]
    assert_same_run(ref, run)


def _srun_tasks(argv: list[str], n: int, job_id: str) -> list[subprocess.Popen]:
    """``n`` tasks started as ``srun --ntasks=n`` starts them on one node: SLURM's variables, no torchrun's."""
    procs = []
    for rank in range(n):
        env = {k: v for k, v in _env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(n), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
                   SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="localhost", SLURM_STEP_NUM_TASKS=str(n),
                   SLURM_NNODES="1", SLURM_STEP_ID="0")
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    return procs


def test_srun_tasks_give_the_one_process_run(one, tmp_path):
    """2 tasks with SLURM's variables only (no torchrun, no MASTER_PORT: the port comes from the job id) form
    the process group and give the 1-process run."""
    data, ref = one
    procs = _srun_tasks(_train(data, tmp_path / "srun", 8), 2, str(4242 + os.getpid() % 1000))
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    assert "2 processes" in (tmp_path / "srun" / "log.txt").read_text()
    assert_same_run(ref, tmp_path / "srun")
