"""One entry point for 1..N processes: a launcher's environment starts the process group even for one process,
so ``torchrun --nproc_per_node=1`` runs the N-process code path (DDP, all-reduces); a plain run does not."""
from __future__ import annotations

import socket

import torch
from torch import nn

from pitvit.utils.distributed import cleanup_distributed, init_distributed, is_distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_under_a_launcher_is_distributed(monkeypatch):
    from pitvit.models import create_model
    from pitvit.train.recipes import load_config
    from pitvit.train.builders import build_training

    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    plain = init_distributed("cpu")
    assert not plain.distributed and not is_distributed()

    # what torchrun --nproc_per_node=1 sets (torch.distributed.run's documented environment)
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    info = init_distributed("cpu")
    try:
        assert info.distributed and info.world_size == 1 and is_distributed()
        assert torch.distributed.get_backend() == "gloo"
        cfg = load_config(None, ["model.name=pit_test", "ema.enabled=false", "train.amp=none"])
        t = build_training(cfg, create_model("pit_test"), steps_per_epoch=2, info=info)
        assert isinstance(t.train_model, nn.parallel.DistributedDataParallel) and t.model is t.train_model.module
    finally:
        cleanup_distributed()
    assert not is_distributed()
