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


def _train(data: Path, out: Path, batch: int, procs: int = 1, extra: tuple[str, ...] = (),
           torchrun: bool = False) -> list[str]:
    launch = [sys.executable] if procs == 1 and not torchrun else [*TORCHRUN, f"--nproc_per_node={procs}"]
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


@pytest.mark.parametrize("procs", [1, 2, 4])
def test_processes_give_the_one_process_run(one, tmp_path, procs):
    """1 x 16, 2 x 8 and 4 x 4 under torchrun (the DDP path, even for one process) against 1 x 16 without a
    launcher: the same run (measured: README, "Many processes, elastic resume, SLURM")."""
    data, ref = one
    _run(_train(data, tmp_path / f"{procs}x{16 // procs}", 16 // procs, procs, torchrun=True))
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


@pytest.mark.parametrize("before, after, accum", [(2, 1, 1), (1, 2, 1), (2, 1, 2)],
                         ids=["2-to-1", "1-to-2", "2-to-1-accumulating"])
def test_elastic_resume_mid_epoch(one, tmp_path, before, after, accum):
    """Stopped by SIGTERM in epoch 2 with ``before`` processes, resumed with ``after`` (same global batch 16,
    also as 1 process of 8 with 2 accumulation steps): the uninterrupted 1-process run's weights, and the log
    says what changed."""
    data, ref = one
    run = tmp_path / "elastic"
    proc = subprocess.Popen(_train(data, run, 16 // before, before), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _stop_in_epoch_2(proc, run)
    _run(_train(data, run, 16 // after // accum, after, extra=(f"optim.accum_steps={accum}",)))
    log = (run / "log.txt").read_text()
    assert f"elastic resume: processes {before} -> {after}" in log, log[-2000:]
    if accum > 1:
        assert f"accumulation steps 1 -> {accum}" in log
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


# ---------------------------------------------------------------------------- a real single-node SLURM
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "sinfo")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _install_slurm() -> str:
    """Debian's slurm-wlm and munge, installed when absent; '' when ready, else why not."""
    import shutil

    if all(shutil.which(b) for b in SLURM_BINARIES):
        return ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "slurm-wlm and munge are not installed, and installing them needs root and apt-get"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            return f"`{' '.join(cmd)}` failed: {r.stderr.strip()[-300:]}"
    missing = [b for b in SLURM_BINARIES if not shutil.which(b)]
    return f"installed slurm-wlm and munge, but {missing} are missing" if missing else ""


def _slurm_conf(root: Path) -> str:
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True).stdout.strip()
    mem_mb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))) // 1024 // 2
    return "\n".join([
        "ClusterName=pitvittest", f"SlurmctldHost={host}(127.0.0.1)", f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge",
        "CredType=cred/munge", f"AuthInfo=socket={root}/munge/socket", f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool", f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "SchedulerType=sched/builtin", "JobCompType=jobcomp/none",
        "AccountingStorageType=accounting_storage/none", "MpiDefault=none", "ReturnToService=2", "JobRequeue=1",
        "KillWait=60", "MinJobAge=3600", "SlurmctldTimeout=30", "SlurmdTimeout=30",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES", ""])


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """munged, slurmctld and slurmd for this machine, from a generated slurm.conf; yields the clients' env."""
    why = _install_slurm()
    if why:
        pytest.skip(f"a real SLURM is not available: {why}")
    root = tmp_path_factory.mktemp("slurm")
    for d in ("munge", "state", "spool"):
        (root / d).mkdir()
    (root / "munge").chmod(0o711)
    (root / "munge.key").write_bytes(os.urandom(1024))
    (root / "munge.key").chmod(0o600)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root))
    env = _env(SLURM_CONF=str(conf))
    subprocess.run(["munged", "--force", f"--socket={root}/munge/socket", f"--key-file={root}/munge.key",
                    f"--log-file={root}/munged.log", f"--pid-file={root}/munge/pid", f"--seed-file={root}/munge/seed"],
                   check=True, env=env, timeout=60)
    daemons = [subprocess.Popen([d, "-D", "-f", str(conf)], env=env, stdout=subprocess.DEVNULL,
                                stderr=open(root / f"{d}.err", "w")) for d in ("slurmctld", "slurmd")]
    try:
        deadline = time.time() + 120
        while "idle" not in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True,
                                           text=True).stdout:
            assert all(d.poll() is None for d in daemons), (root / "slurmctld.log").read_text()[-2000:]
            assert time.time() < deadline, "the SLURM node did not come up: " + (root / "slurmd.log").read_text()[-2000:]
            time.sleep(0.5)
        yield env
    finally:
        for d in daemons:
            d.terminate()
            d.wait(timeout=60)
        pid = root / "munge" / "pid"
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


def _job_state(env: dict, job: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], env=env, capture_output=True, text=True).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f)


def test_slurm_hostnames_agree_with_scontrol(slurm):
    from pitvit.utils.distributed import expand_hostlist

    # (a suffix after a bracket, node[1-3]-ib, which the parser also expands, is refused by SLURM 22.05)
    for hostlist in ("gpu[01-04,07]", "cpu[001,003-004],gpu2", "r[1-2]n[01-02]", "gpu[9-11]", "a-1,b_2.c",
                     "gpu[08-10],login"):
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], env=slurm, capture_output=True, text=True)
        assert out.returncode == 0 and out.stdout.split() == expand_hostlist(hostlist), hostlist


def test_preempted_slurm_job_requeues_itself_and_ends_as_one_process(one, slurm, tmp_path):
    """A 2-task job (srun, no torchrun) sent ``scancel --signal=USR1`` in epoch 2: every task stops at the same
    step, rank 0 saves and runs ``scontrol requeue``; SLURM reruns the batch script, which resumes and finishes
    with the uninterrupted 1-process run's weights."""
    import shlex

    data, ref = one
    run = tmp_path / "slurm-run"
    run.mkdir()
    argv = _train(data, run, 8, extra=("train.requeue=true",))
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#SBATCH --ntasks=2\n#SBATCH --nodes=1\n#SBATCH --requeue\n"
                      f"#SBATCH --open-mode=append\n#SBATCH --output={run}/slurm-%j.out\n"
                      'echo "start, restart ${SLURM_RESTART_COUNT:-0}"\n'
                      f"srun {shlex.join(argv)}\n")
    out = subprocess.run(["sbatch", "--parsable", str(script)], env=slurm, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    deadline = time.time() + 900
    while not ((run / "log.txt").exists() and "epoch 2 [" in (run / "log.txt").read_text()):
        assert _job_state(slurm, job).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING"), _job_state(slurm, job)
        assert time.time() < deadline, "the job did not reach epoch 2"
        time.sleep(0.1)
    subprocess.run(["scancel", "--signal=USR1", job], env=slurm, check=True)
    while True:
        state = _job_state(slurm, job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"):
            break
        assert time.time() < deadline, f"the job did not finish: {state}"
        time.sleep(1)
    log = (run / "log.txt").read_text()
    slurm_out = "".join(p.read_text() for p in run.glob("slurm-*.out"))
    assert state["JobState"] == "COMPLETED" and state.get("Restarts") == "1", (state, slurm_out[-3000:])
    assert "stopped by SIGUSR1" in log and "requeued SLURM job" in log and "resuming" in log, log[-3000:]
    assert "start, restart 1" in slurm_out
    assert_same_run(ref, run)


def test_the_recipes_own_eps_gives_the_same_logits(tmp_path):
    """With Adam's ``eps`` left at the recipe's 1e-8, 2 x 8 under torchrun against 1 x 16: the logits of a fixed
    batch within 1e-4, and every weight within 1e-4 relative except the attention's key bias (its gradient is zero
    in exact arithmetic, softmax being invariant to it, so Adam divides float noise by ~eps there)."""
    data = _images(tmp_path / "data")
    own_eps = ("optim.eps=1e-8",)
    _run(_train(data, tmp_path / "one", 16, extra=own_eps))
    _run(_train(data, tmp_path / "two", 8, 2, extra=own_eps))
    a, b = (torch.load(tmp_path / p / "last.pt", weights_only=True) for p in ("one", "two"))
    models = []
    for ckpt in (a, b):
        m = __import__("pitvit").create_model("pit_test", num_classes=4)
        m.load_state_dict(ckpt["state_dict"])
        models.append(m.eval())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (models[0](x) - models[1](x)).abs().max().item()
    print(f"recipe eps: largest logit difference {diff:.2e}")
    assert diff < LIMIT
    def without_key_bias(sd: dict) -> dict:  # qkv.bias holds the query, key and value biases, in that order
        out = {}
        for k, v in sd.items():
            if k.endswith("qkv.bias"):
                q, _, val = v.chunk(3)
                out[k + "[q]"], out[k + "[v]"] = q, val
            else:
                out[k] = v
        return out

    rel = relative_differences(without_key_bias(a["state_dict"]), without_key_bias(b["state_dict"]))
    worst = max(rel, key=rel.get)
    print(f"recipe eps: largest relative weight difference {rel[worst]:.2e} ({worst})")
    assert rel[worst] < LIMIT, (worst, rel[worst])
