"""The recipe's optimizer, EMA and soft-target loss against timm's (the reference: timm's ``AdamP`` is the code
DeiT's ``--opt adamp`` ran for the PiT authors, ``ModelEmaV3`` and ``SoftTargetCrossEntropy`` what timm's
train.py uses). Each runs a few training steps of the same model on the same batches both ways and compares.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.optim import AdamP as TimmAdamP
from timm.utils import ModelEmaV3

from pitvit.models import create_model
from pitvit.train import ClassificationLoss, ModelEma, build_optimizer, param_groups


def _batches(n: int = 4):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)) for _ in range(n)]


def _train(model, opt, batches, after_step=None):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if after_step is not None:
            after_step(model)


@pytest.mark.parametrize("nesterov, wd_ratio", [(True, 0.01), (False, 0.1)])
def test_adamp_matches_timms(nesterov, wd_ratio):
    torch.manual_seed(0)
    ours, ref = create_model("pit_test"), None
    ref = copy.deepcopy(ours)
    opt = build_optimizer(ours, "adamp", lr=1e-2, weight_decay=0.05, wd_ratio=wd_ratio, nesterov=nesterov,
                          delta=0.1)
    ref_opt = TimmAdamP(param_groups(ref, 0.05), lr=1e-2, weight_decay=0.05, wd_ratio=wd_ratio,
                        nesterov=nesterov, delta=0.1)
    batches = _batches()
    _train(ours, opt, batches)
    _train(ref, ref_opt, batches)
    moved = 0
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(a, create_model("pit_test").state_dict()[name]))
    assert moved > 10  # the steps changed the weights: there was something to compare


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_timms_model_ema_v3(warmup):
    torch.manual_seed(0)
    model = create_model("pit_test")
    ema = ModelEma(model, decay=0.9, warmup=warmup)
    ref = ModelEmaV3(model, decay=0.9, foreach=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    n = [0]

    def both(m):
        ema.update(m)
        # timm's decay schedule differs in warmup: give it ours, step by step (the one thing ModelEma adds)
        ref.decay = min(0.9, (1 + n[0]) / (10 + n[0])) if warmup else 0.9
        ref.update(m)
        n[0] += 1
    _train(model, opt, _batches(), both)
    assert ema.updates == 4
    for (name, a), b in zip(ema.state_dict().items(), ref.module.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    assert not torch.equal(ema.state_dict()["head.weight"], model.state_dict()["head.weight"])


def test_soft_targets_loss_matches_timms():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 10, generator=g)
    targets = torch.softmax(torch.randn(8, 10, generator=g), dim=-1)  # mixup's soft targets
    torch.testing.assert_close(ClassificationLoss()(logits, targets), SoftTargetCrossEntropy()(logits, targets))
    # a (cls, dist) pair is scored on the class head
    torch.testing.assert_close(ClassificationLoss()((logits, -logits), targets),
                               SoftTargetCrossEntropy()(logits, targets))
