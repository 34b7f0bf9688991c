"""One entry point for 1..N processes: read torchrun's environment and set up the process group.

``pitvit train`` runs as is on one process; under ``torchrun --nproc_per_node=N`` (and ``--nnodes``) it reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and trains with DistributedDataParallel (NCCL on GPUs, Gloo on CPU).
A launcher's environment (``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR`` set) starts the process group even for a
single process, so ``torchrun --nproc_per_node=1`` runs the same code path (DDP, all-reduces) as N processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .device import resolve_device

__all__ = ["DistInfo", "init_distributed", "launched_by_launcher", "cleanup_distributed", "all_reduce_sum", "barrier",
           "is_distributed"]


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
    """Whether a launcher (torchrun, or anything that sets up ``env://`` initialization) started this process."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR"))


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; when launched by it (or with ``WORLD_SIZE > 1``) join the process group
    (NCCL on CUDA, Gloo on CPU).

    Args:
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``; under torchrun each process takes the
            GPU of its ``LOCAL_RANK``.
    """
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
