"""Training: config, optimizers, EMA, distillation, engine and fit, against hand-computed values and
timm's implementations. Sized for a 2-core CPU; the multi-process runs live in test_train_runs.py, the recipes'
schedules, AdamP settings and best.pt metric in test_recipes.py."""
from __future__ import annotations

import copy
import io
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pitvit.models import create_model
from pitvit.train import (AdamP, ClassificationLoss, DistillationLoss, ModelEma, NonFiniteLossError,
                          TrainStep, apply_overrides, config_to_dict, evaluate, load_config, param_groups, scaled_lr,
                          train_one_epoch)
from pitvit.train.checkpoint import capture_rng, restore_rng
from pitvit.utils.io import save_torch
from pitvit.utils.logs import Progress

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "pitvit" / "configs"  # the shipped recipes

pytestmark = pytest.mark.usefixtures("one_thread")


class ToySet(torch.utils.data.Dataset):
    """Separable 3 x size x size images: class ``c`` lights up a stripe; index-seeded noise."""

    classes = [f"c{i}" for i in range(10)]

    def __init__(self, n: int, seed: int = 0, size: int = 32, num_classes: int = 10) -> None:
        self.n, self.seed, self.size = n, seed, size
        self.classes = ToySet.classes[:num_classes]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        y = i % len(self.classes)
        x = torch.randn(3, self.size, self.size, generator=g) * 0.5
        x[:, 3 * y:3 * y + 3, :] += 2.0
        return x, y

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every item as one batch, in index order."""
        xs, ys = zip(*(self[i] for i in range(self.n)))
        return torch.stack(xs), torch.tensor(ys)


# ---------------------------------------------------------------------------- config
def test_config_types_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "ema.enabled=false", "sched.warmup_epochs=0",
                             "aug.mixup=0", "optim.betas=[0.8, 0.9]", "model.img_size=null"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)  # "1e-3" is a string to YAML 1.1
    assert cfg.ema.enabled is False and cfg.sched.warmup_epochs == 0 and cfg.aug.mixup == 0.0
    assert cfg.optim.betas == [0.8, 0.9] and cfg.model.img_size is None
    with pytest.raises(ValueError, match=r"unknown config key 'optim.lrr'.*optim\.lr"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        load_config(None, ["nope.x=1"])
    with pytest.raises(ValueError, match="expected an integer"):
        load_config(None, ["train.epochs=ten"])
    with pytest.raises(ValueError, match="expected true or false"):
        load_config(None, ["ema.enabled=maybe"])
    # YAML inheritance, and 0 / false overriding a non-zero / true base
    (tmp_path / "base.yaml").write_text("optim: {lr: 5e-4, clip_grad: 5.0}\nema: {enabled: true}\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim: {clip_grad: 0}\nema: {enabled: false}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.optim.lr == 5e-4 and cfg.optim.clip_grad == 0.0 and cfg.ema.enabled is False
    assert cfg.name == "child"
    # the resolved config is plain YAML and reloads to the same thing
    text = yaml.safe_dump(config_to_dict(cfg))
    assert config_to_dict(apply_overrides(load_config(None), yaml.safe_load(text))) == config_to_dict(cfg)


def test_config_data_kind_is_read_as_data_format_with_one_warning(tmp_path, caplog):
    """The key's old name, in a checkpoint-style dict (every key of a run's config, data.kind for data.format), a
    recipe and --set: read as the new one with one warning line naming it; giving both is an error unless they
    agree; each layer is renamed before the layers merge, so a later layer's new key wins over an earlier old one."""
    from pitvit.train.config import config_from_dict

    old = config_to_dict(load_config(None, ["data.format=wds", "data.path=/data/shards", "train.epochs=7"]))
    old["data"] = {("kind" if k == "format" else k): v for k, v in old["data"].items()}
    assert "format" not in old["data"] and old["data"]["kind"] == "wds"
    with caplog.at_level(logging.WARNING, logger="pitvit.train"):
        cfg = config_from_dict(old)
    assert (cfg.data.format, cfg.data.path, cfg.train.epochs) == ("wds", "/data/shards", 7)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "data.kind is now called data.format" in warned[0] and "\n" not in warned[0]
    assert old["data"]["kind"] == "wds" and "format" not in old["data"]  # the caller's dict is left as it was
    assert config_from_dict({"data": {"kind": "list", "format": "list"}}).data.format == "list"  # agreeing
    with pytest.raises(ValueError, match=r"^data.kind='wds' and data.format='parquet' disagree: data.kind is the "
                                         r"older name of data.format; give data.format only$"):
        config_from_dict({"data": {"kind": "wds", "format": "parquet"}})
    (tmp_path / "old.yaml").write_text("data: {kind: wds, batch_size: 8}\n")
    (tmp_path / "child.yaml").write_text("base: old.yaml\ndata: {format: parquet}\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pitvit.train"):
        assert load_config(tmp_path / "old.yaml").data.format == "wds"
    assert "old.yaml: data.kind is now called data.format" in caplog.text
    assert load_config(tmp_path / "child.yaml").data.format == "parquet"
    assert load_config(tmp_path / "old.yaml", ["data.format=list"]).data.format == "list"
    assert load_config(None, ["data.kind=imagenet"]).data.format == "imagenet"
    assert apply_overrides(load_config(None), ["data.kind=fashion_mnist"]).data.format == "fashion_mnist"
    with pytest.raises(ValueError, match="data.kind='wds' and data.format='list' disagree"):
        load_config(None, ["data.kind=wds", "data.format=list"])
    with pytest.raises(ValueError, match=r"data.format='tfrecord' is not allowed: it must be one of auto, "):
        load_config(None, ["data.kind=tfrecord"])  # the old name's value is checked as the new key's


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_recipes_load(path):
    text = path.read_text()
    assert text.startswith("#") and "command" in text.split("\n\n")[0], "header: command, hardware, top-1"
    cfg = load_config(path)
    create_model(cfg.model.name)  # the model exists
    if "distilled" in path.stem:
        assert (cfg.distill.mode, cfg.distill.teacher, cfg.distill.alpha, cfg.distill.tau) == \
            ("hard", "regnety_160", 0.5, 1.0)


def test_official_recipe_values():
    ti = load_config(CONFIGS / "pit_ti.yaml")
    assert (ti.train.epochs, ti.data.batch_size, ti.optim.lr, ti.optim.weight_decay) == (300, 128, 5e-4, 0.05)
    assert (ti.sched.warmup_epochs, ti.sched.warmup_lr, ti.sched.min_lr) == (5, 1e-6, 1e-5)
    assert (ti.aug.mixup, ti.aug.cutmix, ti.aug.smoothing, ti.model.drop_path, ti.ema.decay) == \
        (0.8, 1.0, 0.1, 0.1, 0.99996)
    assert ti.optim.clip_grad == 0 and not ti.aug.repeated_aug
    b = load_config(CONFIGS / "pit_b.yaml")
    assert b.sched.warmup_epochs == 10 and b.aug.repeated_aug
    pd = load_config(CONFIGS / "pit_ti_paddle.yaml")
    assert (pd.optim.clip_grad, pd.optim.exclude_wd, pd.sched.warmup_epochs, pd.sched.cooldown_epochs) == \
        (5.0, False, 20, 10)
    assert (pd.model.drop_path, pd.train.amp, pd.aug.preset, pd.train.eval_every) == (0.0, "none", "paddle", 2)


# ---------------------------------------------------------------------------- optimizers
def test_param_groups_and_lr_scaling():
    model = create_model("pit_test")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias", "transformers.0.blocks.0.norm1.weight",
            "pools.0.conv.bias"} <= nd
    assert {"head.weight", "patch_embed.conv.weight", "pools.0.conv.weight",
            "transformers.0.blocks.0.attn.qkv.weight"} <= d
    assert all(names[id(p)].endswith(".bias") or p.ndim <= 1 or names[id(p)] in ("pos_embed", "cls_token")
               for p in no_decay["params"])
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert len(param_groups(model, 0.05, exclude=False)) == 1  # the Paddle reproduction decayed everything
    assert scaled_lr(5e-4, 1024) == pytest.approx(1e-3) and scaled_lr(5e-4, 256) == pytest.approx(2.5e-4)
    assert scaled_lr(2e-3, 256, 0) == 2e-3


@pytest.mark.parametrize("nesterov", [False, True])
def test_adamp_matches_timm(nesterov):
    from timm.optim import AdamP as TimmAdamP

    torch.manual_seed(0)
    ours_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    ref_model = copy.deepcopy(ours_model)
    kw = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, nesterov=nesterov)
    ours = AdamP(param_groups(ours_model, 0.1), **kw)
    ref = TimmAdamP(param_groups(ref_model, 0.1), **kw)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 5, (16,))
    for _ in range(5):
        for m, opt in ((ours_model, ours), (ref_model, ref)):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamp_projects_scale_invariant_weights():
    # A weight whose gradient is orthogonal to it (here: the layer is followed by a normalization) must keep
    # its norm up to the (reduced) weight decay: the radial part of the update is removed.
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 16))
    opt = AdamP([w], lr=0.1, weight_decay=0.0)
    x = torch.randn(32, 16)
    norm0 = w.norm().item()
    for _ in range(3):
        opt.zero_grad()
        out = F.normalize(x @ w.t(), dim=0)
        (out[:, 0] * torch.arange(32.0)).sum().backward()
        opt.step()
    # an orthogonal step grows the norm only to second order: sqrt(n^2 + step^2)
    assert abs(w.norm().item() - norm0) < 0.05 * norm0


# ---------------------------------------------------------------------------- EMA
def test_ema_hand_computed():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0), model.bias.fill_(0.0)
    ema = ModelEma(model, decay=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model)  # 0.9 * 1 + 0.1 * 2
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)  # 0.9 * 1.1 + 0.1 * 3
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 1.29))
    assert set(ema.state_dict()) == {"weight", "bias"} and ema.updates == 2
    warm = ModelEma(model, decay=0.99996, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)


# ---------------------------------------------------------------------------- losses and distillation
def test_classification_loss_smoothing_and_soft_targets():
    """Hand-computed label smoothing and soft-target cross-entropy, and the losses DeiT's main.py uses (timm's
    LabelSmoothingCrossEntropy without mixing, SoftTargetCrossEntropy with it)."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    smooth = ClassificationLoss(0.1)(logits, y)
    logp = logits.log_softmax(-1)
    want = (-(0.9 * logp.gather(1, y[:, None]).squeeze(1)) - 0.1 * logp.mean(-1)).mean()
    assert smooth.item() == pytest.approx(want.item(), rel=1e-5)
    soft = torch.softmax(torch.randn(6, 5), -1)
    assert ClassificationLoss()(logits, soft).item() == pytest.approx((-(soft * logp).sum(-1)).mean().item(),
                                                                       rel=1e-5)
    assert smooth.item() == pytest.approx(LabelSmoothingCrossEntropy(0.1)(logits, y).item(), rel=1e-5)
    assert ClassificationLoss(0.1)(logits, soft).item() == pytest.approx(
        SoftTargetCrossEntropy()(logits, soft).item(), rel=1e-5)  # smoothing is already in mixed targets


class _FixedTeacher(nn.Module):
    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def test_distillation_hard_and_soft_hand_computed():
    torch.manual_seed(0)
    cls, dist, t_out = torch.randn(4, 3), torch.randn(4, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    base = ClassificationLoss()
    images = torch.zeros(4, 1)
    hard = DistillationLoss(base, _FixedTeacher(t_out), "hard", alpha=0.5)((cls, dist), y, images)
    want = 0.5 * F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(dist, t_out.argmax(1))
    assert hard.item() == pytest.approx(want.item(), rel=1e-6)
    tau = 2.0
    soft = DistillationLoss(base, _FixedTeacher(t_out), "soft", alpha=0.3, tau=tau)((cls, dist), y, images)
    p_t = torch.softmax(t_out / tau, 1)
    kl = (p_t * (p_t.log() - torch.log_softmax(dist / tau, 1))).sum() * tau * tau / dist.numel()
    assert soft.item() == pytest.approx((0.7 * F.cross_entropy(cls, y) + 0.3 * kl).item(), rel=1e-5)
    with pytest.raises(ValueError, match="distilled"):
        DistillationLoss(base, _FixedTeacher(t_out), "hard")(cls, y, images)


def test_distilled_model_trains_with_and_without_distillation():
    from pitvit.models.registry import get_model_config
    from pitvit.models.pit import PiT

    cfg = get_model_config("pit_test").replace(distilled=True)
    student = PiT(cfg)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    student.set_distilled_training(True)
    out = student.train()(x)
    assert isinstance(out, tuple)
    loss = DistillationLoss(ClassificationLoss(0.1), teacher, "hard")(out, y, x)
    loss.backward()
    assert student.head_dist.weight.grad is not None and teacher[1].weight.grad is None
    # fine-tuning without distillation: the mean of the two heads is trained
    student.zero_grad()
    student.set_distilled_training(False)
    out = student(x)
    assert isinstance(out, torch.Tensor)
    DistillationLoss(ClassificationLoss(), None, "none")(out, y, x).backward()
    assert student.head.weight.grad is not None and student.head_dist.weight.grad is not None


def test_teacher_from_timm_name_and_checkpoint(tmp_path):
    from pitvit.train import build_teacher

    t = build_teacher("test_resnet", num_classes=10)
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    with pytest.raises(ValueError, match="neither a file"):
        build_teacher("no_such_net_xyz", num_classes=10)
    sd = {k: v + 1 for k, v in t.state_dict().items()}
    torch.save({"model": sd}, tmp_path / "t.pth")
    t2 = build_teacher("test_resnet", num_classes=10, weights=str(tmp_path / "t.pth"))
    k = next(iter(sd))
    assert torch.equal(t2.state_dict()[k], sd[k])


# ---------------------------------------------------------------------------- engine
def _loader(n=64, batch=16, seed=0):
    return torch.utils.data.DataLoader(ToySet(n, seed), batch_size=batch, shuffle=False)


def _step(model, optimizer, **kw) -> TrainStep:
    return TrainStep(model, optimizer, ClassificationLoss(), torch.device("cpu"), **kw)


def test_engine_learns_and_evaluates():
    torch.manual_seed(0)
    model = create_model("pit_test")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = evaluate(model, _loader(40, 20, 1), device=torch.device("cpu"))
    for e in range(3):
        stats = train_one_epoch(_step(model, opt), _loader(), epoch=e)
    after = evaluate(model, _loader(40, 20, 1), device=torch.device("cpu"))
    assert stats["steps"] == 4 and stats["images"] == 64 and math.isfinite(stats["loss"])
    assert after["loss"] < before["loss"] and after["n"] == 40
    assert 0 <= after["top1"] <= after["top5"] <= 100


def test_evaluate_hand_computed():
    class Fixed(nn.Module):
        def forward(self, x):
            return x

    # rows are logits; labels: hit top-1, miss top-1 but in top-5 (6 classes), miss both
    logits = torch.tensor([[5.0, 1, 0, 0, 0, 0], [5.0, 4, 3, 2, 1, 0], [5.0, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 4, 5])
    res = evaluate(Fixed(), [(logits, labels)], device=torch.device("cpu"))
    assert res["top1"] == pytest.approx(100 / 3) and res["top5"] == pytest.approx(200 / 3)
    assert res["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_gradient_accumulation_equals_the_large_batch():
    torch.manual_seed(0)
    a = create_model("pit_test")
    b = create_model("pit_test")
    b.load_state_dict(a.state_dict())
    oa, ob = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    train_one_epoch(_step(a, oa), _loader(32, 16))
    train_one_epoch(_step(b, ob, accum_steps=2), _loader(32, 8))
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_clipping_and_bf16_and_grad_checkpointing_run():
    torch.manual_seed(0)
    model = create_model("pit_test")
    model.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(_step(model, opt, amp_dtype=torch.bfloat16, clip_grad=1.0), _loader(32, 16))
    assert math.isfinite(stats["loss"])
    # clipping bounds the update: with SGD lr 1 and max norm 1e-3 no parameter moves more than 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(_step(model, sgd, clip_grad=1e-3), _loader(16, 16))
    moved = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), before)]).norm()
    assert moved.item() <= 1e-3 + 1e-6


def test_fp16_with_grad_scaler_and_clipping():
    # the GPU recipe's path (fp16 autocast, GradScaler, unscale before clipping), exercised on the CPU
    torch.manual_seed(0)
    model = create_model("pit_test")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    stats = train_one_epoch(_step(model, opt, scaler=scaler, amp_dtype=torch.float16, clip_grad=1.0),
                            _loader(32, 8))
    assert math.isfinite(stats["loss"]) and scaler.get_scale() > 0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_non_finite_loss_names_the_step():
    model = create_model("pit_test")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(out, y, x, calls=[0]):
        calls[0] += 1
        return ClassificationLoss()(out, y) * (float("nan") if calls[0] == 3 else 1.0)

    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        train_one_epoch(TrainStep(model, opt, loss_fn, torch.device("cpu")), _loader(64, 8), epoch=1,
                        progress=Progress(8, interval=4, enabled=False))


def test_progress_lines_and_bar():
    """Hand-counted: 4 batches with a line every 2 give lines at [2/4] and [4/4]; a bar is redrawn once per
    batch and its line ends once, also when the epoch stops early."""
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("pitvit.test_progress")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    torch.manual_seed(0)
    model = create_model("pit_test")
    step = _step(model, torch.optim.SGD(model.parameters(), lr=0.01))
    train_one_epoch(step, _loader(16, 4), progress=Progress(4, "epoch 1", interval=2, logger=logger))
    assert [r.split(" loss ")[0] for r in records] == ["epoch 1 [2/4]", "epoch 1 [4/4]"]
    assert all(" img/s eta 0:00:" in r and r.endswith("MB") for r in records)
    stream = io.StringIO()
    train_one_epoch(step, _loader(16, 4), progress=Progress(4, "epoch 2", bar=True, stream=stream))
    text = stream.getvalue()
    assert text.count("\r") == 4 and text.count("\n") == 1 and text.endswith("\n")
    assert "\r[" + "#" * 24 + "] epoch 2 [4/4] loss " in text
    stream = io.StringIO()
    res = train_one_epoch(step, _loader(16, 4), progress=Progress(4, "epoch 3", bar=True, stream=stream),
                          should_stop=lambda: True)
    assert res["stopped"] and res["next_step"] == 1
    assert stream.getvalue().count("\r") == 1 and stream.getvalue().endswith("\n")


def test_checkpoint_rng_roundtrip_is_plain_data(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    save_torch({"rng": state, "x": torch.ones(2)}, tmp_path / "c.pt")
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
    assert not list(tmp_path.glob(".*tmp*"))


# ---------------------------------------------------------------------------- fit (one process)
def _fit_cfg(tmp_path, *extra):
    return load_config(None, [f"train.output={tmp_path / 'run'}", "model.name=pit_test", "train.epochs=2",
                              "data.batch_size=16", "data.num_workers=0", "train.amp=none", "sched.warmup_epochs=1",
                              "optim.lr=2e-3", "optim.lr_base_batch=0", "ema.decay=0.9", "log.plot=false",
                              *extra])


def test_fit_writes_a_complete_run_folder(tmp_path):
    from pitvit.train.runner import fit

    cfg = _fit_cfg(tmp_path)
    res = fit(cfg, datasets=(ToySet(64), ToySet(32, 1)))
    run = tmp_path / "run"
    for f in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "log.txt"):
        assert (run / f).exists(), f
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"lr", "train_loss", "val_top1", "ema_top1", "ema_loss", "epoch_time_s", "train_img_s"} <= set(rows[0])
    ckpt = torch.load(run / "last.pt", weights_only=True)  # plain data
    assert ckpt["format"] == "pitvit" and ckpt["epoch"] == 2 and ckpt["model_name"] == "pit_test"
    assert ckpt["class_names"] == ToySet.classes and "ema_state_dict" in ckpt and "optimizer" in ckpt
    assert ckpt["config"]["model"]["name"] == "pit_test" and ckpt["best_metric"]["name"] == "ema_top1"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert res["epoch"] == 2 and not res["stopped"]
    model = create_model("pit_test")
    model.load_state_dict(ckpt["state_dict"])
    # a finished run is a valid teacher checkpoint
    from pitvit.train import build_teacher

    teacher = build_teacher(str(run / "best.pt"), num_classes=10)
    assert not teacher.training and teacher(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    # rerunning with more epochs continues from last.pt
    res = fit(_fit_cfg(tmp_path, "train.epochs=3"), datasets=(ToySet(64), ToySet(32, 1)))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_fit_stops_on_a_non_finite_loss(tmp_path):
    from pitvit.train.runner import TrainingError, fit

    cfg = _fit_cfg(tmp_path, "optim.lr=1e30", "sched.warmup_epochs=0", "ema.enabled=false", "train.epochs=3")
    with pytest.raises(TrainingError, match=r"non-finite loss .* at epoch \d+, step \d+"):
        fit(cfg, datasets=(ToySet(64), ToySet(32, 1)))


# ---------------------------------------------------------------------------- fit: the paths users take
def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# a run whose weights barely move: the loss it reports is the loss of the weights it started from
_STILL = ("train.epochs=1", "model.drop_path=0", "aug.mixup=0", "aug.cutmix=0", "aug.smoothing=0",
          "ema.enabled=false", "sched.warmup_epochs=0", "sched.min_lr=0", "sched.warmup_lr=0")


def test_fit_with_distillation_trains_on_the_teacher_term(tmp_path):
    """Reference: DeiT's hard distillation written out, ``(1 - a) CE(cls, y) + a CE(dist, argmax teacher)``,
    on the weights the run starts from (lr 1e-7 keeps them within ~1e-6 over the epoch's 4 steps)."""
    from pitvit.models import save_pretrained
    from pitvit.train.runner import fit

    torch.manual_seed(1)
    teacher = create_model("pit_test").eval()
    student = create_model("pit_test", distilled=True)
    with torch.no_grad():  # the teacher always says class 3 and the distillation head agrees: CE(dist) ~ 0
        teacher.head.bias[3] += 20.0
        student.head_dist.bias[3] += 20.0
    save_pretrained(teacher, tmp_path / "teacher")
    save_pretrained(student, tmp_path / "student")
    res = fit(_fit_cfg(tmp_path, *_STILL, "optim.lr=1e-7", "model.arch={distilled: true}",
                       f"model.weights={tmp_path / 'student'}", "distill.mode=hard",
                       f"distill.teacher={tmp_path / 'teacher'}", "distill.alpha=0.25"),
              datasets=(ToySet(64), None))
    x, y = ToySet(64).all()
    student.set_distilled_training(True)
    with torch.no_grad():
        cls_out, dist_out = student(x)
        ce, kd = F.cross_entropy(cls_out, y), F.cross_entropy(dist_out, teacher(x).argmax(1))
    assert kd.item() < 0.01 and ce.item() > 1.0  # the two terms are far apart, so the mix is telling
    assert res["train_loss"] == pytest.approx((0.75 * ce + 0.25 * kd).item(), rel=1e-3)


def test_fit_fine_tunes_from_model_weights(tmp_path):
    """model.weights of a 10-class, 32 px model fine-tuned for 5 classes at 48 px: the body loads, the head
    starts fresh (PyTorch's Linear init: |w| <= 1/sqrt(64)), and the position embedding is resized bicubically
    from the 15x15 grid to (48 - 4) // 2 + 1 = 23 per side (reference: timm's resample_abs_pos_embed)."""
    from timm.layers import resample_abs_pos_embed

    from pitvit.models import save_weights
    from pitvit.train.runner import fit

    torch.manual_seed(0)
    src = create_model("pit_test")
    with torch.no_grad():
        src.head.weight.fill_(1.0)
    save_weights(src, tmp_path / "src.pth")
    # lr 1e-6, 2 Adam steps: no weight moves more than ~2e-6
    fit(_fit_cfg(tmp_path, *_STILL, "optim.lr=1e-6", f"model.weights={tmp_path / 'src.pth'}", "model.img_size=48"),
        datasets=(ToySet(32, size=48, num_classes=5), None))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    sd, before = ckpt["state_dict"], src.state_dict()
    assert ckpt["pretrained_cfg"]["input_size"] == [3, 48, 48] and ckpt["class_names"] == ToySet.classes[:5]
    assert sd["head.weight"].shape == (5, 64) and sd["head.weight"].abs().max() <= 0.125 + 1e-5
    pos = before["pos_embed"]  # (1, C, 15, 15)
    tokens = resample_abs_pos_embed(pos.flatten(2).transpose(1, 2), new_size=[23, 23], old_size=[15, 15],
                                    num_prefix_tokens=0, antialias=False)
    want = tokens.transpose(1, 2).reshape(1, pos.shape[1], 23, 23)
    torch.testing.assert_close(sd["pos_embed"], want, rtol=0, atol=3e-6)
    for k, v in before.items():
        if not k.startswith("head") and k != "pos_embed":
            torch.testing.assert_close(sd[k], v, rtol=0, atol=3e-6, msg=k)


def test_resume_flags_and_the_changed_config_warning(tmp_path):
    from pitvit.train.runner import TrainingError, fit

    run = tmp_path / "run"
    data = (ToySet(32), None)
    with pytest.raises(TrainingError, match=r"--resume: .*last\.pt does not exist"):
        fit(_fit_cfg(tmp_path, "train.epochs=1"), require_resume=True, datasets=data)
    assert not run.exists()  # a run that cannot start leaves no folder behind
    # a temporary file of a killed writer (its process is gone) is removed when a run starts there
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run.mkdir()
    stale = run / f".last.pt.tmp{int(gone.stdout)}"
    stale.write_bytes(b"half a checkpoint")
    fit(_fit_cfg(tmp_path, "train.epochs=1"), datasets=data)
    assert not stale.exists()
    first = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    # train.resume=false with a last.pt starts over: the same seed gives the first run's weights, bit for bit
    fit(_fit_cfg(tmp_path, "train.epochs=1", "train.resume=false"), datasets=data)
    assert "exists but train.resume is false: starting over" in (run / "log.txt").read_text()
    assert [r["epoch"] for r in _rows(run)] == [1]
    again = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], v) for k, v in first.items())
    # a finished run asked for no more epochs: nothing to do; with other settings, refused; either way the
    # folder's config stays that of last.pt
    assert fit(_fit_cfg(tmp_path, "train.epochs=1"), datasets=data)["done_before"]
    with pytest.raises(TrainingError, match=r"finished its 1 epochs with other settings \(optim.lr: 0.002 -> 0.005\)"):
        fit(_fit_cfg(tmp_path, "train.epochs=1", "optim.lr=5e-3"), datasets=data)
    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 2e-3
    # continuing with changed settings says which (paths and worker counts are not settings of the run)
    fit(_fit_cfg(tmp_path, "train.epochs=2", "optim.lr=1e-3", "data.num_workers=1"), datasets=data)
    log = (run / "log.txt").read_text()
    assert "resuming with a changed configuration: optim.lr: 0.002 -> 0.001; train.epochs: 1 -> 2\n" in log
    assert [r["epoch"] for r in _rows(run)] == [1, 2]


def test_a_checkpoint_with_the_old_data_kind_config_resumes_as_unchanged(tmp_path):
    """A last.pt written before data.kind was renamed data.format (its config edited back to the old key) is
    continued without a 'changed configuration' (the check compares it renamed); a real change is still named."""
    from pitvit.train.runner import fit
    from pitvit.utils.io import save_torch

    run = tmp_path / "run"
    data = (ToySet(32), None)
    fit(_fit_cfg(tmp_path, "train.epochs=1", "data.format=imagefolder"), datasets=data)
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["config"]["data"] = {("kind" if k == "format" else k): v for k, v in ckpt["config"]["data"].items()}
    save_torch(ckpt, run / "last.pt")
    fit(_fit_cfg(tmp_path, "train.epochs=2", "data.format=imagefolder"), datasets=data)
    log = (run / "log.txt").read_text()
    assert "resuming with a changed configuration: train.epochs: 1 -> 2\n" in log and "data.kind" not in log
    assert [r["epoch"] for r in _rows(run)] == [1, 2]
    fit(_fit_cfg(tmp_path, "train.epochs=3", "data.format=list"), datasets=data)  # the check can fail
    assert "data.format: 'imagefolder' -> 'list'; train.epochs: 2 -> 3\n" in (run / "log.txt").read_text()


def test_fit_with_adamp_steps_like_timm(tmp_path):
    """optim.name=adamp through fit: one step on one batch of the 16 items equals timm's AdamP (reference) built
    with the settings DeiT's --opt adamp got from timm 0.3.x (wd_ratio 0.01, nesterov), pitvit's defaults.
    Adam's eps is raised because Adam turns float noise into full steps where the true gradient is zero (the
    attention's key bias), and fit sums the batch in another order than the reference."""
    from timm.optim import AdamP as TimmAdamP

    from pitvit.models import save_weights
    from pitvit.train.runner import fit

    torch.manual_seed(0)
    init = create_model("pit_test")
    save_weights(init, tmp_path / "init.pth")
    fit(_fit_cfg(tmp_path, *_STILL, "optim.name=adamp", "optim.lr=1e-2", "optim.eps=1e-3",
                 "optim.weight_decay=0.05", f"model.weights={tmp_path / 'init.pth'}"), datasets=(ToySet(16), None))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert {"delta", "wd_ratio", "nesterov"} <= set(ckpt["optimizer"]["param_groups"][0])  # AdamP's settings
    ref = copy.deepcopy(init)
    opt = TimmAdamP(param_groups(ref, 0.05), lr=1e-2, betas=(0.9, 0.999), eps=1e-3, weight_decay=0.05,
                    delta=0.1, wd_ratio=0.01, nesterov=True)
    x, y = ToySet(16).all()
    F.cross_entropy(ref(x), y).backward()
    opt.step()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert not torch.allclose(ckpt["state_dict"]["head.weight"], init.state_dict()["head.weight"])


def test_max_steps_per_epoch(tmp_path):
    """train.max_steps_per_epoch=2 on a loader of 4 batches, 2 epochs: 2 x 2 = 4 optimizer steps, and a per-step
    schedule spread over 2 steps an epoch."""
    from pitvit.train.runner import fit

    fit(_fit_cfg(tmp_path, "train.max_steps_per_epoch=2", "sched.stepping=step", "ema.enabled=false"),
        datasets=(ToySet(64), ToySet(32, 1)))
    run = tmp_path / "run"
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {4}
    assert ckpt["scheduler"]["steps_per_epoch"] == 2 and ckpt["scheduler"]["last_t"] == 1.5  # epoch 1 + 1 / 2
    assert ", 2 steps/epoch -> " in (run / "log.txt").read_text()
    assert [r["epoch"] for r in _rows(run)] == [1, 2]


def test_tensorboard_event_files_hold_the_metrics(tmp_path):
    """log.tensorboard=true: event files under RUN/tensorboard whose scalars, read back with TensorBoard's own
    reader, are metrics.jsonl's rows (float32 in the event file)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from pitvit.train.runner import fit

    fit(_fit_cfg(tmp_path, "log.tensorboard=true"), datasets=(ToySet(32), ToySet(16, 1)))
    run = tmp_path / "run"
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    rows = _rows(run)
    for key in ("lr", "train_loss", "val_loss", "val_top1", "ema_top1", "epoch_time_s"):
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [1, 2], key
        assert [e.value for e in scalars] == pytest.approx([r[key] for r in rows], rel=1e-6), key


def test_yaml_words_on_off_yes_no_stay_words():
    """YAML 1.1 (PyYAML's default) reads on/off/yes/no as booleans, so `--set log.progress_bar=off` became the
    string 'False'; the config reads YAML 1.2's booleans (true/false only) and boolean fields accept the words."""
    cfg = load_config("demo", ["log.progress_bar=off", "ema.enabled=yes", "train.compile=no"])
    assert (cfg.log.progress_bar, cfg.ema.enabled, cfg.train.compile) == ("off", True, False)
    assert load_config("demo", ["log.progress_bar=on"]).log.progress_bar == "on"
    assert load_config("demo", ["ema.enabled=false"]).ema.enabled is False
