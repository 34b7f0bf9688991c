"""The optional convolutional stem (PiTConfig.stem_channels, used by the demo recipe).

References: the parameter count by hand; the stem's output recomputed with torch.nn.functional (conv 3x3,
batch norm, GELU, then the patch convolution), the composition Xiao et al. 2021 describe; published PiTs have no
stem, so every registered variant keeps its state-dict keys (timm parity is tested in test_models.py).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pitvit.models import create_model, inspect_state_dict, list_models, save_weights
from pitvit.utils.errors import CheckpointError, ConfigError


def _nano_stem(**kw):
    torch.manual_seed(0)
    return create_model("pit_nano", stem_channels=8, **kw).eval()


def test_parameter_count_by_hand():
    # pit_nano: 526,378. The stem adds a 3x3 conv 1 -> 8 without bias (72) and BatchNorm's weight and bias (16);
    # the patch convolution (6x6, 32 outputs, bias) then reads 8 channels instead of 1: 8 x 32 x 36 - 32 x 36 more.
    n = sum(p.numel() for p in _nano_stem().parameters())
    assert n == 526_378 + 72 + 16 + (8 - 1) * 32 * 36


def test_stem_output_is_conv_bn_gelu_then_patch_conv():
    m = _nano_stem()
    with torch.no_grad():  # non-trivial batch-norm statistics
        bn = m.patch_embed.stem[1]
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-0.2, 0.2)
    x = torch.randn(3, 1, 28, 28)
    conv3, conv = m.patch_embed.stem[0], m.patch_embed.conv
    y = F.conv2d(x, conv3.weight, padding=1)
    y = (y - bn.running_mean[:, None, None]) / torch.sqrt(bn.running_var[:, None, None] + bn.eps)
    y = F.gelu(y * bn.weight[:, None, None] + bn.bias[:, None, None])
    ref = F.conv2d(y, conv.weight, conv.bias, stride=3)
    torch.testing.assert_close(m.patch_embed(x), ref, rtol=1e-5, atol=1e-5)
    assert m(x).shape == (3, 10)


def test_published_variants_have_no_stem():
    for name in list_models():
        assert not any(".stem." in k for k in create_model(name, pretrained=False).state_dict()), name


def test_weights_round_trip_and_are_recognized(tmp_path):
    m = _nano_stem()
    x = torch.randn(2, 1, 28, 28)
    for name in ("w.safetensors", "w.pth"):
        save_weights(m, tmp_path / name)
        back = create_model("pit_nano", stem_channels=8, weights=str(tmp_path / name)).eval()
        assert torch.equal(back(x), m(x))
    info = inspect_state_dict(m.state_dict())
    assert (info["in_chans"], info["stem_channels"], info["variant"]) == (1, 8, None)
    with pytest.raises(CheckpointError, match="stem_channels=8"):  # pit_nano without a stem cannot take them
        create_model("pit_nano", weights=str(tmp_path / "w.safetensors"))
    save_weights(create_model("pit_nano"), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="stem_channels=0"):
        create_model("pit_nano", stem_channels=8, weights=str(tmp_path / "plain.safetensors"))


@pytest.mark.parametrize("fmt", ["timm", "paddle"])
def test_formats_without_a_stem_are_refused(tmp_path, fmt):
    with pytest.raises(ConfigError, match="convolutional stem") as e:
        save_weights(_nano_stem(), tmp_path / "w.bin", format=fmt)
    assert "\n" not in str(e.value) and not (tmp_path / "w.bin").exists()


def test_other_input_channels_are_refused_at_the_stem(tmp_path):
    save_weights(_nano_stem(), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="in_chans=1"):
        create_model("pit_nano", stem_channels=8, in_chans=3, weights=str(tmp_path / "w.safetensors"))


def test_negative_stem_is_a_config_error():
    with pytest.raises(ConfigError, match="stem_channels"):
        create_model("pit_nano", stem_channels=-1)
