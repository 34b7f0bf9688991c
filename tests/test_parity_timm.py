"""Parity with timm's PiT (an independent implementation): timm's weights, moved through ``load_weights``
(timm >= 0.9 key layout detected), give the same logits, features and distilled outputs in fp32."""
from __future__ import annotations

import pytest
import timm
import torch

from pitvit.models import create_model, load_weights

VARIANTS = ["pit_ti", "pit_xs", "pit_s", "pit_b",
            "pit_ti_distilled", "pit_xs_distilled", "pit_s_distilled", "pit_b_distilled"]
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


def pair(name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    reference = timm.create_model(f"{name}_224", pretrained=False)
    ours = create_model(name)
    result = load_weights(ours, reference.state_dict())
    assert result.weights.layout == "timm"
    return ours, reference


@pytest.mark.parametrize("name", VARIANTS)
def test_logits_match_timm(name):
    ours, reference = pair(name)
    ours.eval()
    reference.eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats, ref_feats = ours.forward_features(x), reference.forward_features(x)
        logits, ref_logits = ours.forward_head(feats), reference.forward_head(ref_feats)
        assert (feats - ref_feats).abs().max() <= TOL
        assert (logits - ref_logits).abs().max() <= TOL
        if ours.head_dist is not None:  # each head on its own token, not only their mean
            for token, head in ((0, "head"), (1, "head_dist")):
                a = getattr(ours, head)(feats[:, token])
                b = getattr(reference, head)(ref_feats[:, token])
                assert (a - b).abs().max() <= TOL, head


@pytest.mark.parametrize("name", ["pit_ti_distilled", "pit_s_distilled"])
def test_distilled_training_outputs_match_timm(name):
    ours, reference = pair(name)
    ours.train().set_distilled_training(True)
    reference.train().set_distilled_training(True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, ref = ours(x), reference(x)
    assert isinstance(out, tuple) and len(out) == 2
    for a, b in zip(out, ref):
        assert (a - b).abs().max() <= TOL
