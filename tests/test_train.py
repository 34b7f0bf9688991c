"""Training: config, optimizers, schedule, EMA, distillation, engine and fit, against hand-computed values and
timm's implementations. Sized for a 2-core CPU; the multi-process runs live in test_train_runs.py."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pitvit.models import create_model
from pitvit.train import (AdamP, ClassificationLoss, DistillationLoss, LRSchedule, ModelEma, NonFiniteLossError,
                          apply_overrides, config_to_dict, evaluate, load_config, param_groups, scaled_lr,
                          train_one_epoch)
from pitvit.train.checkpoint import atomic_save, capture_rng, restore_rng

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "pitvit" / "configs"  # the shipped recipes


class ToySet(torch.utils.data.Dataset):
    """Separable 3x32x32 images: class ``c`` lights up a stripe; index-seeded noise."""

    classes = [f"c{i}" for i in range(10)]

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        y = i % 10
        x = torch.randn(3, 32, 32, generator=g) * 0.5
        x[:, 3 * y:3 * y + 3, :] += 2.0
        return x, y


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


# ---------------------------------------------------------------------------- schedule
def _timm_lrs(epochs: int, per_step_steps: int = 0, **kw):
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=kw.pop("base_lr"))
    if per_step_steps:
        s = CosineLRScheduler(opt, t_in_epochs=False, **{k: v * per_step_steps if k in ("t_initial", "warmup_t")
                                                          else v for k, v in kw.items()})
        out = []
        for u in range(epochs * per_step_steps):
            s.step_update(u)
            out.append(opt.param_groups[0]["lr"])
        return out
    s = CosineLRScheduler(opt, **kw)
    out = []
    for e in range(epochs):
        s.step(e)
        out.append(opt.param_groups[0]["lr"])
    return out


def test_schedule_matches_timm_for_the_pit_ti_recipe():
    cfg = load_config(CONFIGS / "pit_ti.yaml")
    lr = scaled_lr(cfg.optim.lr, 1024)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = cfg.sched
    ours = LRSchedule(opt, lr, cfg.train.epochs, s.warmup_epochs, s.warmup_lr, s.min_lr, s.cooldown_epochs,
                      s.warmup_prefix, s.per_step)
    got = [ours.set(e) for e in range(ours.total_epochs)]
    want = _timm_lrs(300, base_lr=lr, t_initial=300, warmup_t=5, warmup_lr_init=1e-6, lr_min=1e-5)
    assert len(got) == 300
    for e, (a, b) in enumerate(zip(got, want)):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), f"epoch {e}"
    assert got[0] == 1e-6 and got[5] == pytest.approx(1e-3, rel=1e-3)


def test_schedule_per_step_and_cooldown():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = LRSchedule(opt, 1e-3, 10, 2, 1e-6, 1e-5, cooldown_epochs=3, per_step=True, steps_per_epoch=4)
    got = [ours.set(e, k) for e in range(10) for k in range(4)]
    want = _timm_lrs(10, per_step_steps=4, base_lr=1e-3, t_initial=10, warmup_t=2, warmup_lr_init=1e-6,
                     lr_min=1e-5)
    for a, b in zip(got, want):
        assert a == pytest.approx(b, rel=1e-12)
    assert ours.total_epochs == 13 and [ours.set(e) for e in (10, 11, 12)] == [1e-5] * 3
    # PaddleViT's warmup-prefix cosine: hand values at the warmup end, midway and the end
    p = LRSchedule(opt, 1.0, 300, 20, 5e-7, 5e-6, cooldown_epochs=10, warmup_prefix=True)
    assert p.set(0) == 5e-7 and p.set(20) == pytest.approx(1.0)
    assert p.set(160) == pytest.approx(5e-6 + 0.5 * (1 - 5e-6))
    assert p.set(305) == 5e-6


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
    logits, y = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    smooth = ClassificationLoss(0.1)(logits, y)
    logp = logits.log_softmax(-1)
    want = (-(0.9 * logp.gather(1, y[:, None]).squeeze(1)) - 0.1 * logp.mean(-1)).mean()
    assert smooth.item() == pytest.approx(want.item(), rel=1e-5)
    soft = torch.softmax(torch.randn(6, 5), -1)
    assert ClassificationLoss()(logits, soft).item() == pytest.approx((-(soft * logp).sum(-1)).mean().item(),
                                                                       rel=1e-5)


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


def test_engine_learns_and_evaluates():
    torch.manual_seed(0)
    model = create_model("pit_test")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = evaluate(model, _loader(40, 20, 1), device=torch.device("cpu"))
    for e in range(3):
        stats = train_one_epoch(model, _loader(), opt, loss_fn=ClassificationLoss(), device=torch.device("cpu"),
                                epoch=e, verbose=False)
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
    kw = dict(loss_fn=ClassificationLoss(), device=torch.device("cpu"), verbose=False)
    train_one_epoch(a, _loader(32, 16), oa, **kw)
    train_one_epoch(b, _loader(32, 8), ob, accum_steps=2, **kw)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


def test_clipping_and_bf16_and_grad_checkpointing_run():
    torch.manual_seed(0)
    model = create_model("pit_test")
    model.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    stats = train_one_epoch(model, _loader(32, 16), opt, loss_fn=ClassificationLoss(), device=torch.device("cpu"),
                            amp_dtype=torch.bfloat16, clip_grad=1.0, verbose=False)
    assert math.isfinite(stats["loss"])
    # clipping bounds the update: with SGD lr 1 and max norm 1e-3 no parameter moves more than 1e-3
    before = [p.detach().clone() for p in model.parameters()]
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    train_one_epoch(model, _loader(16, 16), sgd, loss_fn=ClassificationLoss(), device=torch.device("cpu"),
                    clip_grad=1e-3, verbose=False)
    moved = torch.cat([(p.detach() - q).flatten() for p, q in zip(model.parameters(), before)]).norm()
    assert moved.item() <= 1e-3 + 1e-6


def test_fp16_with_grad_scaler_and_clipping():
    # the GPU recipe's path (fp16 autocast, GradScaler, unscale before clipping), exercised on the CPU
    torch.manual_seed(0)
    model = create_model("pit_test")
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    stats = train_one_epoch(model, _loader(32, 8), opt, loss_fn=ClassificationLoss(), device=torch.device("cpu"),
                            scaler=scaler, amp_dtype=torch.float16, clip_grad=1.0, verbose=False)
    assert math.isfinite(stats["loss"]) and scaler.get_scale() > 0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_non_finite_loss_names_the_step():
    model = create_model("pit_test")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(out, y, x, calls=[0]):
        calls[0] += 1
        return ClassificationLoss()(out, y) * (float("nan") if calls[0] == 3 else 1.0)

    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        train_one_epoch(model, _loader(64, 8), opt, loss_fn=loss_fn, device=torch.device("cpu"), epoch=1,
                        log_interval=4, verbose=False)


def test_checkpoint_rng_roundtrip_is_plain_data(tmp_path):
    import random

    import numpy as np

    state = capture_rng()
    atomic_save({"rng": state, "x": torch.ones(2)}, tmp_path / "c.pt")
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
