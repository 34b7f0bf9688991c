"""The model contract (timm's, sized for CPU) on every registered variant, plus FACTS.md's numbers."""
from __future__ import annotations

import math
import re

import pytest
import timm
import torch
import torch.nn.functional as F

import pitvit
from pitvit.models import PiTConfig, create_model, list_models, register_with_timm, resize_pos_embed, token_grid
from pitvit.utils.errors import ConfigError
from pitvit.tools.zoo import count_macs, count_params

ALL = list_models()
PAPER = [n for n in ALL if n.startswith(("pit_ti", "pit_xs", "pit_s", "pit_b"))]

# FACTS.md §1, computed from the official model.
PARAMS = {
    "pit_ti": 4_847_272, "pit_xs": 10_618_888, "pit_s": 23_461_912, "pit_b": 73_764_840,
    "pit_ti_distilled": 5_104_336, "pit_xs_distilled": 11_003_984, "pit_s_distilled": 24_039_056,
    "pit_b_distilled": 74_790_096,
}
GMACS = {"pit_ti": 0.699, "pit_xs": 1.395, "pit_s": 2.871, "pit_b": 12.40,
         "pit_ti_distilled": 0.705, "pit_xs_distilled": 1.407, "pit_s_distilled": 2.897,
         "pit_b_distilled": 12.48}


def timm_keys(sd: dict) -> dict:
    """The official state dict with timm's pool names (written here, not with the code under test)."""
    return {re.sub(r"^pools\.(\d+)\.", lambda m: f"transformers.{int(m.group(1)) + 1}.pool.", k): v
            for k, v in sd.items()}


def small(name: str, **kw) -> pitvit.PiT:
    """A registered variant at a small input (64 px for the ImageNet variants) to keep CPU tests quick."""
    cfg = pitvit.get_model_config(name)
    size = 64 if cfg.img_size[0] > 64 else cfg.img_size
    return create_model(name, img_size=size, **kw)


def inputs(model: pitvit.PiT, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.cfg.in_chans, *model.cfg.img_size, generator=g)


def test_registry_lists_all_variants():
    assert set(PARAMS) <= set(ALL)
    assert {"pit_test", "pit_nano"} <= set(ALL)
    assert list_models("pit_s*") == ["pit_s", "pit_s_distilled"]


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_and_macs_match_facts(name):
    model = create_model(name)
    assert count_params(model) == PARAMS[name]
    assert count_macs(model) / 1e9 == pytest.approx(GMACS[name], abs=0.006)


def test_state_dict_keys_are_official():
    sd = create_model("pit_ti").state_dict()
    assert len(sd) == 160
    assert sd["pos_embed"].shape == (1, 64, 27, 27)
    assert sd["cls_token"].shape == (1, 1, 64)
    assert sd["patch_embed.conv.weight"].shape == (64, 3, 16, 16)
    assert sd["pools.0.conv.weight"].shape == (128, 1, 3, 3)
    assert sd["pools.1.fc.weight"].shape == (256, 128)
    assert "transformers.1.blocks.5.mlp.fc2.bias" in sd
    sd = create_model("pit_b_distilled").state_dict()
    assert len(sd) == 174 and sd["cls_token"].shape == (1, 2, 256) and "head_dist.weight" in sd


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = small(name)
    if model.cfg.distilled:
        model.set_distilled_training(True)
    out = model(inputs(model))
    outs = out if isinstance(out, tuple) else (out,)
    for o in outs:
        assert o.shape == (2, model.num_classes)
        assert torch.isfinite(o).all()
    sum(o.sum() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier_zero_equals_pre_logits(name):
    model = small(name).eval()
    x = inputs(model)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        out = model(x)
    assert out.shape == (2, model.embed_dim)
    torch.testing.assert_close(out, pre)
    model.reset_classifier(7)
    assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", ALL)
def test_features_match_intermediates(name):
    model = small(name).eval()
    x = inputs(model)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        feats = model.forward_features(x)
        only = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(final, feats)
    assert len(maps) == len(model.feature_info) == 3
    h, w = token_grid(model.cfg.img_size, model.cfg.patch_size, model.cfg.stride)
    for m, info in zip(maps, model.feature_info):
        assert m.shape == (2, info["num_chs"], h, w)
        h, w = math.ceil(h / 2), math.ceil(w / 2)  # 3x3 stride-2 conv with padding 1
    torch.testing.assert_close(only[0], maps[1])


def test_feature_info_reductions_are_the_real_strides():
    # pit_ti: stem stride 8 -> 27x27 map at 224; pit_b: stem stride 7 -> 31x31 at 224.
    for name, strides, grids in (("pit_ti", (8, 16, 32), (27, 14, 7)), ("pit_b", (7, 14, 28), (31, 16, 8))):
        model = create_model(name).eval()
        assert [f["reduction"] for f in model.feature_info] == list(strides)
        with torch.no_grad():
            maps = model.forward_intermediates(torch.zeros(1, 3, 224, 224), intermediates_only=True)
        assert [m.shape[-1] for m in maps] == list(grids)


def test_attention_is_sdpa_and_matches_the_formula(monkeypatch):
    model = create_model("pit_test").eval()
    calls = []
    real = F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(a[0].shape)
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    attn = model.transformers[1].blocks[0].attn
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = attn(x)
        # hand-written reference: softmax(q k^T / sqrt(d)) v with 4 heads of 8
        q, k, v = attn.qkv(x).reshape(2, 5, 3, 4, 8).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-1, -2) * 8 ** -0.5).softmax(-1)
        ref = attn.proj((a @ v).transpose(1, 2).reshape(2, 5, 32))
    assert calls and calls[0] == (2, 4, 5, 8)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_official_stochastic_depth_rule():
    model = create_model("pit_ti", drop_path_rate=0.1)
    rates = [getattr(b.drop_path1, "rate", 0.0) for s in model.transformers for b in s.blocks]
    assert rates == pytest.approx([0.1 * i / 12 for i in range(12)])  # never the full rate


def test_official_init():
    torch.manual_seed(0)
    model = create_model("pit_s")
    for name in ("pos_embed", "cls_token"):
        p = getattr(model, name)
        assert p.std().item() == pytest.approx(0.02, rel=0.1)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0) and m.eps == 1e-6
    # Linear layers keep PyTorch's default (kaiming-uniform) init: bounded by 1/sqrt(fan_in).
    fc1 = model.transformers[0].blocks[0].mlp.fc1
    assert fc1.weight.abs().max() <= 1 / math.sqrt(fc1.in_features) + 1e-6
    assert no_decay_ok(model)


def no_decay_ok(model) -> bool:
    return model.no_weight_decay() == {"pos_embed", "cls_token"}


@pytest.mark.parametrize("name", ["pit_test", "pit_ti_distilled"])
def test_grad_checkpointing_same_outputs_and_gradients(name):
    torch.manual_seed(0)
    a = small(name)
    b = small(name)
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = inputs(a)
    outs = []
    for m in (a, b):
        m.train()
        y = m(x)
        y.square().mean().backward()
        outs.append((y.detach(), {n: p.grad.clone() for n, p in m.named_parameters()}))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for n in outs[0][1]:
        torch.testing.assert_close(outs[0][1][n], outs[1][1][n], rtol=1e-5, atol=1e-6)


def test_distilled_modes():
    model = small("pit_ti_distilled")
    x = inputs(model)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        ev = model(x)
        cls_logits, dist_logits = model.head(feats[:, 0]), model.head_dist(feats[:, 1])
    torch.testing.assert_close(ev, (cls_logits + dist_logits) / 2)
    model.train()  # training without the distilled mode: still the mean (fine-tuning without a teacher)
    assert isinstance(model(x), torch.Tensor)
    model.set_distilled_training(True)
    out = model(x)
    assert isinstance(out, tuple) and len(out) == 2
    model.eval()
    assert isinstance(model(x), torch.Tensor)
    with pytest.raises(ValueError, match="distilled variant"):
        create_model("pit_test").set_distilled_training(True)


def test_any_input_size():
    torch.manual_seed(0)
    model = create_model("pit_ti").eval()
    with torch.no_grad():
        out224 = model(torch.randn(1, 3, 224, 224))
        for size in ((288, 288), (256, 256), (200, 320), (64, 64)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 1000)
        x288 = torch.randn(1, 3, 288, 288)
        on_the_fly = model(x288)
        # Stored for 288 (the pos-embed resized once) gives what the on-the-fly resize gives.
        model288 = create_model("pit_ti", img_size=288).eval()
        model288.load_state_dict({**model.state_dict(), "pos_embed": resize_pos_embed(model.pos_embed, (35, 35))})
        torch.testing.assert_close(model288(x288), on_the_fly)
        # At the stored size the any-size machinery changes nothing: timm's PiT, which adds its embedding as
        # stored (it runs at 224 only), gives the same logits with the same weights; so does the model with
        # set_dynamic_img_size (a bicubic resize to the same size is an identity).
        reference = timm.create_model("pit_ti_224").eval()
        reference.load_state_dict(timm_keys(model.state_dict()))
        x224 = torch.randn(1, 3, 224, 224)
        expected = reference(x224)
        assert (model(x224) - expected).abs().max() <= 1e-4
        model.set_dynamic_img_size(True)
        assert (model(x224) - expected).abs().max() <= 1e-4
        model.set_dynamic_img_size(False)
        assert resize_pos_embed(model.pos_embed, (27, 27)) is model.pos_embed
    model.set_input_size(288)
    assert model.pos_embed.shape == (1, 64, 35, 35) and model.cfg.img_size == (288, 288)
    assert out224.shape == (1, 1000)


def _cubic(t: float, a: float = -0.75) -> float:
    """Keys' cubic convolution kernel with PyTorch's a = -0.75."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def test_pos_embed_resize_is_bicubic_against_a_hand_computed_kernel():
    # Rows are constant down the columns, so the result is the 1-d cubic convolution of each row.
    row = torch.tensor([0.0, 1.0, 4.0, 9.0, 3.0, -2.0, 5.0, 7.0])
    grid = row.view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    up = resize_pos_embed(grid, (8, 16))[0, 0, 3]
    for i in range(16):
        src = (i + 0.5) / 2 - 0.5  # align_corners=False
        base = math.floor(src)
        ref = sum(_cubic(src - j) * row[min(max(j, 0), 7)].item() for j in range(base - 1, base + 3))
        assert up[i].item() == pytest.approx(ref, abs=1e-5)


def test_bad_arguments_are_clear():
    with pytest.raises(ConfigError, match="registered models: .*pit_ti"):
        create_model("pit_tiny")
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(TypeError, match="unknown option"):
        create_model("pit_ti", dropout=0.1)
    with pytest.raises(ValueError, match="smaller than the stem"):
        create_model("pit_ti", img_size=8)
    with pytest.raises(ValueError, match="expected input"):
        create_model("pit_test")(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError):
        PiTConfig(depth=(1, 2), heads=(1, 2, 3))


# ------------------------------------------------------------------ timm's model protocol, beyond its own suite
def test_device_and_dtype_at_creation():
    # timm's factory passes device= and dtype=; "meta" allocates nothing.
    meta = create_model("pit_b", device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    double = create_model("pit_test", dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    assert double(torch.randn(1, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


def test_reset_classifier_keeps_device_dtype_mode_and_takes_global_pool():
    model = create_model("pit_ti_distilled").to(torch.float64).eval()
    model.reset_classifier(5)
    head, head_dist = model.get_classifier()  # timm returns both heads of a distilled model
    for h in (head, head_dist):
        assert h.weight.dtype == torch.float64 and h.out_features == 5 and not h.training
    assert model.head_hidden_size == model.num_features == 256 and model.in_chans == 3
    with pytest.raises(ValueError, match="distilled"):
        model.reset_classifier(5, "")
    plain = create_model("pit_test").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens = plain.forward_features(x)
        plain.reset_classifier(0, "")  # timm's "no pooling": every class token comes out
        assert torch.equal(plain(x), tokens)
        plain.reset_classifier(0, "token")
        assert torch.equal(plain(x), tokens[:, 0])


def test_set_input_size_keeps_a_frozen_embedding_frozen():
    model = create_model("pit_test").requires_grad_(False)
    model.set_input_size(64)
    assert model.pos_embed.shape[-2:] == (31, 31) and not model.pos_embed.requires_grad


def test_stop_early_returns_that_stages_tokens():
    model = create_model("pit_test").eval()
    seen = {}
    model.transformers[0].register_forward_hook(lambda m, i, o: seen.setdefault("stage0", o))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        tokens, maps = model.forward_intermediates(x, indices=[0], stop_early=True)
    # The stage's own output, without the final norm (which belongs to the last stage's width).
    assert torch.equal(maps[0], seen["stage0"][0]) and torch.equal(tokens, seen["stage0"][1])


def test_prune_intermediate_layers_keeps_the_taps():
    model = create_model("pit_test").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
        take = model.prune_intermediate_layers([1])
        pruned = model.forward_intermediates(x, indices=take, intermediates_only=True)
    assert take == [1] and len(model.transformers) == 2 and len(model.pools) == 1
    assert torch.equal(pruned[0], taps[1]) and model.head_hidden_size == 32
    assert model(x).shape == (2, 1, 32)  # no head and no pooling left: the class token, unnormalized
    distilled = create_model("pit_test", distilled=True).eval()
    distilled.prune_intermediate_layers([0])  # both heads go; both class tokens come out
    assert distilled.get_classifier() is distilled.head and distilled(x).shape == (2, 2, 16)


def test_pretrained_cfg_is_the_dict_timm_reads():
    model = create_model("pit_ti")
    # timm's PiT values (timm/models/pit.py), written here.
    assert timm.data.resolve_data_config(model=model) == {
        "input_size": (3, 224, 224), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225), "crop_pct": 0.9, "crop_mode": "center"}
    cfg = model.pretrained_cfg
    assert cfg["first_conv"] == "patch_embed.conv" and cfg.get("classifier") == "head"
    assert create_model("pit_s_distilled").pretrained_cfg["classifier"] == ("head", "head_dist")
    assert dict(cfg)["hf_hub_id"] == "timm/pit_ti_224.in1k" and model.default_cfg is cfg
    assert "paper_v100_img_s" not in cfg


def test_timm_builds_pitvit_variants():
    names = register_with_timm()
    assert names == [f"pitvit_{n[4:]}" for n in list_models()] and register_with_timm() == names
    torch.manual_seed(0)
    ours = create_model("pit_test", num_classes=4).eval()
    torch.manual_seed(0)
    via_timm = timm.create_model("pitvit_test", num_classes=4).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(via_timm(x), ours(x))
    torch.manual_seed(0)
    features = timm.create_model("pitvit_test", features_only=True).eval()
    assert features.feature_info.channels() == [16, 32, 64] and features.feature_info.reduction() == [2, 4, 8]
    torch.manual_seed(0)
    reference = create_model("pit_test").eval()
    with torch.no_grad():
        maps = features(x)
        expected = reference.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == 3 and all(torch.equal(a, b) for a, b in zip(maps, expected))


def test_timm_pretrained_loader_goes_through_pitvits_layout_filter(tmp_path):
    register_with_timm()
    src = create_model("pit_test").eval()
    torch.save(timm_keys(src.state_dict()), tmp_path / "timm_layout.pth")
    # timm's own loader (num_classes 3: it drops the head by the config's "classifier" name), then our filter.
    model = timm.create_model("pitvit_test", pretrained=True, num_classes=3, img_size=48,
                              pretrained_cfg_overlay={"file": str(tmp_path / "timm_layout.pth")})
    assert torch.equal(model.cls_token, src.cls_token) and model.head.out_features == 3
    expected = F.interpolate(src.pos_embed.detach(), size=(23, 23), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
