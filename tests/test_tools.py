"""Tools around the model: plot, eval, predict, benchmark, torch.hub. Small inputs, CPU only."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pitvit.cli import main as cli


def _write_metrics(run: Path, rows: list[dict], tail: str = "") -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write(tail)


# ---------------------------------------------------------------------------- plot
def test_plot_runs_overlays_runs(tmp_path):
    from pitvit.train.curves import plot_runs, read_metrics

    rows = [{"epoch": e, "lr": 1e-4 * (e + 1), "train_loss": 3 - e / 10, "val_loss": 3 - e / 5,
             "val_top1": 10.0 * e, "val_top5": 20.0 * e, "ema_loss": 3 - e / 7, "ema_top1": 9.0 * e}
            for e in range(4)]
    _write_metrics(tmp_path / "a", rows, tail='{"epoch": 4, "lr')  # a line still being written
    _write_metrics(tmp_path / "b", [{k: v for k, v in r.items() if not k.startswith("ema")} for r in rows[:1]])
    assert len(read_metrics(tmp_path / "a")) == 4
    out = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "sub" / "curves.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_plot_cli(tmp_path, capsys):
    _write_metrics(tmp_path / "run", [{"epoch": 0, "lr": 1e-3, "train_loss": 2.0}])
    assert cli(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "curves.png").is_file()
    assert cli(["plot", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------- eval on real images
# The 20 ImageNet photos of PyPI's foolbox wheel (conftest's imagenet_photos fixture), label in the name.
def _labels(photos: list[Path]) -> list[int]:
    return [int(p.stem.split("_")[-1]) for p in photos]


def _list_dataset(root: Path, photos: list[Path], labels: list[int]) -> Path:
    """``root/val_list.txt`` over the photos (linked, not copied) with the given labels."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for path, label in zip(photos, labels):
        (root / path.name).symlink_to(path)
        lines.append(f"{path.name} {label}")
    (root / "val_list.txt").write_text("\n".join(lines) + "\n")
    return root


def _reference_logits(model, pre, photos: list[Path]) -> "torch.Tensor":
    """Logits on the photos preprocessed by timm's eval transform (independent of pitvit.data)."""
    import torch
    from PIL import Image
    from timm.data import create_transform

    tf = create_transform(input_size=tuple(pre["input_size"]), is_training=False, crop_pct=pre["crop_pct"],
                          interpolation=pre["interpolation"], mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    x = torch.stack([tf(Image.open(p).convert("RGB")) for p in photos])
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def ti_checkpoint(tmp_path_factory):
    """A pit_ti training checkpoint whose raw and EMA weights differ, evaluated at 160 px, bilinear, crop 1.0.

    The preprocessing deliberately differs from the registry's (224, bicubic, 0.9): eval must read it from
    the checkpoint.
    """
    import dataclasses

    import torch

    from pitvit.models import create_model

    torch.manual_seed(0)
    # One block per stage keeps CPU time down; the checkpoint's model_cfg carries the depth.
    raw = create_model("pit_ti", img_size=160, depth=(1, 1, 1))
    raw.pretrained_cfg = dataclasses.replace(raw.pretrained_cfg, input_size=(3, 160, 160), crop_pct=1.0,
                                             interpolation="bilinear")
    ema = create_model("pit_ti", img_size=160, depth=(1, 1, 1))  # another random draw: other logits
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save({"format": "pitvit", "version": 1, "model_name": "pit_ti", "model_cfg": raw.cfg.to_dict(),
                "pretrained_cfg": raw.pretrained_cfg.to_dict(), "state_dict": raw.state_dict(),
                "ema_state_dict": ema.state_dict(), "epoch": 3}, path)
    ema.pretrained_cfg = raw.pretrained_cfg
    return path, raw, ema


def _hand_metrics(logits, labels):
    import torch

    labels = torch.tensor(labels)
    top5 = logits.topk(5, dim=1).indices
    return {"top1": 100.0 * (top5[:, 0] == labels).sum().item() / len(labels),
            "top5": 100.0 * (top5 == labels[:, None]).any(1).sum().item() / len(labels),
            "loss": torch.nn.functional.cross_entropy(logits, labels).item()}


@pytest.mark.parametrize("ema,backend", [(False, "torch"), (True, "torch"), (False, "onnxruntime"),
                                         (False, "openvino")])
def test_eval_counts_match_hand_computed(tmp_path, ti_checkpoint, imagenet_photos, ema, backend):
    from pitvit.models import resolve_preprocessing
    from pitvit.tools.evaluate import evaluate_model

    if backend != "torch":
        pytest.importorskip(backend, reason=f"{backend} not installed (the onnx / openvino extra)")

    path, raw, ema_model = ti_checkpoint
    model = ema_model if ema else raw
    logits = _reference_logits(model, resolve_preprocessing(model), imagenet_photos)
    # Labels at known ranks of the reference logits: 8 at rank 0, 6 at rank 2, 6 at rank 7, so top-1 is
    # 40% and top-5 70% exactly when eval sees the same images through the same weights.
    ranks = [0] * 8 + [2] * 6 + [7] * 6
    order = logits.argsort(dim=1, descending=True)
    labels = [int(order[i, r]) for i, r in enumerate(ranks)]
    data = _list_dataset(tmp_path / "data", imagenet_photos, labels)
    r = evaluate_model(None, path, data, ema=ema, batch_size=8, workers=0, device="cpu", backend=backend,
                       cache_dir="none", threads=1)
    assert (r["backend"], r["precision"]) == (backend, "fp32")
    hand = _hand_metrics(logits, labels)
    assert (r["top1"], r["top5"], r["n"]) == (40.0, 70.0, 20) == (hand["top1"], hand["top5"], 20)
    assert r["loss"] == pytest.approx(hand["loss"], abs=1e-3)
    assert r["preprocessing"]["input_size"] == [3, 160, 160] and r["preprocessing"]["crop_pct"] == 1.0


def test_eval_cli_imagenet_labels(tmp_path, imagenet_photos, capsys):
    """The true ImageNet labels through the CLI; random weights, so the numbers only have to be consistent."""
    import torch

    from pitvit.models import create_model
    from pitvit.models import save_pretrained
    from pitvit.models import resolve_preprocessing

    torch.manual_seed(1)
    model = create_model("pit_ti", depth=(1, 1, 1))  # the registry's preprocessing, a quarter of the blocks
    save_pretrained(model, tmp_path / "pretrained")
    labels = _labels(imagenet_photos)
    data = _list_dataset(tmp_path / "data", imagenet_photos, labels)
    out = tmp_path / "r.json"
    assert cli(["eval", "--model", "pit_ti", "--weights", str(tmp_path / "pretrained"), "--data", str(data),
                "--batch-size", "6", "--workers", "0", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    hand = _hand_metrics(_reference_logits(model, resolve_preprocessing(model), imagenet_photos), labels)
    assert (r["n"], r["top1"], r["top5"]) == (20, hand["top1"], hand["top5"])
    assert r["loss"] == pytest.approx(hand["loss"], abs=1e-3)
    assert "top-1" in capsys.readouterr().out


def test_eval_cli_errors(tmp_path, capsys):
    assert cli(["eval", "--model", "pit_tx", "--data", str(tmp_path)]) == 2
    assert "pit_ti" in capsys.readouterr().err
    assert cli(["eval", "--model", "pit_test", "--weights", str(tmp_path / "w.pth"), "--data", str(tmp_path)]) == 2
    assert "w.pth" in capsys.readouterr().err
    assert cli(["eval", "--model", "pit_test", "--data", str(tmp_path / "nodata"), "--workers", "0"]) == 3
    assert "nodata" in capsys.readouterr().err  # a DatasetError


# ---------------------------------------------------------------------------- predict
@pytest.fixture()
def image_dir(tmp_path, imagenet_photos):
    """Three real JPEGs, a truncated JPEG and a text file posing as a PNG."""
    d = tmp_path / "images"
    d.mkdir()
    jpegs = imagenet_photos[:3]
    for p in jpegs:
        (d / p.name).write_bytes(p.read_bytes())
    (d / "zz_truncated.jpg").write_bytes(jpegs[0].read_bytes()[:600])
    (d / "zz_text.png").write_text("not an image")
    return d


def test_predict_files_checkpoint_names_and_probabilities(tmp_path, image_dir, imagenet_photos):
    import torch

    from pitvit.models import create_model
    from pitvit.models import save_pretrained
    from pitvit.models import resolve_preprocessing
    from pitvit.tools.evaluate import load_model
    from pitvit.tools.predict import expand_inputs, predict_files

    torch.manual_seed(0)
    model = create_model("pit_test")
    model.class_names = [f"kind-{i}" for i in range(10)]
    save_pretrained(model, tmp_path / "m")
    loaded = load_model(None, tmp_path / "m")
    assert loaded.class_names == model.class_names

    files, problems = expand_inputs([image_dir, tmp_path / "absent.jpg"])
    assert [p for p, _ in problems] == [str(tmp_path / "absent.jpg")]
    preds, errors = predict_files(loaded, files, topk=3, batch_size=2, amp="none")  # the reference is fp32
    assert [Path(p.path).name for p in preds] == [p.name for p in imagenet_photos[:3]]
    assert sorted(Path(p).name for p, _ in errors) == ["zz_text.png", "zz_truncated.jpg"]

    ref = _reference_logits(model, resolve_preprocessing(model), imagenet_photos[:3]).softmax(-1)
    for pred, probs in zip(preds, ref):
        values, indices = probs.topk(3)
        assert [i for i, _, _ in pred.top] == indices.tolist()
        assert [n for _, n, _ in pred.top] == [f"kind-{i}" for i in indices.tolist()]
        assert [v for _, _, v in pred.top] == pytest.approx(values.tolist(), abs=1e-5)


def test_predict_cli_formats_and_exit_status(tmp_path, image_dir, capsys):
    import csv
    import io

    from timm.data import ImageNetInfo

    args = ["predict", str(image_dir), "--model", "pit_ti", "--topk", "2"]
    assert cli(args + ["--format", "json"]) == 0
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert len(rows) == 3 and all(len(r["predictions"]) == 2 for r in rows)
    info = ImageNetInfo()
    for r in rows:
        for p in r["predictions"]:
            assert info.index_to_description(p["index"]).startswith(p["name"])
    assert "zz_truncated.jpg" in captured.err and "zz_text.png" in captured.err

    assert cli(args + ["--format", "csv"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 6 and table[0]["rank"] == "1"

    assert cli(["predict", str(image_dir / "zz_text.png"), "--model", "pit_test"]) == 1
    assert "zz_text.png" in capsys.readouterr().err


def test_predict_data_of_an_image_folder_is_predict_of_its_files_plus_labels(tmp_path, image_dir, imagenet_photos,
                                                                            capsys):
    """`predict --data ROOT` over an image folder gives what `predict ROOT/val` (its files as loose images) gives:
    the same paths and top-k, the same unreadable files reported on stderr and skipped; and adds each image's
    true label, its class folder (torchvision's ImageFolder: sorted folder names)."""
    from torchvision.datasets import ImageFolder

    (tmp_path / "data" / "val").mkdir(parents=True)
    shutil.copytree(image_dir, tmp_path / "data" / "val" / "b_photos")
    (tmp_path / "data" / "val" / "a_one").mkdir()
    (tmp_path / "data" / "val" / "a_one" / "x.jpg").write_bytes(imagenet_photos[5].read_bytes())
    common = ["--model", "pit_test", "--topk", "3", "--format", "json", "--precision", "fp32"]
    assert cli(["predict", str(tmp_path / "data" / "val")] + common) == 0
    files = capsys.readouterr()
    assert cli(["predict", "--data", str(tmp_path / "data")] + common) == 0
    data = capsys.readouterr()
    by_file, by_data = json.loads(files.out), json.loads(data.out)
    assert [r["path"] for r in by_data] == [r["path"] for r in by_file] and len(by_data) == 4
    assert [r["predictions"] for r in by_data] == [r["predictions"] for r in by_file]
    assert all("label" not in r for r in by_file)
    ref = dict(ImageFolder(str(tmp_path / "data" / "val")).samples)
    assert [(r["label"]["index"], r["label"]["name"]) for r in by_data] == [
        (ref[r["path"]], ["a_one", "b_photos"][ref[r["path"]]]) for r in by_data]
    for name in ("zz_truncated.jpg", "zz_text.png"):
        assert name in files.err and name in data.err


# ---------------------------------------------------------------------------- benchmark
def test_benchmark_pit_ti_against_timm_and_facts():
    from pitvit.tools.benchmark import benchmark, format_table

    rows = benchmark("pit_ti", batch=1, compare="timm", device="cpu", steps=1, warmup=0, train=False)
    ours, ref = rows
    assert (ours["impl"], ref["impl"], ref["model"]) == ("pitvit", "timm", "pit_ti_224")
    assert ours["params"] == ref["params"] == 4_847_272  # FACTS.md
    assert round(ours["gmacs"], 3) == 0.699  # FACTS.md, multiply-accumulates at 224 px
    assert ours["infer_img_s"] > 0 and ref["infer_img_s"] > 0
    table = format_table(rows)
    assert "pitvit/timm" in table and "0.699" in table


def test_benchmark_cli_train_and_errors(capsys):
    assert cli(["benchmark", "--model", "pit_test", "--batch", "2", "--steps", "1", "--warmup", "0",
                "--device", "cpu", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["train_img_s"] > 0 and row["train_peak_mib"] >= 0 and row["img_size"] == 32
    assert cli(["benchmark", "--model", "pit_test", "--compare", "timm"]) == 2
    assert "timm" in capsys.readouterr().err
    assert cli(["benchmark", "--model", "pit_x"]) == 2
    assert "pit_xs" in capsys.readouterr().err



@pytest.mark.slow
def test_compile_in_predict_eval_and_benchmark(tmp_path, capsys):
    """--compile (inductor on the CPU, about a minute per model): the same answers as eager within float noise."""
    import torch
    from PIL import Image

    from pitvit.models import create_model, save_pretrained
    from pitvit.tools.evaluate import evaluate_model
    from pitvit.tools.predict import predict_files

    torch.manual_seed(0)
    save_pretrained(create_model("pit_test"), tmp_path / "m")
    for k in range(5):
        d = tmp_path / "data" / "val" / f"c{k % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 36), (50 * k, 90, 200 - 30 * k)).save(d / f"{k}.png")
    files = sorted((tmp_path / "data").rglob("*.png"))
    model = create_model("pit_test", weights=tmp_path / "m")
    eager, _ = predict_files(model, files, topk=3, batch_size=2, amp="none")
    compiled, _ = predict_files(model, files, topk=3, batch_size=2, amp="none", compile=True)  # 2, 2, then 1
    for a, b in zip(eager, compiled):
        assert [i for i, _, _ in a.top] == [i for i, _, _ in b.top]
        assert [p for _, _, p in a.top] == pytest.approx([p for _, _, p in b.top], abs=1e-5)
    common = dict(batch_size=2, workers=0, device="cpu")
    one = evaluate_model(None, tmp_path / "m", tmp_path / "data", **common)
    two = evaluate_model(None, tmp_path / "m", tmp_path / "data", compile=True, **common)
    assert (two["compile"], two["n"], two["top1"]) == (True, 5, one["top1"])
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    assert cli(["benchmark", "--model", "pit_test", "--batch", "2", "--steps", "1", "--warmup", "0", "--device",
                "cpu", "--amp", "none", "--compile", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["compile"] is True and row["infer_img_s"] > 0 and row["train_img_s"] > 0

def test_time_alternating_rotates_the_order_and_drops_slow_steps():
    """Every round times every step once, the order rotating (a b c, b c a, c a b, ...); a step slower than
    max_step_s in its last warm-up call is timed no further; the budget cuts rounds but not below min_rounds."""
    import time

    from pitvit.tools.benchmark import time_alternating

    calls: list[str] = []

    def step(name: str, seconds: float = 0.0):
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)
        return run

    t = time_alternating({"a": step("a"), "b": step("b"), "c": step("c")}, device="cpu", rounds=4, warmup=1)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab") + list("abc")
    assert t.rounds == 4 and all(len(v) == 4 for v in t.times.values())

    calls.clear()
    t = time_alternating({"a": step("a"), "slow": step("slow", 0.05), "b": step("b")}, device="cpu", rounds=3,
                         warmup={"a": 2, "slow": 1, "b": 0}, max_step_s=0.03)
    assert calls == ["a", "a", "slow"] + list("ab") + list("ba") + list("ab")
    assert len(t.times["slow"]) == 1 and t.times["slow"][0] >= 0.05 and len(t.times["a"]) == 3

    calls.clear()
    t = time_alternating({"a": step("a", 0.02), "b": step("b", 0.02)}, device="cpu", rounds=50, warmup=0,
                         budget_s=0.01, min_rounds=3)
    assert t.rounds == 3 and len(calls) == 6

    # settle_s: idle, then one untimed call, before every timing, all outside the time measured (the clock of
    # the calls is the reference): calls come in pairs, the pairs 0.05 s apart
    stamps: list[float] = []
    t = time_alternating({"a": lambda: stamps.append(time.perf_counter()),
                          "b": lambda: stamps.append(time.perf_counter())}, device="cpu", rounds=3, warmup=0,
                         settle_s=0.05)
    assert len(stamps) == 12 and min(b - a for a, b in zip(stamps[1::2], stamps[2::2])) >= 0.05
    assert max(max(v) for v in t.times.values()) < 0.05


def test_compare_settings_same_weights_every_setting(monkeypatch):
    """pitvit and timm get the same weights (their logits agree: timm is the reference), every setting is timed
    in the same rounds, and the base setting's speed-up is 1 by construction."""
    import torch

    from pitvit.tools import benchmark as B

    pair = B._timm_pair("pit_ti", 32, torch.device("cpu"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(pair["pitvit"].eval()(x), pair["timm"].eval()(x), rtol=1e-5, atol=1e-5)
    res = B.compare_settings("pit_ti", mode="infer", settings=["fp32", "bf16"], batch=2, img_size=32, rounds=3)
    assert res["rounds"] == 3 and list(res["settings"]) == ["fp32", "bf16"] and not res["skipped"]
    assert res["settings"]["fp32"]["speedup"] == {"pitvit": 1.0, "timm": 1.0}
    assert all(v > 0 for v in res["settings"]["bf16"]["speedup"].values())
    with pytest.raises(B.ConfigError, match="fp32"):
        B.parse_setting("fp64+compile")
    assert B.parse_setting("bf16+compile") == ("bf16", True) and B.parse_setting("fp32") == ("fp32", False)

# ---------------------------------------------------------------------------- torch.hub
REPO = Path(__file__).resolve().parents[1]


def test_hub_lists_every_variant_and_loads_local_clone(tmp_path):
    import torch

    from pitvit.models import create_model, list_models
    from pitvit.models import save_weights

    import importlib.util

    # torch.hub.list/help take GitHub repos only; this is their rule for entry points: public callables.
    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO / "hubconf.py")
    hub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hub)
    entries = sorted(f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_"))
    assert entries == list_models()
    assert "weights" in hub.pit_ti.__doc__
    ti = torch.hub.load(str(REPO), "pit_ti", source="local")
    assert sum(p.numel() for p in ti.parameters()) == 4_847_272  # FACTS.md

    src = create_model("pit_test")
    save_weights(src, tmp_path / "w.pth")
    model = torch.hub.load(str(REPO), "pit_test", source="local", weights=str(tmp_path / "w.pth"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), src.state_dict().values()))
    head = torch.hub.load(str(REPO), "pit_test", source="local", num_classes=3)
    assert head.num_classes == 3


def test_hubconf_depends_on_torch_only():
    import ast

    tree = ast.parse((REPO / "hubconf.py").read_text())
    deps = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "dependencies")
    assert ast.literal_eval(deps) == ["torch"]
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"os", "sys", "pitvit"}


@pytest.mark.slow
def test_eval_two_processes_under_torchrun(tmp_path, imagenet_photos):
    """torchrun --nproc_per_node=2: every image counted once, the same numbers as one process."""
    import os
    import subprocess
    import sys

    from pitvit.tools.evaluate import evaluate_model

    data = _list_dataset(tmp_path / "data", imagenet_photos, _labels(imagenet_photos))
    args = ["-m", "pitvit", "eval", "--model", "pit_ti", "--data", str(data), "--batch-size", "3",
            "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "r.json")]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(torchrun + args, check=True, env=env, timeout=300, capture_output=True)
    two = json.loads((tmp_path / "r.json").read_text())
    one = evaluate_model("pit_ti", None, data, batch_size=3, workers=0, device="cpu")
    assert two["processes"] == 2 and two["n"] == one["n"] == 20
    assert (two["top1"], two["top5"]) == (one["top1"], one["top5"])
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-4)


# ---------------------------------------------------------------------------- one preprocessing resolver
def test_resolve_preprocessing_agrees_with_timms_resolve_data_config():
    """registry -> checkpoint -> user overrides, in the order timm's ``resolve_data_config`` applies a model's
    pretrained_cfg and then the user's arguments (timm is the reference)."""
    import timm
    from timm.data import resolve_data_config

    from pitvit.models import create_model, resolve_preprocessing

    ref_model = timm.create_model("pit_ti_224", pretrained=False)
    keys = ("input_size", "crop_pct", "interpolation", "mean", "std")
    for args, ours in [({}, {}), ({"crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "interpolation": "bilinear"},
                                  {"crop_pct": 1.0, "mean": [0.5, 0.5, 0.5], "interpolation": "bilinear"})]:
        ref = resolve_data_config(dict(args), model=ref_model)
        got = resolve_preprocessing("pit_ti", **ours)
        assert {k: tuple(ref[k]) if isinstance(ref[k], tuple) else ref[k] for k in keys} == got
    # a checkpoint's pretrained_cfg (what model_from_checkpoint sets) wins over the registry's
    model = create_model("pit_test")
    model.pretrained_cfg = model.pretrained_cfg.__class__.from_dict({**model.pretrained_cfg.to_dict(),
                                                                     "crop_pct": 0.5})
    assert resolve_preprocessing(model)["crop_pct"] == 0.5 and resolve_preprocessing("pit_test")["crop_pct"] == 1.0
    assert resolve_preprocessing(model, input_size=48)["input_size"] == (3, 48, 48)


def test_fp32_peak_is_cores_lanes_fma_and_clock(monkeypatch, tmp_path):
    """Hand-computed from the vendors' published issue rates: Zen 4 (AMD family 25) issues one 512-bit FMA per
    cycle, Zen 5 (family 26) two, Intel since Haswell two 256-bit ones; so 2 Zen 4 cores at 2.6 GHz give
    2 x 16 lanes x 1 x 2 FLOP x 2.6e9 = 166.4 GFLOP/s and Zen 5 cores twice that. A clock read from /proc/cpuinfo
    (the one the OS last saw) is said to be one that boost can exceed."""
    from pitvit.utils import cpus

    monkeypatch.setattr(cpus, "_max_ghz", lambda: (2.6, "/proc/cpuinfo cpu MHz"))
    avx512 = {"avx512f", "avx2", "fma"}
    peak = cpus.fp32_peak(2, avx512, ("AuthenticAMD", 25, 17))
    assert peak.flops == pytest.approx(166.4e9) and "exceed 100%" in peak.how and "Zen 4" in peak.how
    assert cpus.fp32_peak(2, avx512, ("AuthenticAMD", 26, 2)).flops == pytest.approx(332.8e9)
    assert cpus.fp32_peak(2, {"avx2", "fma"}, ("GenuineIntel", 6, 85)).flops == pytest.approx(166.4e9)
    assert cpus.fp32_peak(2, {"avx2", "fma"}, ("", 0, 0)).flops == pytest.approx(83.2e9)
    assert cpus.fp32_peak(2, {"sse2"}, ("AuthenticAMD", 26, 2)) is None
    monkeypatch.setattr(cpus, "_max_ghz", lambda: (3.7, "cpufreq cpuinfo_max_freq"))
    peak = cpus.fp32_peak(1, {"avx512f"}, ("AuthenticAMD", 25, 17))
    assert peak.flops == pytest.approx(118.4e9) and "exceed" not in peak.how
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n\n"
                    "processor\t: 1\nvendor_id\t: Other\n")
    assert cpus.cpu_identity(info) == ("AuthenticAMD", 26, 2)
    assert cpus.cpu_identity(tmp_path / "missing") == ("", 0, 0)


def test_int8_calibrates_on_the_data_a_run_checkpoint_names(tmp_path):
    """A run checkpoint's own training data is int8's default calibration set, with its forced layout: the key is
    data.format, data.kind in checkpoints written before the rename."""
    import torch

    from pitvit.tools.backends import default_calibration

    for key in ("format", "kind"):
        path = tmp_path / f"{key}.pt"
        torch.save({"model": {}, "config": {"data": {"path": "/d", key: "wds", "train_split": "train"}}}, path)
        assert default_calibration(path) == {"path": "/d", "kind": "wds", "split": "train"}
    assert default_calibration(tmp_path / "missing.pt") is None
