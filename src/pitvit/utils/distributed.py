"""One entry point for 1..N processes: read torchrun's (or SLURM's) environment and set up the process group.

``pitvit train`` runs as is on one process; under ``torchrun --nproc_per_node=N`` (and ``--nnodes``) it reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and trains with DistributedDataParallel (NCCL on GPUs, Gloo on CPU).
A launcher's environment (``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` set) starts the process group even for a
single process, so ``torchrun --nproc_per_node=1`` runs the same code path (DDP, all-reduces) as N processes.

Under ``srun`` (one task per GPU, no torchrun; a task is recognized by its ``SLURM_STEP_ID``, which the batch
script itself does not have) the same variables are derived from SLURM's: ``SLURM_PROCID``,
``SLURM_NTASKS`` (the step's ``SLURM_STEP_NUM_TASKS`` when set), ``SLURM_LOCALID``, the first host of
``SLURM_JOB_NODELIST`` as the address (``scontrol show hostnames`` expands it when available, else
:func:`expand_hostlist`) and a port derived from ``SLURM_JOB_ID`` unless ``MASTER_PORT`` is set. torchrun's
variables win when both are present (``srun torchrun ...``, one task per node).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.distributed as dist

from .device import resolve_device

__all__ = ["DistInfo", "init_distributed", "launched_by_launcher", "cleanup_distributed", "all_reduce_sum", "barrier",
           "is_distributed", "launcher_env", "expand_hostlist", "slurm_port", "requeue_slurm_job"]

_TORCHRUN = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


@dataclass(frozen=True)
class DistInfo:
    """This process's place: rank, number of processes, local rank and device; ``launched`` when a launcher
    (torchrun) started it, which makes it distributed (a process group, DDP) even as the only process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    launched: bool = False

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_launcher() -> bool:
    """Whether a launcher (torchrun, srun, or anything that sets up ``env://`` initialization) started this
    process."""
    return all(k in os.environ for k in _TORCHRUN) or _is_srun_task(os.environ)


def _is_srun_task(env: Mapping[str, str]) -> bool:
    # A batch script has SLURM_PROCID=0 and the job's SLURM_NTASKS too, but no step: only srun's tasks do.
    return all(k in env for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_NODELIST", "SLURM_STEP_ID"))


def expand_hostlist(hostlist: str) -> list[str]:
    """SLURM's compressed host list to host names: ``gpu[01-04,07],login1`` -> gpu01 .. gpu04, gpu07, login1
    (zero padding kept; several bracket groups in one name expand as a product, ``r[1-2]n[1-2]``)."""
    hosts: list[str] = []
    for item in re.findall(r"(?:[^,\[]|\[[^\]]*\])+", hostlist):
        names = [""]
        for literal, ranges in re.findall(r"([^\[]*)(?:\[([^\]]*)\])?", item):
            parts = [literal]
            if ranges:
                parts = []
                for r in ranges.split(","):
                    lo, _, hi = r.partition("-")
                    if not hi:
                        parts.append(literal + lo)
                        continue
                    width = len(lo)
                    parts.extend(literal + str(i).zfill(width) for i in range(int(lo), int(hi) + 1))
            names = [n + p for n in names for p in parts]
        hosts.extend(n for n in names if n)
    return hosts


def _first_host(hostlist: str) -> str:
    scontrol = shutil.which("scontrol")
    if scontrol:
        try:
            out = subprocess.run([scontrol, "show", "hostnames", hostlist], capture_output=True, text=True,
                                 timeout=30)
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return expand_hostlist(hostlist)[0]


def requeue_slurm_job() -> bool:
    """``scontrol requeue $SLURM_JOB_ID``: SLURM puts the job back in the queue and reruns its batch script.
    Returns whether it was accepted; a missing job id or ``scontrol`` is logged, not raised (the checkpoint the
    job stopped with is on disk either way)."""
    import logging

    log = logging.getLogger("pitvit")
    job = os.environ.get("SLURM_JOB_ID")
    scontrol = shutil.which("scontrol")
    if not job or not scontrol:
        log.warning("train.requeue: %s; resubmit the job to continue",
                    "not a SLURM job (no SLURM_JOB_ID)" if not job else "scontrol not found")
        return False
    done = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        log.warning("scontrol requeue %s failed: %s; resubmit the job to continue", job,
                    (done.stderr or done.stdout).strip())
        return False
    log.info("requeued SLURM job %s: it reruns its batch script and resumes from the checkpoint", job)
    return True


def slurm_port(job_id: str | int) -> int:
    """The rendezvous port of a SLURM job: 15000 + job id mod 50000, so concurrent jobs on a node differ."""
    return 15000 + int(job_id) % 50000


def launcher_env(env: Mapping[str, str]) -> dict[str, str]:
    """The torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) this
    process should use: torchrun's own when set, else derived from an ``srun`` task's SLURM variables, else
    none (a single process)."""
    if all(k in env for k in _TORCHRUN):
        return {}
    if not _is_srun_task(env):
        return {}
    return {"RANK": env["SLURM_PROCID"],
            "WORLD_SIZE": env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"]),
            "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
            "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(env["SLURM_JOB_NODELIST"]),
            "MASTER_PORT": env.get("MASTER_PORT") or str(slurm_port(env.get("SLURM_JOB_ID", "0")))}


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment (or derive it from SLURM's, :func:`launcher_env`); when launched (or with
    ``WORLD_SIZE > 1``) join the process group (NCCL on CUDA, Gloo on CPU).

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; under torchrun each process takes the
            GPU of its ``LOCAL_RANK``.
    """
    os.environ.update(launcher_env(os.environ))
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    launched = launched_by_launcher()
    if (world > 1 or launched) and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world,
                                device_id=dev if dev.type == "cuda" else None)
    return DistInfo(rank, world, local, dev, launched)


def is_distributed() -> bool:
    """Whether a process group is initialized (torchrun with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def cleanup_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity on one process)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
