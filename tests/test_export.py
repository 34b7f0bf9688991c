"""Export parity: ONNX (onnxruntime) and torch.export archives against the PyTorch model, on CPU.

Sized for a 2-core CPU: ``pit_test`` for every path, ``pit_ti`` and ``pit_ti_distilled`` at 64 px for the
real widths and the distilled head. Full-size exports of every registered variant are marked slow.
"""
from __future__ import annotations

import dataclasses
import json

import onnx  # installed by `make test` (the dev extra): a missing one is a failure, not a skip
import onnxruntime as ort
import pytest
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from pitvit.cli import main as cli
from pitvit.models import create_model, list_models
from pitvit.tools import export as ex
from pitvit.utils.errors import OutputError


def _small(name: str, size: int = 64):
    """A variant with its position embedding and its preprocessing metadata at ``size`` px."""
    model = create_model(name, img_size=size).eval()
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=(3, size, size))
    return model


def _run_onnx(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize("dynamic_hw", [False, True])
def test_onnx_pit_test(tmp_path, dynamic_hw):
    model = create_model("pit_test").eval()
    path = ex.export_onnx(model, tmp_path / "m.onnx", dynamic_hw=dynamic_hw)
    proto = onnx.load(str(path))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == (["batch", 3, "height", "width"] if dynamic_hw else ["batch", 3, 32, 32])
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["pitvit_model"] == "pit_test"
    assert json.loads(meta["pitvit_preprocessing"])["input_size"] == [3, 32, 32]
    assert len(json.loads(meta["pitvit_class_names"])) == 10
    # Our own inputs, beside the ones check_onnx draws: batch 5, and another size when it is free.
    x = torch.randn(5, 3, 32, 32) if not dynamic_hw else torch.randn(5, 3, 45, 38)
    with torch.no_grad():
        assert torch.allclose(_run_onnx(path, x), model(x), atol=1e-4)
    assert ex.check_onnx(model, path, dynamic_hw=dynamic_hw) < 1e-4


def test_onnx_static_rejects_other_size(tmp_path):
    path = ex.export_onnx(create_model("pit_test").eval(), tmp_path / "m.onnx")
    # onnxruntime's own shape check on a static graph (pit_test's 32 px), not a failure inside the graph.
    with pytest.raises(InvalidArgument, match=r"(?s)invalid dimensions for input: images.*Got: 40 Expected: 32"):
        _run_onnx(path, torch.randn(1, 3, 40, 40))


@pytest.mark.parametrize("name,dynamic_hw", [("pit_ti", False), ("pit_ti_distilled", True)])
def test_onnx_real_widths(tmp_path, name, dynamic_hw):
    model = _small(name)
    path = ex.export_onnx(model, tmp_path / "m.onnx", dynamic_hw=dynamic_hw)
    assert ex.check_onnx(model, path, dynamic_hw=dynamic_hw) < 1e-4
    if name.endswith("distilled"):
        # The exported output is the eval output: the mean of the two heads.
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            tokens = model.forward_features(x)
            mean = (model.head(tokens[:, 0]) + model.head_dist(tokens[:, 1])) / 2
        assert torch.allclose(_run_onnx(path, x), mean, atol=1e-4)


def test_pt2_dynamic_hw(tmp_path):
    model = create_model("pit_test").eval()
    path = ex.export_pt2(model, tmp_path / "m.pt2", dynamic_hw=True)
    loaded = torch.export.load(str(path)).module()
    for shape in [(1, 3, 32, 32), (4, 3, 48, 40), (2, 3, ex._min_side(model), 64)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(loaded(x), model(x), atol=1e-5), shape


def test_export_model_and_cli(tmp_path, capsys):
    from pitvit.models import save_pretrained

    model = create_model("pit_test", num_classes=3).eval()
    model.class_names = ["cat", "dog", "eel"]
    save_pretrained(model, tmp_path / "m")
    out = tmp_path / "d.pt2"
    # No --model: the save_pretrained folder names its model.
    assert cli(["export", "--weights", str(tmp_path / "m"), "--format", "pt2", "--out", str(out)]) == 0
    assert out.is_file() and "max abs diff" in capsys.readouterr().out  # check_pt2 ran
    extra = {"pitvit.json": ""}
    loaded = torch.export.load(str(out), extra_files=extra).module()
    meta = json.loads(extra["pitvit.json"])
    assert meta["pitvit_model"] == "pit_test" and json.loads(meta["pitvit_class_names"]) == model.class_names
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)  # the checkpoint's weights, not a fresh init
    assert cli(["export", "--model", "pit_tst"]) == 2
    assert "pit_test" in capsys.readouterr().err  # lists the valid names
    assert cli(["export", "--model", "pit_test", "--weights", str(tmp_path / "none.pth")]) == 2
    assert "none.pth" in capsys.readouterr().err


@pytest.mark.parametrize("diff", [1e-3, float("nan")])
def test_export_above_tolerance_writes_nothing(tmp_path, monkeypatch, diff):
    (tmp_path / "m.onnx").write_bytes(b"an earlier export")
    monkeypatch.setattr(ex, "check_onnx", lambda *a, **k: diff)
    with pytest.raises(OutputError, match=r"m\.onnx: the export differs from PyTorch by .* nothing was written"):
        ex.export_model("pit_test", out=tmp_path / "m.onnx", atol=1e-4)
    assert (tmp_path / "m.onnx").read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporary file left


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if n.startswith("pit_") and n not in ("pit_test",)])
@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_export_every_variant(tmp_path, name, fmt):
    r = ex.export_model(name, format=fmt, out=tmp_path / f"m.{fmt}", dynamic_hw=True)
    assert r["max_abs_diff"] < 1e-4
