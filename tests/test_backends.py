"""Inference backends against PyTorch: ONNX Runtime and OpenVINO run the same model as eager PyTorch fp32 and
must give its logits within 1e-4 (two independent runtimes of the same graph); OpenVINO's precision hint is read
back from its compiled model (OpenVINO's own report of what it runs); int8 is checked against the backend's own
graph (quantize operations present), eager PyTorch fp32's logits and its top-1.

A backend whose extra is not installed is skipped with the reason (``make test`` installs the dev extra).
"""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from pitvit.models import create_model, list_models
from pitvit.tools import backends as bk
from pitvit.tools.export import export_model
from pitvit.utils.cpus import cgroup_cpu_limit, usable_cpus
from pitvit.utils.errors import ConfigError, OutputError


def _have(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


needs_ort = pytest.mark.skipif(not _have("onnxruntime") or not _have("onnx"),
                               reason="onnx/onnxruntime not installed (pip install 'pitvit[onnx]')")
needs_ov = pytest.mark.skipif(not _have("openvino"), reason="openvino not installed (pip install 'pitvit[openvino]')")
needs_nncf = pytest.mark.skipif(not _have("openvino") or not _have("nncf"),
                                reason="openvino/nncf not installed (pip install 'pitvit[openvino]')")
BACKENDS = [pytest.param("onnxruntime", marks=needs_ort), pytest.param("openvino", marks=needs_ov)]
PUBLISHED = [n for n in list_models("pit_*") if n.split("_")[1] in ("ti", "xs", "s", "b")]


def _sized(name: str, size: int):
    """A variant (seed 0) whose position embedding and preprocessing metadata are at ``size`` px."""
    torch.manual_seed(0)
    model = create_model(name, img_size=size).eval()
    model.pretrained_cfg = dataclasses.replace(model.pretrained_cfg, input_size=(3, size, size))
    return model


def _max_diff(predictor, model, batch: int = 2, seed: int = 1) -> float:
    c, h, w = model.pretrained_cfg.input_size
    x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model(x)
    got = predictor(x)
    assert got.shape == ref.shape and got.dtype == torch.float32
    return (got - ref).abs().max().item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_equals_torch_fp32(backend, tmp_path):
    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend=backend, precision="fp32", threads=1, cache_dir=tmp_path)
    assert p.precision == "fp32" and p.source == "converted"
    assert _max_diff(p, model, batch=1) < 1e-4 and _max_diff(p, model, batch=3, seed=2) < 1e-4  # any batch
    again = bk.load_predictor(model, backend=backend, precision="fp32", threads=1, cache_dir=tmp_path)
    assert again.source.startswith("cache ") and _max_diff(again, model) < 1e-4
    # Other weights are another cache entry, never the stale conversion.
    with torch.no_grad():
        model.head.bias.add_(1.0)
    other = bk.load_predictor(model, backend=backend, precision="fp32", threads=1, cache_dir=tmp_path)
    assert other.source == "converted" and _max_diff(other, model) < 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_features(backend):
    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend=backend, output="features", threads=1, cache_dir="none")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model.forward_head(model.forward_features(x), pre_logits=True)  # timm's protocol
    assert (p(x) - ref).abs().max().item() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("size", [224, 160])
@pytest.mark.parametrize("name", PUBLISHED)
@pytest.mark.parametrize("backend", BACKENDS)
def test_published_variants_equal_torch(backend, name, size):
    assert len(PUBLISHED) == 8
    model = _sized(name, size)
    p = bk.load_predictor(model, backend=backend, precision="fp32", threads=2, cache_dir="none")
    assert _max_diff(p, model, batch=2) < 1e-4


@needs_ov
def test_openvino_precision_hint_is_explicit():
    import openvino as ov

    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend="openvino", precision="fp32", threads=1, cache_dir="none")
    compiled = p.run.compiled
    # What OpenVINO itself says it runs: f32, not the bf16 its CPU plugin picks by default where it can.
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    if bk.cpu_bf16_support() is not None:
        p16 = bk.load_predictor(model, backend="openvino", precision="bf16", threads=1, cache_dir="none")
        assert p16.run.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
        assert 0 < _max_diff(p16, model) < 0.1  # bf16 really ran, and is close


def test_bf16_refused_without_native_support(monkeypatch):
    monkeypatch.setattr(bk, "cpu_bf16_support", lambda: None)
    for backend in ("torch", "openvino"):
        with pytest.raises(ConfigError, match=r"lacks AVX-512 BF16 \(avx512_bf16\) and AMX"):
            bk.resolve_precision("bf16", backend)
    monkeypatch.setattr("pitvit.utils.precision.cpu_bf16_support", lambda: None)
    assert bk.resolve_precision("auto", "openvino") == "fp32"  # auto never picks emulated bf16


def test_precision_vocabulary():
    assert bk.resolve_precision("none", "torch") == "fp32"
    assert bk.resolve_precision("auto", "onnxruntime") == "fp32"
    assert bk.resolve_precision("int8", "onnxruntime") == bk.resolve_precision("int8", "openvino") == "int8"
    with pytest.raises(ConfigError, match=r"int8 runs on --backend openvino \(NNCF .*\) or onnxruntime .*not on torch"):
        bk.resolve_precision("int8", "torch")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        bk.resolve_precision("fp16", "openvino")
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        bk.resolve_precision("fp8", "torch")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        bk.resolve_precision("fp32", "tensorrt")


@needs_nncf
def test_int8_tiny_model(tmp_path):
    from PIL import Image

    rng = np.random.RandomState(0)
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(30):  # images with large flat areas, so that the classes of a random model vary
        img = np.kron(rng.randint(0, 255, (4, 4, 3)), np.ones((10, 10, 1))).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.png")
    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend="openvino", precision="int8", calibration=folder, threads=1,
                          cache_dir=tmp_path / "cache")
    assert p.precision == "int8"
    assert p.info["calibration_images"] == 18 and p.info["agreement_images"] == 12  # 3/5 and 2/5 of 30
    assert 0.0 <= p.info["top1_agreement"] <= 1.0
    # Quantization is in OpenVINO's graph, and the agreement is stored beside the model.
    ran = {op.get_rt_info()["runtimePrecision"].astype(str) for op in p.run.compiled.get_runtime_model().get_ops()
           if "runtimePrecision" in op.get_rt_info()}
    assert {"i8", "u8"} & ran, ran  # OpenVINO's report of the kernels it compiled
    info = json.loads(next((tmp_path / "cache" / "openvino").glob("*/info.json")).read_text())
    assert info["precision"] == "int8" and info["facts"]["top1_agreement"] == p.info["top1_agreement"]
    assert _max_diff(p, model) < 0.5  # int8 of the same model, not another one
    assert _max_diff(p, model, batch=1) < 0.5 and len(p.run.single) == 1  # its batch-1 copy, quantized too
    with pytest.raises(ConfigError, match="int8 on openvino needs calibration images") as e:
        bk.load_predictor(model, backend="openvino", precision="int8", cache_dir="none")
    assert "\n" not in str(e.value)


def _decentred(model):
    """``model`` with its head made blind to the direction its features share on random inputs (and no bias): a
    random model otherwise puts nearly every input in one class, and agreeing on it would say nothing."""
    x = torch.randn(64, *model.pretrained_cfg.input_size, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        mu = model.forward_head(model.forward_features(x), pre_logits=True).mean(0)
        model.head.weight -= torch.outer(model.head.weight @ mu, mu) / mu.dot(mu)
        model.head.bias.zero_()
    return model


@needs_ort
def test_onnxruntime_int8(tmp_path):
    """ONNX Runtime's dynamic quantization against eager PyTorch fp32 (the reference): the graph holds ONNX
    Runtime's integer operations, the logits move (int8 ran) but stay close, and the top-1 agrees on most inputs.

    Tolerance: int8 weights (per tensor) and activations quantized per call to 256 levels of their range change
    pit_test's logits (std 0.55 on random inputs) by 0.017-0.036 (measured: batches of 4 and 64, 3 seeds each); 0.1
    leaves room for other CPUs' kernels and stays well below the 0.68 by which another seed's pit_test differs."""
    import onnx

    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend="onnxruntime", precision="int8", threads=1, cache_dir=tmp_path)
    assert p.precision == "int8" and p.source == "converted" and "top1_agreement" not in p.info  # no images
    graph = onnx.load(str(next(tmp_path.glob("onnxruntime/*/model.onnx")))).graph  # what the session runs
    ops = {n.op_type for n in graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "ConvInteger" not in ops, ops  # linear layers only
    assert 1e-4 < _max_diff(p, model, batch=4) < 0.1
    again = bk.load_predictor(model, backend="onnxruntime", precision="int8", threads=1, cache_dir=tmp_path)
    assert again.source.startswith("cache ") and 1e-4 < _max_diff(again, model, batch=4) < 0.1

    # Top-1, with images given: the agreement is measured on all of them (none calibrate) and stored. 16 images:
    # one batch of the 16 the agreement is measured in (the activations' ranges are those of each call's batch).
    model = _decentred(_sized("pit_test", 32))
    images = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    p = bk.load_predictor(model, backend="onnxruntime", precision="int8", threads=1,
                          calibration=images[:16].numpy(), cache_dir=tmp_path / "c2")
    with torch.no_grad():
        ref = model(images).argmax(-1)
    same = p(images).argmax(-1) == ref
    assert len(ref.unique()) >= 5 and same.float().mean() >= 0.75  # classes vary (9); measured 0.92, 59 of 64
    assert p.info["agreement_images"] == 16
    assert p.info["top1_agreement"] == (p(images[:16]).argmax(-1) == ref[:16]).float().mean().item()
    info = json.loads(next((tmp_path / "c2" / "onnxruntime").glob("*/info.json")).read_text())
    assert info["precision"] == "int8" and info["facts"] == p.info


@needs_ort
def test_int8_accuracy_on_a_labelled_folder(tmp_path):
    """Calibration images in class folders named after the model's classes are labelled images: int8 then also
    stores the top-1 accuracy of fp32 and of int8 on the images it checked. The folders are chosen so that eager
    PyTorch fp32 (the reference) is right on 10 of the 16 images: fp32's accuracy must be exactly 0.625; int8's is
    recomputed from the int8 model's own answers. Folders that are not class names give no accuracy."""
    from PIL import Image

    from pitvit.data import build_transform
    from pitvit.models import resolve_preprocessing

    model = _decentred(_sized("pit_test", 32))
    model.class_names = [f"class{i}" for i in range(model.num_classes)]
    rng = np.random.default_rng(4)
    pixels = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    transform = build_transform(False, **resolve_preprocessing(model), in_chans=3)
    x = torch.stack([transform(im) for im in pixels])
    with torch.no_grad():
        top = model(x).argmax(-1).tolist()
    labels = [t if i < 10 else (t + 1) % model.num_classes for i, t in enumerate(top)]
    for i, (im, label) in enumerate(zip(pixels, labels)):
        folder = tmp_path / "cal" / model.class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:02d}.png")
    p = bk.load_predictor(model, backend="onnxruntime", precision="int8", threads=1, calibration=tmp_path / "cal",
                          cache_dir="none")
    assert p.info["agreement_images"] == 16 and p.info["top1_fp32"] == 10 / 16
    int8_top = p(x).argmax(-1).tolist()  # one batch of 16, as checked
    assert p.info["top1_int8"] == sum(a == b for a, b in zip(int8_top, labels)) / 16
    model.class_names = [f"other{i}" for i in range(model.num_classes)]
    p = bk.load_predictor(model, backend="onnxruntime", precision="int8", threads=1, calibration=tmp_path / "cal",
                          cache_dir="none")
    assert p.info["agreement_images"] == 16 and "top1_fp32" not in p.info


@needs_ov
def test_openvino_batch_one_runs_a_static_copy():
    """A model of any batch compiles a batch-1 copy on the first batch of one (same settings), and gives eager
    PyTorch's logits at batch 1 and at other batches; a graph fixed to a batch makes no copy."""
    import openvino as ov

    model = _sized("pit_test", 32)
    p = bk.load_predictor(model, backend="openvino", precision="fp32", threads=1, cache_dir="none")
    assert p.run.single == [] and _max_diff(p, model, batch=3) < 1e-4 and p.run.single == []
    assert _max_diff(p, model, batch=1) < 1e-4 and len(p.run.single) == 1
    one = p.run.single[0][0]
    assert str(one.input(0).get_partial_shape()) == "[1,3,32,32]"  # OpenVINO's report of the copy's shape
    assert str(p.run.compiled.input(0).get_partial_shape()) == "[?,3,32,32]"
    assert one.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32 and one.get_property(
        "INFERENCE_NUM_THREADS") == 1
    assert _max_diff(p, model, batch=1, seed=5) < 1e-4 and _max_diff(p, model, batch=2) < 1e-4
    assert len(p.run.single) == 1  # compiled once
    fixed = bk.load_predictor(model, backend="openvino", precision="fp32", threads=1, batch=2, cache_dir="none")
    assert _max_diff(fixed, model, batch=1) < 1e-4 and fixed.run.single == []


@needs_ov
@pytest.mark.parametrize("batch,dynamic_hw", [(None, False), (3, False), (None, True)])
def test_export_openvino_round_trip(tmp_path, batch, dynamic_hw):
    import openvino as ov

    out = tmp_path / "m.xml"
    r = export_model("pit_test", format="openvino", out=out, batch=batch, dynamic_hw=dynamic_hw)
    assert r["max_abs_diff"] < 1e-4 and r["path"] == str(out)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["m.bin", "m.json", "m.xml"]
    shape = ov.Core().read_model(str(out)).input(0).get_partial_shape()
    assert str(shape) == {None: "[?,3,32,32]", 3: "[3,3,32,32]"}[batch] if not dynamic_hw else str(shape) == "[?,3,?,?]"
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["pitvit_model"] == "pit_test" and len(json.loads(meta["pitvit_class_names"])) == 10
    p = bk.load_predictor(out, backend="openvino", threads=1)
    assert p.model_name == "pit_test" and p.input_size == (3, 32, 32) and len(p.class_names) == 10
    torch.manual_seed(0)  # the export's random weights: load_model draws them with seed 0
    model = create_model("pit_test").eval()
    assert _max_diff(p, model, batch=batch or 2) < 1e-4


@needs_ov
def test_export_openvino_rejected_leaves_nothing(tmp_path):
    with pytest.raises(OutputError, match="nothing was written"):
        export_model("pit_test", format="openvino", out=tmp_path / "m.xml", atol=-1.0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"must end in \.xml"):
        export_model("pit_test", format="openvino", out=tmp_path / "m.ir")


@pytest.mark.parametrize("module,extra", [("openvino", "openvino"), ("onnxruntime", "onnx")])
def test_missing_extra_is_one_line(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # import then raises ImportError, as when not installed
    backend = "openvino" if module == "openvino" else "onnxruntime"
    with pytest.raises(ConfigError, match=rf"pip install 'pitvit\[{extra}\]'") as e:
        bk.load_predictor(_sized("pit_test", 32), backend=backend, cache_dir="none")
    assert "\n" not in str(e.value)


def test_threads_follow_affinity_and_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # cgroup v2: 1.5 cores
    assert cgroup_cpu_limit(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("pitvit.utils.cpus.cgroup_cpu_limit", lambda: 1.5)
    assert usable_cpus() == 2  # the quota, rounded up, caps the 4 cores of the mask


@needs_ov
def test_predict_openvino_same_top5_as_torch(tmp_path, imagenet_photos):
    from pitvit.tools.predict import predict_files

    model = _sized("pit_ti", 64)
    eager, _ = predict_files(model, imagenet_photos, topk=5, batch_size=8, amp="fp32")
    ov_preds, _ = predict_files(model, imagenet_photos, topk=5, batch_size=8, amp="fp32", backend="openvino",
                                cache_dir="none", threads=1)
    assert [p.path for p in ov_preds] == [p.path for p in eager] and len(eager) == len(imagenet_photos)
    assert [[i for i, _, _ in p.top] for p in ov_preds] == [[i for i, _, _ in p.top] for p in eager]


def test_benchmark_engine_settings(monkeypatch):
    """The engines the table times: every one of a backend, or those of one precision (and the base)."""
    from pitvit.tools.bench_backends import backend_settings

    monkeypatch.setattr("pitvit.tools.bench_backends.cpu_bf16_support", lambda: None)
    monkeypatch.setattr(bk, "cpu_bf16_support", lambda: None)
    base = ("torch", "fp32", False)
    assert backend_settings("onnxruntime") == [base, ("onnxruntime", "fp32", False), ("onnxruntime", "int8", False)]
    assert backend_settings("all", "int8") == [base, ("onnxruntime", "int8", False), ("openvino", "int8", False)]
    assert backend_settings("onnxruntime", "fp32") == [base, ("onnxruntime", "fp32", False)]
    assert backend_settings("openvino", "none") == [base, ("openvino", "fp32", False)]
    assert backend_settings("all", "fp32") == [base, ("torch", "fp32", True), ("onnxruntime", "fp32", False),
                                               ("openvino", "fp32", False)]
    for backend, precision, words in [("onnxruntime", "bf16", "no bf16 kernels"), ("all", "bf16", "lacks AVX-512"),
                                      ("all", "fp16", "needs a CUDA device"), ("openvino", "fp8", "unknown")]:
        with pytest.raises(ConfigError, match=words) as e:
            backend_settings(backend, precision)
        assert "\n" not in str(e.value)
    monkeypatch.setattr("pitvit.tools.bench_backends.cpu_bf16_support", lambda: "amx_bf16")
    monkeypatch.setattr(bk, "cpu_bf16_support", lambda: "amx_bf16")
    assert backend_settings("all", "bf16") == [base, ("torch", "bf16", False), ("openvino", "bf16", False)]


@needs_ort
def test_benchmark_engine_table():
    from pitvit.tools.bench_backends import compare_backends, format_backends

    r = compare_backends("pit_test", backend="onnxruntime", precision="fp32", batch=3, rounds=1, threads=1,
                         cache_dir="none")
    assert [(row["setting"], row["batch"]) for row in r["rows"]] == [
        ("torch fp32", 1), ("onnxruntime fp32", 1), ("torch fp32", 3), ("onnxruntime fp32", 3)]
    eager, ort = r["rows"][2], r["rows"][3]
    assert eager["vs_eager"] == 1.0 and eager["max_diff"] == 0.0
    assert ort["max_diff"] < 1e-4 and ort["top1_agree"] == 1.0
    assert "onnxruntime fp32" in format_backends(r)


@needs_ort
def test_cli_benchmark_precision_restricts_the_table(capsys):
    from pitvit.cli import main as cli

    assert cli(["benchmark", "--model", "pit_test", "--backend", "onnxruntime", "--precision", "int8", "--batch",
                "2", "--steps", "1", "--threads", "1", "--cache-dir", "none", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["setting"], r["batch"]) for r in rows] == [
        ("torch fp32", 1), ("onnxruntime int8", 1), ("torch fp32", 2), ("onnxruntime int8", 2)]
    assert rows[3]["precision"] == "int8" and 1e-4 < rows[3]["max_diff"] < 0.1  # int8 ran (see test_onnxruntime_int8)
    assert rows[3]["info"]["agreement_images"] == 64  # on the random inputs it is given when no images are


@needs_ov
def test_cli_export_openvino_and_predict(tmp_path, capsys):
    from pitvit.cli import main as cli

    out = tmp_path / "pt.xml"
    assert cli(["export", "--model", "pit_test", "--format", "openvino", "--batch", "2", "--out", str(out)]) == 0
    assert f"wrote {out} (openvino, input 2 x 3 x 32 x 32)" in capsys.readouterr().out
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "a.png")
    assert cli(["predict", str(tmp_path / "a.png"), "--model", "pit_test", "--backend", "openvino",
                "--precision", "fp32", "--cache-dir", "none", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["path"].endswith("a.png")  # stdout holds the results only
    assert "predict: openvino fp32" in captured.err  # the precision that ran is said
    from_model = json.loads(captured.out)[0]["predictions"]
    # The exported file runs as it is, with the preprocessing and class names stored beside it.
    assert cli(["predict", str(tmp_path / "a.png"), "--weights", str(out), "--backend", "openvino",
                "--precision", "fp32", "--format", "json"]) == 0
    from_file = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [p["index"] for p in from_file] == [p["index"] for p in from_model]
    assert [p["prob"] for p in from_file] == pytest.approx([p["prob"] for p in from_model], abs=1e-5)


@needs_ort
def test_cli_unsupported_precision_is_one_line(capsys):
    from pitvit.cli import main as cli

    assert cli(["predict", "x.png", "--model", "pit_test", "--backend", "onnxruntime", "--amp", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pitvit predict: error: --precision bf16: onnxruntime") and len(
        [line for line in err if "error" in line]) == 1


@needs_ov
def test_conversion_failure_names_the_operation(monkeypatch):
    import openvino as ov

    def refuse(*args, **kwargs):  # the message OpenVINO's frontend gives for an operation without a rule
        raise RuntimeError("Model wasn't fully converted. Failed operations detailed log:\n-- aten::frobnicate "
                           "with a message:\nNo conversion rule found")

    monkeypatch.setattr(ov, "convert_model", refuse)
    with pytest.raises(ConfigError, match=r"openvino cannot convert pit_test: no conversion for aten::frobnicate; "
                                          r"nothing else was tried") as e:
        bk.load_predictor(_sized("pit_test", 32), backend="openvino", cache_dir="none")
    assert "\n" not in str(e.value)
