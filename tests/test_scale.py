"""The same run at any scale: the keyed random draws of a training step (drop path, mixup/cutmix in groups,
per-sample augmentation) do not depend on how the global batch is split between processes, accumulation steps
or devices.

References: a plain-Python implementation of Wellons' ``lowbias32`` integer hash (the published constants) for
the device hash; timm's ``drop_path`` for stochastic depth; timm's ``Mixup`` for mixing; one process holding the
whole batch for every split of it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.data.mixup import Mixup
from timm.layers import drop_path as timm_drop_path

from pitvit.data import build_mixup, mix_group_size
from pitvit.models import DropPath, create_model, keyed_drop_path
from pitvit.utils.errors import ConfigError
from pitvit.utils.keyed import hash_keys, uniform_from_keys


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _reference_hash(key: int, salt: int) -> int:
    h = _lowbias32((salt & 0xFFFFFFFF) ^ 0x243F6A88)
    h = _lowbias32(h ^ (salt >> 32))
    h = _lowbias32(h ^ (key & 0xFFFFFFFF))
    return _lowbias32(h ^ (key >> 32))


def test_device_hash_is_lowbias32_on_python_integers():
    """The torch hash (int64 ops that never overflow) equals the hash on Python's unbounded integers, for keys
    and salts up to 2**63 - 1."""
    keys = [0, 1, 2, 255, 2**31, 2**32 - 1, 2**32, 2**40 + 3, 2**62 + 12345, 2**63 - 1]
    for salt in (0, 7, 2**33 + 5, 2**63 - 1):
        got = hash_keys(torch.tensor(keys), salt).tolist()
        assert got == [_reference_hash(k, salt) for k in keys]
    u = uniform_from_keys(torch.arange(200_000), 3)
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002  # 5+ standard errors


def test_drop_path_without_keys_is_timms_drop_path():
    """No keys: torch's generator, the draw timm's ``drop_path`` makes (per-sample Bernoulli, scaled 1/keep)."""
    x = torch.randn(64, 5, 8)
    torch.manual_seed(3)
    ours = DropPath(0.3).train()(x)
    torch.manual_seed(3)
    ref = timm_drop_path(x, 0.3, True, scale_by_keep=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


def test_keyed_drop_path_keeps_at_the_rate_and_scales_by_keep():
    x = torch.ones(20_000, 3, 4)
    layer = DropPath(0.25, salt=5).train()
    with keyed_drop_path(layer, torch.arange(20_000)):
        out = layer(x)
    scale = out[:, 0, 0]
    assert set(scale.unique().tolist()) <= {0.0, torch.tensor(1 / 0.75).item()}  # timm's rule: dropped, or kept and scaled by 1/keep
    assert (out == out[:, :1, :1]).all()  # one decision per sample
    kept = (scale > 0).float().mean().item()
    assert abs(kept - 0.75) < 0.0153  # 5 standard errors of Bernoulli(0.75) over 20,000


def test_keyed_drop_path_depends_on_the_key_not_the_batch():
    """Sample keys 0..7 in one batch of 8, or as two batches of 4 (two processes), or in another order: each
    sample keeps or drops the same blocks. Different blocks draw differently; no keys again: random."""
    torch.manual_seed(0)
    model = create_model("pit_test", drop_path_rate=0.5).train()
    x = torch.randn(8, 3, 32, 32)
    keys = hash_keys(torch.arange(8), 12345)
    whole = _forward(model, x, keys)
    halves = torch.cat([_forward(model, x[:4], keys[:4]), _forward(model, x[4:], keys[4:])])
    perm = torch.randperm(8)
    shuffled = _forward(model, x[perm], keys[perm])
    torch.testing.assert_close(halves, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(shuffled, whole[perm], rtol=1e-5, atol=1e-6)
    with keyed_drop_path(model, keys):
        rows = [tuple((m.draws < 0.5).tolist()) for m in model.modules() if isinstance(m, DropPath)]
    assert len(rows) == 4 and len(set(rows)) > 1  # pit_test: blocks 1 and 2 (block 0's rate is 0), two branches
    assert all(m.draws is None for m in model.modules() if isinstance(m, DropPath))  # cleared on exit


def _forward(model, x, keys):
    with keyed_drop_path(model, keys):
        return model(x)


def _timm_mixup(x, y, seed, **kw):
    np.random.seed(seed)
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode="batch",
                  label_smoothing=0.1, num_classes=5, **kw)
    return mixer(x.clone(), y)


@pytest.mark.parametrize("seed", range(6))  # both sides of the switch: mixup and cutmix
def test_one_group_mixes_as_timms_mixup(seed):
    """With one group, the keyed mixer is timm's Mixup drawing from numpy seeded with the group's seed: same
    lambda formula, same cutmix box and lambda correction, same label smoothing."""
    from pitvit.utils.seed import mix_seed

    x, y = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    mixer = build_mixup(num_classes=5, group=8)
    state = np.random.get_state()
    got_x, got_t = mixer(x.clone(), y, key=seed, first_group=0)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state()[1:2], state[1:2]))  # left as it was
    ref_x, ref_t = _timm_mixup(x, y, mix_seed(seed, 0) % 2**32)
    torch.testing.assert_close(got_x, ref_x, rtol=0, atol=0)
    torch.testing.assert_close(got_t, ref_t, rtol=0, atol=0)


def test_groups_mix_alike_however_the_batch_is_split():
    """Groups of 4 in a global batch of 16: one process, or 2 of 8, or 4 of 4 (``first_group`` = the share's
    first group) mix identically; and group g is timm's Mixup on its 4 images with group g's seed."""
    from pitvit.utils.seed import mix_seed

    x, y = torch.randn(16, 3, 16, 16), torch.arange(16) % 5
    mixer = build_mixup(num_classes=5, group=4)
    whole_x, whole_t = mixer(x.clone(), y, key=99)
    for share in (8, 4):
        parts = [mixer(x[s:s + share].clone(), y[s:s + share], key=99, first_group=s // 4)
                 for s in range(0, 16, share)]
        torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole_x, rtol=0, atol=0)
        torch.testing.assert_close(torch.cat([p[1] for p in parts]), whole_t, rtol=0, atol=0)
    for g in range(4):
        ref_x, ref_t = _timm_mixup(x[4 * g:4 * g + 4], y[4 * g:4 * g + 4], mix_seed(99, g) % 2**32)
        torch.testing.assert_close(whole_x[4 * g:4 * g + 4], ref_x, rtol=0, atol=0)
        torch.testing.assert_close(whole_t[4 * g:4 * g + 4], ref_t, rtol=0, atol=0)
    lams = {round(whole_t[4 * g, y[4 * g]].item(), 6) for g in range(4)}
    assert len(lams) > 1  # each group its own lambda


def test_mix_group_size_default_and_refusals():
    assert mix_group_size(256, batch_size=256, world_size=4, accum_steps=1) == 256
    assert mix_group_size(256, batch_size=16, world_size=1, accum_steps=1) == 16  # the global batch is smaller
    assert mix_group_size(8, batch_size=8, world_size=2, accum_steps=2) == 8
    with pytest.raises(ConfigError, match=r"aug.mix_group.*divisor of data.batch_size \(128\)"):
        mix_group_size(256, batch_size=128, world_size=8, accum_steps=1)
    with pytest.raises(ConfigError, match="batch of 8 per process and accumulation step"):
        mix_group_size(256, batch_size=8, world_size=2, accum_steps=1)  # a group of 16 would span 2 processes
    with pytest.raises(ConfigError, match=">= 1"):
        mix_group_size(0, batch_size=8, world_size=1, accum_steps=1)


def test_accumulation_steps_are_the_whole_batch_with_every_draw():
    """One optimizer step of pit_test with drop path 0.3, mixup/cutmix (groups of 4) and smoothing: batch 16 at
    once, or 2 accumulation steps of 8 (what 2 processes of 8 compute, summed by DDP's all-reduce): the same
    weights after the step, up to float summation order."""
    from pitvit.train.distill import ClassificationLoss
    from pitvit.train.engine import TrainStep, step_key

    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    results = []
    for accum in (1, 2):
        torch.manual_seed(0)
        model = create_model("pit_test", drop_path_rate=0.3).train()
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        step = TrainStep(model, opt, ClassificationLoss(smoothing=0.1), torch.device("cpu"), accum_steps=accum,
                         mixup=build_mixup(num_classes=10, group=4))
        n = 16 // accum
        for m in range(accum):
            step(x[m * n:(m + 1) * n].clone(), y[m * n:(m + 1) * n], boundary=m == accum - 1,
                 key=step_key(0, 0, 0), first=m * n)
        results.append(model.state_dict())
    moved = 0.0
    init = create_model("pit_test").state_dict()
    for k, v in results[0].items():
        torch.testing.assert_close(results[1][k], v, rtol=1e-5, atol=1e-6)
        moved = max(moved, (v - init[k]).abs().max().item()) if v.shape == init[k].shape else moved
    assert moved > 1e-3


# ---------------------------------------------------------------------------- SLURM's environment
@pytest.mark.parametrize("hostlist, hosts", [
    ("gpu01", ["gpu01"]),
    ("gpu[01-04,07]", ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]),
    ("gpu[9-11]", ["gpu9", "gpu10", "gpu11"]),
    ("cpu[001,003-004],gpu2", ["cpu001", "cpu003", "cpu004", "gpu2"]),
    ("node[1-2]-ib", ["node1-ib", "node2-ib"]),
    ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ("a-1,b_2.c", ["a-1", "b_2.c"]),
    ("gpu[08-10],login", ["gpu08", "gpu09", "gpu10", "login"]),
])
def test_slurm_hostlists_expand_as_scontrol_does(hostlist, hosts):
    """Hand-expanded lists (SLURM's hostlist syntax: ranges keep their zero padding, several bracket groups form a
    product); and ``scontrol show hostnames`` itself agrees where SLURM is installed."""
    import shutil
    import subprocess

    from pitvit.utils.distributed import expand_hostlist

    assert expand_hostlist(hostlist) == hosts
    if shutil.which("scontrol"):
        out = subprocess.run(["scontrol", "show", "hostnames", hostlist], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split():  # configured, and a form this SLURM accepts
            assert out.stdout.split() == hosts


def test_srun_variables_become_torchruns_and_torchrun_wins(monkeypatch):
    from pitvit.utils import distributed as D

    monkeypatch.setattr(D.shutil, "which", lambda name: None)  # the parser, not scontrol
    srun = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5", "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_ID": "0"}
    assert D.launcher_env(srun) == {"RANK": "5", "WORLD_SIZE": "16", "LOCAL_RANK": "5", "MASTER_ADDR": "gpu07",
                                    "MASTER_PORT": str(15000 + 123456 % 50000)}
    assert D.launcher_env({**srun, "MASTER_PORT": "29555"})["MASTER_PORT"] == "29555"
    assert D.launcher_env({**srun, "SLURM_STEP_NUM_TASKS": "8"})["WORLD_SIZE"] == "8"  # the step's tasks
    torchrun = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "LOCAL_RANK": "1"}
    assert D.launcher_env({**srun, **torchrun}) == {}  # srun ... torchrun: torchrun's variables stand
    batch_script = {k: v for k, v in srun.items() if k != "SLURM_STEP_ID"} | {"SLURM_PROCID": "0"}
    assert D.launcher_env(batch_script) == {}  # the batch script itself (as SLURM sets it), not an srun task


def test_sync_batchnorm_with_several_processes():
    """The demo's convolutional stem has BatchNorm: with 2 GPU processes it becomes torch's SyncBatchNorm (same
    state-dict keys); on CPU processes it stays (torch has no CPU SyncBatchNorm) and the log says why; one
    process or a model without BatchNorm is left alone."""
    import logging

    from pitvit.train.builders import sync_batchnorm
    from pitvit.utils.distributed import DistInfo

    model = create_model("pit_nano", stem_channels=8)
    keys = list(model.state_dict())
    assert not sync_batchnorm(model, DistInfo(world_size=1, device=torch.device("cuda", 0)))
    assert not sync_batchnorm(create_model("pit_test"), DistInfo(world_size=2, device=torch.device("cuda", 0)))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("pitvit").addHandler(handler)
    try:
        assert not sync_batchnorm(model, DistInfo(world_size=2, device=torch.device("cpu")))
    finally:
        logging.getLogger("pitvit").removeHandler(handler)
    assert any("SyncBatchNorm needs GPUs" in r.getMessage() for r in records)
    assert sync_batchnorm(model, DistInfo(world_size=2, device=torch.device("cuda", 0)))
    kinds = {type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert kinds == {torch.nn.SyncBatchNorm} and list(model.state_dict()) == keys


def test_keyed_erasing_noise_is_standard_normal_per_sample():
    """The GPU pipeline's keyed erasing noise: Kolmogorov-Smirnov against scipy's standard normal, and a row
    depends on its sample's key only (not on the rows beside it)."""
    from scipy import stats

    from pitvit.data.gpu.ops import keyed_normal

    keys = torch.arange(40, dtype=torch.int64) * 7919
    z = keyed_normal(keys, 5000, salt=0, device=torch.device("cpu"))
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3
    torch.testing.assert_close(keyed_normal(keys[13:14], 5000, 0, torch.device("cpu")), z[13:14], rtol=0, atol=0)
    assert not torch.equal(keyed_normal(keys[:1], 5000, 1, torch.device("cpu")), z[:1])  # another box, other noise
