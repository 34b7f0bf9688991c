"""Whole training runs in subprocesses: 2 DDP processes (gloo) match 1 process with the same global batch, a
compiled run, the demo, and the README's multi-machine command. Tiny model (pit_test) and an in-memory dataset,
so each run takes seconds. (A run killed or stopped mid-epoch and resumed: ``test_faults``.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = r'''
import os, sys, time
import torch
from pitvit.train import load_config
from pitvit.train.runner import fit

class Toy(torch.utils.data.Dataset):
    classes = [f"c{i}" for i in range(10)]
    def __init__(self, n, seed, delay=0.0, noisy=False):
        self.n, self.seed, self.delay, self.noisy = n, seed, delay, noisy
    def __len__(self):
        return self.n
    def __getitem__(self, i):
        if self.delay:
            time.sleep(self.delay)
        g = torch.Generator().manual_seed(self.seed * 100003 + i)
        x = torch.randn(3, 32, 32, generator=g) * 0.5
        x[:, 3 * (i % 10):3 * (i % 10) + 3, :] += 2.0
        if self.noisy:  # an "augmentation" drawn from the global generator, which the loader seeds per sample
            x = x + 0.1 * torch.randn(3, 32, 32)
        return x, i % 10

delay = float(os.environ.get("TOY_DELAY", "0"))
noisy = os.environ.get("TOY_NOISY", "1") == "1"
cfg = load_config(None, sys.argv[1:])
fit(cfg, datasets=(Toy(96, 0, delay, noisy), Toy(32, 1)))
'''

COMMON = ["model.name=pit_test", "data.batch_size=16", "data.num_workers=0", "train.amp=none",
          "optim.lr=2e-3", "optim.lr_base_batch=0", "sched.warmup_epochs=1", "log.plot=false", "log.interval=2"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def _run(script: Path, args: list[str], timeout: float = 120, **env: str) -> None:
    r = subprocess.run([sys.executable, str(script), *args], env=_env(**env), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]


def _same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_gloo_processes_match_one(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    # Adam turns float noise into full-size steps where the true gradient is zero (the key bias of attention
    # does not change the softmax), so the two runs would differ there by ~lr; a large eps damps that noise.
    args = COMMON + ["train.epochs=2", "model.drop_path=0", "aug.mixup=0", "aug.cutmix=0", "ema.enabled=false",
                     "train.device=cpu", "optim.eps=1e-3"]
    _run(script, args + [f"train.output={tmp_path / 'one'}"], TOY_NOISY="0")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), *args,
         "data.batch_size=8", f"train.output={tmp_path / 'two'}"],
        env=_env(TOY_NOISY="0"), capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["config"]["data"]["batch_size"] == 8 and one["epoch"] == two["epoch"] == 2
    for k, v in one["state_dict"].items():
        torch.testing.assert_close(two["state_dict"][k], v, rtol=1e-4, atol=1e-5)
    # the weights moved: the comparison is not between two untouched initializations
    init = __import__("pitvit").create_model("pit_test").state_dict()
    assert not torch.allclose(one["state_dict"]["head.weight"], init["head.weight"])
    rows = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "val_top1" in rows[0]


@pytest.mark.slow
def test_compiled_training_runs(tmp_path):
    """train.compile=true (inductor needs a C compiler; compiling takes a minute on 2 cores)."""
    script = tmp_path / "train_toy.py"
    script.write_text(SCRIPT)
    _run(script, COMMON + ["train.epochs=1", "train.compile=true", "ema.enabled=false",
                           f"train.output={tmp_path / 'run'}"], timeout=600)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and not any(k.startswith("_orig_mod") for k in ckpt["state_dict"])


@pytest.mark.slow
def test_demo_reaches_its_floor_and_prints_what_eval_reports(tmp_path):
    """The README's first command. Its floor: >= 91% Fashion-MNIST test top-1 on any x86 CPU (README gives the
    figure measured and the machine). The printed figure is what `pitvit eval` reports for
    the checkpoint the demo names, and selection never saw the test split. The time is printed, not asserted
    (a shared machine makes it noisy); README gives the measured one."""
    if not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (make data)")
    run = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "pitvit", "demo", "--output", str(run)],
                       env=dict(os.environ), capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    print(r.stdout)
    top1 = float(r.stdout.split("test top-1")[1].split("%")[0])
    assert top1 >= 91.0, r.stdout
    eval_cmd = r.stdout.split("evaluate it")[1].strip().split()
    assert eval_cmd[:2] == ["pitvit", "eval"] and str(run / "best.pt") in eval_cmd
    e = subprocess.run([sys.executable, "-m", "pitvit", *eval_cmd[1:]], capture_output=True, text=True,
                       timeout=600)
    assert e.returncode == 0, e.stderr[-3000:]
    assert f"top-1 {top1:.2f}%" in e.stdout, (r.stdout, e.stdout)
    assert "holdout: 5000" in (run / "config.yaml").read_text()  # best.pt chosen on held-out training images


# ---------------------------------------------------------------------------- the README's multi-machine command
def _readme_torchrun_nnodes() -> list[str]:
    """The torchrun options of the README's multi-machine command (``torchrun --nnodes=2 ... -m pitvit``)."""
    import re
    import shlex

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text().replace("\\\n", " ")
    line = next(m for m in re.findall(r"^torchrun .*$", text, re.M) if "--nnodes=2" in m)
    argv = shlex.split(line)
    return argv[1:argv.index("-m")]


def _images(root: Path) -> Path:
    """4 classes x 48 training and 4 validation PNGs of 32 px (class c brightens columns 8c..8c+8)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 48), ("val", 4)):
        for c in range(4):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = (rng.random((32, 32, 3)) * 80).astype(np.uint8)
                a[:, 8 * c:8 * c + 8] += 150
                Image.fromarray(a).save(root / split / f"c{c}" / f"{i}.png")
    return root


def _process_tree(pid: int) -> list[int]:
    kids = [int(c) for t in os.listdir(f"/proc/{pid}/task")
            for c in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
    return [pid] + [d for k in kids for d in _process_tree(k)]


# No random draw in a step (drop path, mixup and cutmix off), and Adam's eps raised: see README, "Train".
_EXACT = ["model.name=pit_test", "data.num_workers=0", "train.amp=none", "train.device=cpu", "optim.lr=2e-3",
          "optim.lr_base_batch=0", "sched.warmup_epochs=1", "sched.stepping=step", "log.plot=false",
          "train.threads=1", "train.epochs=3", "ema.enabled=false", "model.drop_path=0", "aug.mixup=0",
          "aug.cutmix=0", "optim.eps=1e-3", "log.interval=1"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the agents' workers through /proc")
def test_readme_multi_machine_command_as_two_agents(tmp_path):
    """The README's `torchrun --nnodes=2 --rdzv_backend=c10d ...` as two agents on 127.0.0.1 (one CPU process
    each, batch 8): the weights of one process with batch 16, within float rounding (measured 1.2e-7); then one
    "machine" (its agent and its worker) killed with SIGKILL in epoch 2: the last checkpoint is intact, and the
    same two commands again end with the uninterrupted two-agent weights, bit for bit."""
    import socket

    options = _readme_torchrun_nnodes()
    assert "--nnodes=2" in options and "--rdzv_backend=c10d" in options
    data = _images(tmp_path / "data")
    sets = [x for s in _EXACT for x in ("--set", s)]
    one = subprocess.run([sys.executable, "-m", "pitvit", "train", "--data", str(data), "--output",
                          str(tmp_path / "one"), *sets, "--set", "data.batch_size=16"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    def agents(run: Path) -> list[subprocess.Popen]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        opts = [o.replace("HOST0:29500", f"127.0.0.1:{port}").replace("--nproc_per_node=8", "--nproc_per_node=1")
                for o in options]
        argv = [sys.executable, "-m", "torch.distributed.run", *opts, "-m", "pitvit", "train", "--data", str(data),
                "--output", str(run), *sets, "--set", "data.batch_size=8"]
        return [subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True) for _ in range(2)]

    def finish(procs: list[subprocess.Popen]) -> None:
        for p in procs:
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]

    finish(agents(tmp_path / "two"))
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["state_dict"]
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert two["epoch"] == 3 and two["config"]["data"]["batch_size"] == 8
    diff = max((a[k] - two["state_dict"][k]).abs().max().item() for k in a)
    assert diff < 1e-6, diff
    init = __import__("pitvit").create_model("pit_test", num_classes=4).state_dict()
    assert (a["head.weight"] - init["head.weight"]).abs().max() > 1e-2  # the weights moved

    run = tmp_path / "killed"
    procs = agents(run)
    deadline = time.time() + 300
    while not ((run / "log.txt").exists() and "epoch 2 [" in (run / "log.txt").read_text()):
        assert procs[0].poll() is None and time.time() < deadline
        time.sleep(0.02)
    for pid in _process_tree(procs[1].pid):  # the agent alone would leave its worker training (its own session)
        os.kill(pid, signal.SIGKILL)
    for p in procs:
        p.communicate(timeout=600)
    assert procs[0].returncode != 0 and procs[1].returncode == -signal.SIGKILL
    from pitvit.train.checkpoint import read_run_checkpoint

    ckpt = read_run_checkpoint(run / "last.pt")  # intact: readable, its content hashes match
    assert ckpt["epoch"] in (1, 2) and ckpt["step_in_epoch"] == 0 and not list(run.glob(".*tmp*"))
    finish(agents(run))
    assert "resuming" in (run / "log.txt").read_text()
    end = torch.load(run / "last.pt", weights_only=True)
    assert end["epoch"] == 3
    _same_state(end["state_dict"], two["state_dict"])
