"""The command line as a user meets it: the error policy, recipes by name, and the --ema paths.

References: the exit-code table documented in ``pitvit --help`` (one code per error type), the recipe files in
``src/pitvit/configs`` read as plain YAML, FACTS' pit_ti recipe values, and EMA weights read back from a
real training checkpoint with ``torch.load`` (not through pitvit's loader).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from pitvit.cli import SUBCOMMANDS
from pitvit.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "pitvit" / "configs"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


# ---------------------------------------------------------------------------- the error policy
@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> Path:
    """A folder with a file that is not a checkpoint, an empty folder and a plain file."""
    d = tmp_path_factory.mktemp("bad")
    (d / "junk.pth").write_bytes(b"junk, not a checkpoint")
    (d / "empty").mkdir()
    (d / "afile").write_text("a file, not a folder")
    return d


# (argv, exit code, words the one line must hold). {d} is the bad_inputs folder. Codes: pitvit --help.
ERROR_CASES = [
    # ConfigError, 2: an option, key, value, name or path argument
    (["train", "--config", "pit_nope"], 2, ["'pit_nope' not found", "pit_ti_distilled"]),
    (["train", "--config", "pit_ti", "--set", "optim.lrr=1", "--print-config"], 2, ["optim.lrr", "optim.lr"]),
    (["train", "--set", "train.epochs=ten", "--print-config"], 2, ["train.epochs", "integer"]),
    (["demo", "--set", "optim.lr=[1,", "--output", "{d}/demo"], 2, ["optim.lr", "YAML"]),
    (["eval", "--model", "pit_nope"], 2, ["--model", "pit_nope", "pit_ti"]),
    (["eval", "--ema", "--model", "pit_test"], 2, ["--ema needs --weights"]),
    (["eval", "--model", "pit_test", "--weights", "{d}/none.pth"], 2, ["none.pth"]),
    (["eval", "--device", "tpu"], 2, ["--device", "tpu"]),
    (["predict", "{d}/afile", "--weights", "{d}/none.pth"], 2, ["none.pth"]),
    (["predict", "{d}/afile", "--data", "{d}/empty", "--model", "pit_test"], 2, ["image files", "--data", "not both"]),
    (["predict", "--model", "pit_test"], 2, ["nothing to classify", "--data DIR"]),
    (["predict", "{d}/afile", "--split", "test", "--model", "pit_test"], 2, ["--split", "give --data"]),
    (["export", "--model", "pit_test", "--format", "pt2", "--out", "{d}/m.onnx"], 2, ["m.onnx", ".pt2"]),
    (["benchmark", "--model", "pit_test", "--compare", "timm"], 2, ["pit_test", "timm"]),
    (["benchmark", "--model", "pit_test", "--amp", "fp16", "--device", "cpu"], 2, ["fp16", "bf16"]),
    (["benchmark", "--model", "pit_test", "--precision", "int8"], 2, ["int8", "engine table", "onnxruntime"]),
    (["benchmark", "--model", "pit_test", "--backend", "onnxruntime", "--precision", "bf16"], 2,
     ["bf16", "onnxruntime"]),
    (["benchmark", "--model", "pit_test", "--backend", "all", "--precision", "fp16"], 2, ["fp16", "CUDA"]),
    (["convert", "{d}/junk.pth", "{d}/junk.pth"], 2, ["junk.pth", "source"]),
    (["plot", "{d}/empty"], 2, ["metrics.jsonl"]),
    (["models", "pit_nope*"], 2, ["pit_nope*", "pit_ti"]),
    # DatasetError, 3
    (["eval", "--model", "pit_test", "--data", "{d}/nodata", "--workers", "0"], 3, ["nodata"]),
    (["predict", "--data", "{d}/nodata", "--model", "pit_test"], 3, ["nodata"]),
    (["predict", "--data", "{d}/empty", "--data-format", "wds", "--model", "pit_test"], 3, ["no wds files"]),
    (["train", "--config", "demo", "--data", "{d}/nodata", "--output", "{d}/run_nodata"], 3, ["nodata"]),
    # CheckpointError, 4
    (["eval", "--weights", "{d}/junk.pth", "--data", "{d}/empty"], 4, ["junk.pth", "not a checkpoint"]),
    (["predict", "{d}/afile", "--weights", "{d}/junk.pth"], 4, ["junk.pth"]),
    (["export", "--weights", "{d}/junk.pth"], 4, ["junk.pth"]),
    (["convert", "{d}/junk.pth", "{d}/out.safetensors", "--model", "pit_test"], 4, ["junk.pth"]),
    # TrainingError, 5
    (["train", "--config", "demo", "--resume", "--output", "{d}/run_none"], 5, ["--resume", "last.pt"]),
    # OutputError, 6: a path under a file
    (["export", "--model", "pit_test", "--out", "{d}/afile/m.onnx"], 6, ["afile/m.onnx", "cannot write"]),
]


@pytest.mark.parametrize("argv,code,words", ERROR_CASES, ids=[" ".join(c[0])[:50] for c in ERROR_CASES])
def test_user_errors_are_one_line_with_their_code(bad_inputs, capsys, argv, code, words):
    argv = [a.replace("{d}", str(bad_inputs)) for a in argv]
    assert cli(argv) == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    # Notes logged before the error (e.g. "randomly initialized") may precede it; the error is the last line.
    assert lines[-1].startswith(f"pitvit {argv[0]}: error: "), err
    assert sum("error:" in line for line in lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w.replace("{d}", str(bad_inputs)) in lines[-1], (w, lines[-1])


def test_data_format_option_and_its_older_name():
    """--data-format names what --data (pack: SRC) holds; eval and pack still take --kind, its older name."""
    from pitvit.cli import build_parser

    parse = build_parser().parse_args
    for argv in (["eval"], ["pack", "src", "out"]):
        assert parse(argv).data_format == "auto"
        for option in ("--data-format", "--kind"):
            assert parse(argv + [option, "wds"]).data_format == "wds"
    assert parse(["predict", "--data", "d", "--data-format", "parquet"]).data_format == "parquet"
    assert parse(["predict", "x.jpg"]).data_format is None  # default: auto, and only with --data


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommands_help_prints(command, capsys):
    """`pitvit COMMAND --help` (it once raised KeyError from the shared --traceback option's help text)."""
    assert cli([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: pitvit {command}") and "--traceback" in out


def test_help_lists_every_exit_code(capsys):
    from pitvit.utils.errors import (CheckpointError, ConfigError, DatasetError, OutputError, TrainingError)

    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    epilog = out[out.index("exit status:"):]
    for cls, code in ((ConfigError, 2), (DatasetError, 3), (CheckpointError, 4), (TrainingError, 5),
                      (OutputError, 6)):
        assert cls.exit_code == code  # the documented table (docs/DESIGN.md, pitvit --help)
        assert f"\n  {code}  " in epilog
    assert "\n  130  interrupted" in epilog and "bug" in epilog


def test_traceback_option_before_or_after_the_subcommand(capsys):
    for argv in (["--traceback", "models", "pit_nope*"], ["models", "pit_nope*", "--traceback"]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and "ConfigError" in err
        assert err.strip().splitlines()[-1].startswith("pitvit models: error: no registered model")
    assert cli(["models", "pit_nope*"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    """A KeyError from a bug is not a user error: it propagates (in process) ..."""
    import pitvit.tools.zoo as zoo

    monkeypatch.setattr(zoo, "zoo_rows", lambda pattern: {}["key"])
    with pytest.raises(KeyError, match="key"):
        cli(["models"])


def test_an_internal_bug_shows_a_traceback_from_the_command():
    """... and from the real command the traceback reaches stderr, exit status 1, no one-line error."""
    code = ("import sys, pitvit.tools.zoo as z; z.zoo_rows = lambda pattern: {}['key']; "
            "from pitvit.cli import main; sys.exit(main(['models']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 1
    assert "Traceback (most recent call last)" in r.stderr and "KeyError: 'key'" in r.stderr
    assert "error:" not in r.stderr.replace("KeyError", "")


def test_ctrl_c_exits_130(monkeypatch, capsys):
    import pitvit.tools.zoo as zoo

    def interrupted(pattern):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "zoo_rows", interrupted)
    assert cli(["models"]) == 130
    assert capsys.readouterr().err.strip() == "pitvit models: interrupted"


# ---------------------------------------------------------------------------- recipes by name
def _printed_config(capsys, argv) -> dict:
    assert cli(argv + ["--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_list_configs_names_every_shipped_file(capsys):
    assert cli(["train", "--list-configs"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert names == sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    assert {"demo", "pit_ti", "pit_s", "pit_xs", "pit_b", "pit_ti_distilled"} <= set(names)


def test_config_by_name_by_file_and_base_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    by_name = _printed_config(capsys, ["train", "--config", "pit_ti"])
    # FACTS' official recipe (pit_ti): 300 epochs, AdamW 5e-4 for 512, 5 warmup epochs, mixup 0.8.
    assert (by_name["name"], by_name["train"]["epochs"], by_name["optim"]["lr"], by_name["sched"]["warmup_epochs"],
            by_name["aug"]["mixup"]) == ("pit_ti", 300, 5e-4, 5, 0.8)
    assert _printed_config(capsys, ["train", "--config", "pit_ti.yaml"]) == by_name
    assert _printed_config(capsys, ["train", "--config", str(SHIPPED / "pit_ti.yaml")]) == by_name
    # A recipe of one's own, extending a shipped one by name.
    (tmp_path / "mine.yaml").write_text("base: pit_ti\ntrain: {epochs: 10}\n")
    mine = _printed_config(capsys, ["train", "--config", "mine.yaml"])
    assert mine["name"] == "mine" and mine["train"]["epochs"] == 10 and mine["optim"]["lr"] == 5e-4
    assert mine["data"]["crop_pct"] == 0.875  # from the shipped pit_ti (the default is None)
    # A file beside it wins over a shipped recipe of the same name, for --config and for base: alike.
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pit_ti.yaml").write_text("optim: {lr: 1.0e-3}\n")
    (tmp_path / "sub" / "child.yaml").write_text("base: pit_ti.yaml\n")
    child = _printed_config(capsys, ["train", "--config", str(tmp_path / "sub" / "child.yaml")])
    assert child["optim"]["lr"] == 1e-3 and child["data"]["crop_pct"] is None
    # The shipped distilled recipe's own base: chain (pit_ti_distilled -> pit_ti) resolves inside the package.
    dist = _printed_config(capsys, ["train", "--config", "pit_ti_distilled"])
    assert (dist["distill"]["mode"], dist["optim"]["lr"], dist["model"]["name"]) == ("hard", 5e-4, "pit_ti_distilled")


def test_recipe_files_are_the_shipped_ones():
    """Each shipped file, read as plain YAML, is what --config NAME loads (the values the file states win)."""
    from pitvit.train.config import config_to_dict
    from pitvit.train.recipes import load_config

    for path in SHIPPED.glob("*.yaml"):
        raw = yaml.safe_load(path.read_text())
        resolved = config_to_dict(load_config(path.stem))
        for section, values in raw.items():
            if isinstance(values, dict):
                for k, v in values.items():
                    assert resolved[section][k] == pytest.approx(v) if isinstance(v, float) else \
                        resolved[section][k] == v, (path.name, section, k)


def test_built_wheel_and_sdist_carry_the_recipes_and_the_installed_package_finds_them(tmp_path):
    """Build from a copy of the sources (the checkout stays clean), install the wheel by unpacking it (a pure
    Python wheel), and run `pitvit train --config NAME` from elsewhere with only that copy importable."""
    src = tmp_path / "src_copy"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    build = ("from setuptools import build_meta as b; import json, sys; dist, out = sys.argv[1:3]; "
             "names = [b.build_wheel(dist), b.build_sdist(dist)]; open(out, 'w').write(json.dumps(names))")
    r = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist"), str(tmp_path / "names.json")],
                       cwd=src, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel_name, sdist_name = json.loads((tmp_path / "names.json").read_text())
    shipped = sorted(p.name for p in SHIPPED.glob("*.yaml"))
    with zipfile.ZipFile(tmp_path / "dist" / wheel_name) as z:
        assert sorted(Path(n).name for n in z.namelist() if n.startswith("pitvit/configs/")) == shipped
        z.extractall(tmp_path / "site")
    import tarfile

    with tarfile.open(tmp_path / "dist" / sdist_name) as t:
        in_sdist = sorted(Path(n).name for n in t.getnames() if "/src/pitvit/configs/" in n and n.endswith(".yaml"))
    assert in_sdist == shipped

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import sys, pitvit; print(pitvit.__file__); from pitvit.cli import main; "
            "sys.exit(main(['train', '--config', 'pit_ti_distilled', '--print-config']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                       env=_env(PYTHONPATH=str(tmp_path / "site")))
    assert r.returncode == 0, r.stderr[-2000:]
    first, rest = r.stdout.split("\n", 1)
    assert Path(first).is_relative_to(tmp_path / "site")  # the installed copy ran, not the checkout
    cfg = yaml.safe_load(rest)
    assert (cfg["name"], cfg["distill"]["mode"], cfg["optim"]["lr"]) == ("pit_ti_distilled", "hard", 5e-4)


# ---------------------------------------------------------------------------- --ema from a real training run
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, imagenet_photos):
    """`pitvit train` for 2 short epochs of pit_test on the 20 photos (two classes) at a high lr with a fast
    EMA (decay 0.5), so the checkpoint's EMA weights differ clearly from its raw ones."""
    root = tmp_path_factory.mktemp("ema_run")
    data = root / "data"
    for split in ("train", "val"):
        for i, photo in enumerate(imagenet_photos):
            folder = data / split / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / photo.name).symlink_to(photo)
    run = root / "run"
    sets = ["model.name=pit_test", "train.epochs=2", "train.device=cpu", "train.amp=none", "data.batch_size=5",
            "data.num_workers=0", "optim.lr=0.01", "optim.lr_base_batch=0", "sched.warmup_epochs=0",
            "ema.decay=0.5", "log.plot=false", "train.threads=1"]
    argv = ["train", "--data", str(data), "--output", str(run)] + [x for s in sets for x in ("--set", s)]
    assert cli(argv) == 0
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    raw, ema = ckpt["state_dict"], ckpt["ema_state_dict"]
    assert raw.keys() == ema.keys() and not all(torch.equal(raw[k], ema[k]) for k in raw)
    return run / "last.pt", data, ckpt


def _reference(state: dict, ckpt: dict):
    """pit_test with the given weights loaded by torch alone, and the checkpoint's preprocessing via timm."""
    from timm.data import create_transform

    from pitvit.models import create_model

    model = create_model("pit_test", num_classes=len(ckpt["class_names"]))
    model.load_state_dict(state)
    pre = ckpt["pretrained_cfg"]
    tf = create_transform(input_size=tuple(pre["input_size"]), is_training=False, crop_pct=pre["crop_pct"],
                          interpolation=pre["interpolation"], mean=tuple(pre["mean"]), std=tuple(pre["std"]))
    return model.eval(), tf


def test_eval_ema_evaluates_the_ema_weights(ema_run, tmp_path, capsys):
    from PIL import Image

    path, data, ckpt = ema_run
    images = sorted((data / "val").rglob("*.jpg"))
    labels = torch.tensor([ckpt["class_names"].index(p.parent.name) for p in images])
    losses = {}
    for key in ("state_dict", "ema_state_dict"):
        model, tf = _reference(ckpt[key], ckpt)
        with torch.no_grad():
            logits = model(torch.stack([tf(Image.open(p).convert("RGB")) for p in images]))
        losses[key] = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(losses["state_dict"] - losses["ema_state_dict"]) > 1e-3  # else the test could not tell them apart
    for ema, key in ((True, "ema_state_dict"), (False, "state_dict")):
        out = tmp_path / f"r_{ema}.json"
        assert cli(["eval", "--weights", str(path), "--data", str(data), "--workers", "0", "--device", "cpu",
                    "--out", str(out)] + (["--ema"] if ema else [])) == 0
        r = json.loads(out.read_text())
        assert r["ema"] is ema and r["n"] == 20
        assert r["loss"] == pytest.approx(losses[key], abs=1e-4)
    assert "(EMA)" in capsys.readouterr().out


def test_convert_ema_writes_the_ema_weights(ema_run, tmp_path):
    from safetensors.torch import load_file

    path, _, ckpt = ema_run
    for ema, key in ((True, "ema_state_dict"), (False, "state_dict")):
        out = tmp_path / f"w_{ema}.safetensors"
        assert cli(["convert", str(path), str(out)] + (["--ema"] if ema else [])) == 0
        written = load_file(out)
        assert written.keys() == ckpt[key].keys()
        assert all(torch.equal(written[k], ckpt[key][k]) for k in written), key


def test_export_ema_exports_the_ema_weights(ema_run, tmp_path):
    path, _, ckpt = ema_run
    out = tmp_path / "ema.pt2"
    assert cli(["export", "--weights", str(path), "--ema", "--format", "pt2", "--out", str(out)]) == 0
    with open(out, "rb") as f:
        exported = torch.export.load(f).module()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = exported(x)
        want = _reference(ckpt["ema_state_dict"], ckpt)[0](x)
        raw = _reference(ckpt["state_dict"], ckpt)[0](x)
    assert (want - raw).abs().max() > 1e-3
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
