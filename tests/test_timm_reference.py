"""The recipe's EMA and soft-target loss against timm's ``ModelEmaV3`` and ``SoftTargetCrossEntropy`` (the
reference: what timm's train.py uses), over a few training steps of the same model on the same batches.
AdamP against timm's: ``test_train.test_adamp_matches_timm`` and ``test_fit_with_adamp_steps_like_timm``.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3

from pitvit.models import create_model
from pitvit.train import ClassificationLoss, ModelEma


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


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_timms_model_ema_v3(warmup):
    torch.manual_seed(0)
    model = create_model("pit_test", stem_channels=8)  # the optional stem has BatchNorm buffers: copied
    ema = ModelEma(model, decay=0.9, warmup=warmup)
    ref = ModelEmaV3(copy.deepcopy(model), decay=0.9, exclude_buffers=True)
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


def test_adamp_resumes_a_checkpoint_that_counts_steps_in_tensors():
    """pitvit 0.1's own AdamP stored ``step`` as a tensor; resumed, the run must step as timm's AdamP does."""
    from timm.optim import AdamP as TimmAdamP

    from pitvit.train import AdamP

    torch.manual_seed(0)
    model = create_model("pit_test")
    ref = copy.deepcopy(model)
    opt, ref_opt = AdamP(model.parameters(), lr=1e-2), TimmAdamP(ref.parameters(), lr=1e-2)
    first, rest = _batches(3)[:1], _batches(3)[1:]
    _train(model, opt, first)
    _train(ref, ref_opt, first)
    saved = opt.state_dict()
    for s in saved["state"].values():
        s["step"] = torch.tensor(float(s["step"]))  # as the old checkpoints hold it
    opt = AdamP(model.parameters(), lr=1e-2)
    opt.load_state_dict(saved)
    _train(model, opt, rest)
    _train(ref, ref_opt, rest)
    for a, b in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b)
