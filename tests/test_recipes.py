"""The recipes replay their sources.

- The official recipes' learning rate, epoch by epoch, is what DeiT's ``main.py`` trained at with timm 0.3.x's
  ``CosineLRScheduler`` (the PiT paper's run), also across a resume.
- ``pit_ti_paddle.yaml``'s learning rate is what the Paddle reproduction's logs print (tests/data).
- AdamP updates as the authors' code does and is built as DeiT's ``--opt adamp`` built it.
- ``train.best_metric`` names a metric the run computes.

Each reference is written here from the source's behaviour (the formulas are spelled out below), never taken
from pitvit's scheduler or optimizer.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pitvit.train import AdamP, LRSchedule, build_optimizer, load_config, scaled_lr
from pitvit.utils.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "pitvit" / "configs"  # the shipped recipes
PADDLE_LOG = Path(__file__).resolve().parent / "data" / "paddle_pit_log.tsv"
OFFICIAL = ["pit_ti", "pit_xs", "pit_s", "pit_b", "pit_ti_distilled", "pit_xs_distilled", "pit_s_distilled",
            "pit_b_distilled"]
GPUS = {"pit_ti_paddle": 4}  # the headers' hardware; the official recipes run on 8


# ---------------------------------------------------------------------------- the sources' schedules
def timm03_cosine(t: float, *, base_lr: float, t_initial: int, warmup_t: float, warmup_lr_init: float,
                  lr_min: float, cycle_limit: int = 1, decay_rate: float = 0.1) -> float:
    """timm 0.3.x ``CosineLRScheduler._get_lr(t)`` for one group (``t_mul`` 1, no noise, no warmup prefix).

    DeiT builds it with ``create_scheduler(args, optimizer)``: ``t_initial=args.epochs``,
    ``lr_min=args.min_lr``, ``decay_rate=args.decay_rate`` (0.1), ``warmup_lr_init=args.warmup_lr``,
    ``warmup_t=args.warmup_epochs``, ``cycle_limit=1``, ``t_in_epochs=True``. So:
    ``t < warmup_t``: ``warmup_lr_init + t * (base_lr - warmup_lr_init) / warmup_t``; else the cycle
    ``i = t // t_initial`` and ``t_curr = t - i * t_initial`` (``t`` counted from 0, the warmup is not a prefix);
    while ``i < cycle_limit``: ``lr_min * g + (base_lr * g - lr_min * g) * (1 + cos(pi * t_curr / t_initial)) / 2``
    with ``g = decay_rate ** i``; after the last cycle, ``lr_min``.
    """
    if t < warmup_t:
        return warmup_lr_init + t * (base_lr - warmup_lr_init) / warmup_t
    i = t // t_initial
    t_curr = t - t_initial * i
    if i < cycle_limit:
        g = decay_rate ** i
        return lr_min * g + 0.5 * (base_lr * g - lr_min * g) * (1 + math.cos(math.pi * t_curr / t_initial))
    return lr_min


def deit_main_lrs(epochs: int, **sched: float) -> list[float]:
    """The rate each epoch of DeiT's ``main.py`` trains at::

        lr_scheduler, _ = create_scheduler(args, optimizer)  # puts warmup_lr_init in the groups
        for epoch in range(args.start_epoch, args.epochs):   # 300 epochs; the 10 cooldown epochs never run
            train_one_epoch(...)                             # at the rate currently set
            lr_scheduler.step(epoch)                         # sets lr(epoch), for the next epoch
    """
    current = sched["warmup_lr_init"] if sched["warmup_t"] else sched["base_lr"]
    out = []
    for epoch in range(epochs):
        out.append(current)
        current = timm03_cosine(epoch, **sched)
    return out


def _recipe_schedule(name: str, *overrides: str) -> tuple[LRSchedule, dict]:
    """The schedule a recipe builds on its header's hardware, and the matching timm arguments."""
    cfg = load_config(CONFIGS / f"{name}.yaml", list(overrides))
    lr = scaled_lr(cfg.optim.lr, GPUS.get(name, 8) * cfg.data.batch_size, cfg.optim.lr_base_batch)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = cfg.sched
    timm_args = dict(base_lr=lr, t_initial=cfg.train.epochs, warmup_t=s.warmup_epochs, warmup_lr_init=s.warmup_lr,
                     lr_min=s.min_lr)
    return LRSchedule.from_config(s, opt, lr, cfg.train.epochs), timm_args


def _max_rel(got: list[float], want: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(got, want, strict=True))


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_recipes_train_every_epoch_at_deits_rate(name):
    sched, timm_args = _recipe_schedule(name)
    assert sched.stepping == "deit" and sched.total_epochs == 300
    got = [sched.set(e) for e in range(sched.total_epochs)]
    want = deit_main_lrs(300, **timm_args)
    assert _max_rel(got, want) <= 1e-6
    peak, warm = timm_args["base_lr"], timm_args["warmup_t"]
    assert peak == pytest.approx(1e-3) and got[0] == got[1] == timm_args["warmup_lr_init"] == 1e-6
    assert got[2] == pytest.approx(1e-6 + (peak - 1e-6) / warm, rel=1e-12)  # epoch 2 at lr(1)
    assert got[-1] == pytest.approx(1e-5 + (peak - 1e-5) * (1 + math.cos(math.pi * 298 / 300)) / 2, rel=1e-12)


def test_deit_reference_agrees_with_timms_scheduler_in_deits_loop():
    # The same loop driving timm's own CosineLRScheduler (its 1.0 signature: cycle_decay was decay_rate).
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    s = CosineLRScheduler(opt, t_initial=300, lr_min=1e-5, cycle_decay=0.1, warmup_lr_init=1e-6, warmup_t=5,
                          cycle_limit=1, t_in_epochs=True)
    lrs = []
    for epoch in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        s.step(epoch)
    want = deit_main_lrs(300, base_lr=1e-3, t_initial=300, warmup_t=5, warmup_lr_init=1e-6, lr_min=1e-5)
    assert _max_rel(lrs, want) <= 1e-12


def test_epoch_stepping_is_timm_train_py():
    # timm's train.py: the scheduler is built at lr(0), and after epoch e it calls step(e + 1); the run lasts
    # epochs + cooldown_epochs, the cooldown at lr_min.
    sched, timm_args = _recipe_schedule("pit_ti", "sched.stepping=epoch", "sched.cooldown_epochs=10")
    assert sched.total_epochs == 310
    got = [sched.set(e) for e in range(310)]
    want = [timm03_cosine(e, **timm_args) for e in range(310)]
    assert _max_rel(got, want) <= 1e-12 and got[300:] == [1e-5] * 10


def test_step_stepping_matches_timm_per_update():
    # timm's train.py with t_in_epochs=False: step_update(num_updates) after each optimizer step, the scheduler's
    # t_initial and warmup_t in updates; the rate of update u is lr(u / steps_per_epoch).
    from timm.scheduler import CosineLRScheduler

    steps = 4
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    ours = LRSchedule(opt, 1e-3, 10, 2, 1e-6, 1e-5, cooldown_epochs=3, stepping="step", steps_per_epoch=steps)
    assert ours.per_step
    got = [ours.set(e, k) for e in range(13) for k in range(steps)]
    ref_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3)
    timm_s = CosineLRScheduler(ref_opt, t_initial=10 * steps, lr_min=1e-5, warmup_lr_init=1e-6, warmup_t=2 * steps,
                               t_in_epochs=False)
    for u, lr in enumerate(got):
        timm_s.step_update(u)
        assert lr == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12), u
        assert lr == pytest.approx(timm03_cosine(u / steps, base_lr=1e-3, t_initial=10, warmup_t=2,
                                                 warmup_lr_init=1e-6, lr_min=1e-5), rel=1e-12), u


def _paddle_log() -> list[tuple[int, float]]:
    rows = [line.split("\t") for line in PADDLE_LOG.read_text().splitlines() if line and not line.startswith("#")]
    assert rows[0][:2] == ["epoch", "lr"]
    return [(int(r[0]), float(r[1])) for r in rows[1:]]


def test_paddle_recipe_reproduces_every_logged_lr():
    log = _paddle_log()
    assert [k for k, _ in log] == list(range(1, 311))
    sched, _ = _recipe_schedule("pit_ti_paddle")
    assert sched.total_epochs == 310 and sched.base_lr == pytest.approx(1e-3)
    # pitvit's epoch e (0-based) is the log's 1-based epoch k = e + 1, which trained at lr(t = k)
    diffs = [abs(sched.set(k - 1) - logged) for k, logged in log]
    assert max(diffs) <= 5e-7  # the log prints 6 decimals
    # the curve, written from the seed's scheduler: 20 warmup epochs from 5e-7, cosine from t = 0 over 300
    # epochs to 5e-6, 5e-6 from t = 300 on
    for k, logged in log:
        want = timm03_cosine(k, base_lr=1e-3, t_initial=300, warmup_t=20, warmup_lr_init=5e-7, lr_min=5e-6)
        assert abs(want - logged) <= 5e-7, k
    assert sched.set(149) == pytest.approx(5e-6 + 0.5 * (1e-3 - 5e-6), rel=1e-12)  # k = 150: mid-cosine


# ---------------------------------------------------------------------------- through fit, with a resume
class _Toy(torch.utils.data.Dataset):
    """16 separable 3x32x32 images; raises :class:`_Killed` once ``limit`` items have been read."""

    classes = [f"c{i}" for i in range(10)]

    def __init__(self, limit: int = 0) -> None:
        self.limit, self.reads = limit, 0

    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int):
        self.reads += 1
        if self.limit and self.reads > self.limit:
            raise _Killed
        x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 0.5
        x[:, 3 * (i % 10):3 * (i % 10) + 3, :] += 2.0
        return x, i % 10


class _Killed(Exception):
    pass


def _toy_cfg(run: Path, *extra: str):
    return load_config(None, [f"train.output={run}", "model.name=pit_test", "train.epochs=6", "data.batch_size=16",
                              "data.num_workers=0", "train.amp=none", "optim.lr=1e-3", "optim.lr_base_batch=0",
                              "sched.warmup_epochs=3", "sched.warmup_lr=1e-4", "sched.min_lr=1e-5",
                              "log.plot=false", *extra])


def test_fit_trains_at_deits_rates_across_a_resume(tmp_path, one_thread):
    from pitvit.train.runner import fit

    run = tmp_path / "run"
    with pytest.raises(_Killed):  # dies while reading epoch 4's batch (one batch of 16 per epoch)
        fit(_toy_cfg(run), datasets=(_Toy(limit=3 * 16), None))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    fit(_toy_cfg(run), datasets=(_Toy(), None))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    want = deit_main_lrs(6, base_lr=1e-3, t_initial=6, warmup_t=3, warmup_lr_init=1e-4, lr_min=1e-5)
    assert _max_rel([r["lr"] for r in rows], want) <= 1e-12
    assert not (run / "best.pt").exists()  # no validation split and no train.best_metric: no best.pt


# ---------------------------------------------------------------------------- AdamP
def adamp_reference(w: torch.Tensor, grads: list[torch.Tensor], *, lr: float, betas: tuple[float, float],
                    eps: float, weight_decay: float, delta: float, wd_ratio: float, nesterov: bool):
    """The authors' AdamP (clovaai/AdamP, vendored in timm 0.3.x) in float64, one tensor; returns the weights
    after each step and which view (``channel``, ``layer`` or ``None``) was projected.

    Per step t: Adam moments m, v; ``denom = sqrt(v) / sqrt(1 - b2^t) + eps``; ``perturb = m / denom``, or with
    Nesterov ``(b1 m + (1 - b1) g) / denom``. For a weight of 2+ dims, try the per-row view, then the whole
    tensor: if ``max |<g, w>| / (|g| + eps) / (|w| + eps) < delta / sqrt(row length)``, remove from ``perturb``
    its component along ``w / (|w| + eps)`` (per row of the view) and decay by ``lr * wd * wd_ratio``, else by
    ``lr * wd``. Then ``w -= lr / (1 - b1^t) * perturb``.
    """
    b1, b2 = betas
    w = w.double().clone()
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    out = []
    for t, g in enumerate(grads, start=1):
        g = g.double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        denom = v.sqrt() / math.sqrt(1 - b2 ** t) + eps
        perturb = ((b1 * m + (1 - b1) * g) if nesterov else m) / denom
        ratio, view = 1.0, None
        if w.ndim > 1:
            for name, rows in (("channel", w.shape[0]), ("layer", 1)):
                wv, gv = w.reshape(rows, -1), g.reshape(rows, -1)
                cos = (wv * gv).sum(1).abs() / (gv.norm(dim=1) + eps) / (wv.norm(dim=1) + eps)
                if cos.max() < delta / math.sqrt(wv.shape[1]):
                    unit = wv / (wv.norm(dim=1, keepdim=True) + eps)
                    pv = perturb.reshape(rows, -1)
                    perturb = (pv - unit * (unit * pv).sum(1, keepdim=True)).reshape(w.shape)
                    ratio, view = wd_ratio, name
                    break
        w = w * (1 - lr * weight_decay * ratio) - lr / (1 - b1 ** t) * perturb
        out.append((w.clone(), view))
    return out


def _adamp_run(w0: torch.Tensor, grads: list[torch.Tensor], **kw) -> list[torch.Tensor]:
    p = nn.Parameter(w0.double().clone())
    opt = AdamP([p], **kw)
    out = []
    for g in grads:
        p.grad = g.double().clone()
        opt.step()
        out.append(p.detach().clone())
    return out


DEIT_ADAMP = dict(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.5, delta=0.1, wd_ratio=0.01, nesterov=True)


def test_adamp_first_step_by_hand():
    # Step 1: m = 0.1 g, sqrt(v / (1 - b2)) = |g|, so Nesterov's perturb is 0.19 sign(g) (m / denom: 0.1 sign(g)),
    # the step size lr / (1 - b1) = 1, and a projected weight decays by lr * wd * wd_ratio = 5e-4.
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    # each row's gradient is orthogonal to it: the per-row view is projected. Row 1: unit [0.6, 0.8],
    # 0.19 [1, -1] has radial part -0.038, leaving [0.2128, -0.1596]; row 2's [0.19, 0] is already tangential.
    g = torch.tensor([[4.0, -3.0], [1.0, 0.0]])
    want = torch.tensor([[3 * 0.9995 - 0.2128, 4 * 0.9995 + 0.1596], [-0.19, 2 * 0.9995]], dtype=torch.float64)
    torch.testing.assert_close(_adamp_run(w, [g], **DEIT_ADAMP)[0], want, rtol=0, atol=1e-7)
    # without Nesterov: 0.1 [1, -1] - (-0.02) [0.6, 0.8] = [0.112, -0.084]
    want = torch.tensor([[3 * 0.9995 - 0.112, 4 * 0.9995 + 0.084], [-0.1, 2 * 0.9995]], dtype=torch.float64)
    torch.testing.assert_close(_adamp_run(w, [g], **{**DEIT_ADAMP, "nesterov": False})[0], want, rtol=0, atol=1e-7)
    # a gradient along the weight: no projection, full decay 1 - 0.1 * 0.5
    want = torch.tensor([[3 * 0.95 - 0.19, 4 * 0.95 - 0.19], [0.0, 2 * 0.95 - 0.19]], dtype=torch.float64)
    torch.testing.assert_close(_adamp_run(w, [w.clone()], **DEIT_ADAMP)[0], want, rtol=0, atol=1e-7)
    # row 2's gradient is not orthogonal (|cos| 0.32 > 0.1 / sqrt(2)), the whole tensor's is (|cos| =
    # 1 / sqrt(26 * 35) < 0.1 / sqrt(4)): the layer view is projected. perturb 0.19 sign(g) has
    # <w, perturb> = 0.19 * 2, so perturb - w <w, perturb> / |w|^2 = 0.19 sign(g) - (0.19 / 13) w.
    w = torch.tensor([[4.0, 3.0], [1.0, 0.0]])
    g = torch.tensor([[3.0, -4.0], [1.0, 3.0]])
    want = (w * 0.9995 - (0.19 * g.sign() - 0.19 / 13 * w)).double()
    torch.testing.assert_close(_adamp_run(w, [g], **DEIT_ADAMP)[0], want, rtol=0, atol=1e-7)


def _tangential(w: torch.Tensor, g: torch.Tensor, rows: int) -> torch.Tensor:
    wv, gv = w.reshape(rows, -1), g.reshape(rows, -1)
    return (gv - wv * (wv * gv).sum(1, keepdim=True) / (wv * wv).sum(1, keepdim=True)).reshape(w.shape)


@pytest.mark.parametrize("nesterov", [True, False])
def test_adamp_steps_match_the_authors_algorithm(nesterov):
    torch.manual_seed(0)
    kw = {**DEIT_ADAMP, "lr": 1e-2, "betas": (0.9, 0.99), "weight_decay": 0.05, "nesterov": nesterov}
    views = set()
    for shape in [(4, 3, 2, 2), (5, 7), (6,)]:
        w = torch.randn(shape, dtype=torch.float64)
        # a per-row tangential gradient, a whole-tensor tangential one, then unconstrained ones (each step
        # decides again from the weight it holds then)
        grads = [torch.randn(shape, dtype=torch.float64) for _ in range(6)]
        if len(shape) > 1:
            grads[0] = _tangential(w, grads[0], shape[0])
            grads[1] = _tangential(w, grads[1], 1)
        ref = adamp_reference(w, grads, **kw)
        views |= {view for _, view in ref}
        for step, (got, (want, _)) in enumerate(zip(_adamp_run(w, grads, **kw), ref, strict=True)):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12, msg=f"{shape} step {step + 1}")
    assert {"channel", None} <= views  # both branches exercised


def test_recipes_build_adamp_as_deit_did():
    from pitvit.models import create_model
    from pitvit.train.builders import build_training
    from pitvit.utils.distributed import DistInfo

    for name in OFFICIAL + ["pit_ti_paddle"]:
        o = load_config(CONFIGS / f"{name}.yaml").optim
        assert (o.wd_ratio, o.nesterov, o.delta) == (0.01, True, 0.1), name
    cfg = load_config(CONFIGS / "pit_ti.yaml", ["optim.name=adamp", "model.name=pit_test", "train.amp=none"])
    t = build_training(cfg, create_model("pit_test", num_classes=10), steps_per_epoch=5, info=DistInfo())
    assert isinstance(t.optimizer, AdamP)
    decayed = t.optimizer.param_groups[0]
    assert (decayed["wd_ratio"], decayed["nesterov"], decayed["delta"], decayed["weight_decay"]) == \
        (0.01, True, 0.1, 0.05)
    assert t.optimizer.param_groups[0]["betas"] == (0.9, 0.999) and t.optimizer.param_groups[0]["eps"] == 1e-8
    # and the three settings are config keys, like any other
    model = nn.Linear(3, 2)
    opt = build_optimizer(model, "adamp", 1e-3, 0.05, wd_ratio=0.2, nesterov=False, delta=0.3)
    assert {(g["wd_ratio"], g["nesterov"], g["delta"]) for g in opt.param_groups} == {(0.2, False, 0.3)}
    cfg = load_config(None, ["optim.wd_ratio=0", "optim.nesterov=false", "optim.delta=0.2"])
    assert (cfg.optim.wd_ratio, cfg.optim.nesterov, cfg.optim.delta) == (0.0, False, 0.2)


# ---------------------------------------------------------------------------- best.pt
def test_every_recipe_says_which_metric_picks_best_pt():
    from pitvit.train.config import resolve_best_metric

    want = {**{name: "ema_top1" for name in OFFICIAL}, "pit_ti_paddle": "val_top1", "demo": "val_top1"}
    assert sorted(want) == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name, metric in want.items():
        header = [line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines() if line.startswith("#")]
        assert any("best.pt" in line for line in header), f"{name}.yaml's header does not say what picks best.pt"
        assert resolve_best_metric(load_config(CONFIGS / f"{name}.yaml")) == metric, name
    # the official recipes follow EMA: turning it off (as the fine-tuning example does) picks val_top1
    assert resolve_best_metric(load_config(CONFIGS / "pit_s.yaml", ["ema.enabled=false"])) == "val_top1"


def test_best_metric_typos_and_uncomputed_metrics_are_config_errors():
    with pytest.raises(ConfigError, match=r"'val_top_1' is not allowed.*val_top1, val_top5, val_loss, ema_top1"):
        load_config(None, ["train.best_metric=val_top_1"])
    with pytest.raises(ConfigError, match=r"'ema_top1' needs ema.enabled=true; this run computes: val_top1, "
                                          r"val_top5, val_loss, train_loss$"):
        load_config(None, ["train.best_metric=ema_top1", "ema.enabled=false"])
    for name in ("val_top5", "ema_loss", "train_loss"):
        assert load_config(None, [f"train.best_metric={name}"]).train.best_metric == name


def test_a_val_metric_without_a_validation_split_stops_the_run_before_training(tmp_path, one_thread):
    from pitvit.train.runner import fit

    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'val_top1' needs a validation split; this run computes: train_loss$"):
        fit(_toy_cfg(run, "train.best_metric=val_top1", "train.epochs=1"), datasets=(_Toy(), None))
    assert not (run / "last.pt").exists()
    res = fit(_toy_cfg(run, "train.best_metric=train_loss", "train.epochs=1"), datasets=(_Toy(), None))
    assert res["best"]["name"] == "train_loss" and (run / "best.pt").exists()


def test_a_resumed_run_follows_a_changed_best_metric(tmp_path, one_thread):
    from pitvit.train.runner import fit

    run = tmp_path / "run"
    res = fit(_toy_cfg(run, "train.epochs=1"), datasets=(_Toy(), _Toy()))
    assert res["best"]["name"] == "ema_top1" and res["best"]["epoch"] == 1
    res = fit(_toy_cfg(run, "train.epochs=2", "train.best_metric=val_loss"), datasets=(_Toy(), _Toy()))
    assert res["best"]["name"] == "val_loss" and res["best"]["epoch"] == 2  # not the checkpoint's ema_top1


def test_cli_exit_code_for_a_wrong_best_metric(capsys):
    from pitvit.cli import main

    assert main(["train", "--config", str(CONFIGS / "pit_ti.yaml"), "--data", "unused",
                 "--set", "train.best_metric=val_top_1"]) == 2
    assert "val_top_1" in capsys.readouterr().err


def test_the_aug_section_names_the_data_layers_settings():
    """Every augmentation setting a preset holds (the data layer's table) is an ``aug.*`` key, typed in the
    schema; the section's other keys are mixing, smoothing and sampling."""
    import dataclasses

    from pitvit.data import AUG_SETTINGS
    from pitvit.train.config import AugCfg

    fields = {f.name for f in dataclasses.fields(AugCfg)}
    assert set(AUG_SETTINGS) | {"preset"} <= fields
    assert fields - set(AUG_SETTINGS) - {"preset"} == {"mixup", "cutmix", "mixup_prob", "mixup_switch_prob",
                                                       "mixup_mode", "mix_group", "smoothing", "repeated_aug"}
