"""Provenance in a run's checkpoints and ``config.yaml``, and ``pitvit info`` on the files pitvit reads.

The references are outside pitvit: the versions torch, timm and Python report about themselves, ``git
rev-parse HEAD`` run by the test, the shapes of the model the file was written from, and torch's own reader.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

from pitvit.cli import main as cli
from pitvit.models import create_model, save_weights
from pitvit.utils.provenance import git_state

REPO = Path(__file__).resolve().parents[1]


class Stripes(torch.utils.data.Dataset):
    """32 px images of 10 classes (class ``c`` lights up rows 3c..3c+2)."""

    classes = [f"c{i}" for i in range(10)]

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        x = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) * 0.5
        x[:, 3 * (i % 10):3 * (i % 10) + 3, :] += 2.0
        return x, i % 10


def _git_head() -> tuple[str, bool] | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip(), bool(status.stdout.strip())


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
    from pitvit.train.recipes import load_config
    from pitvit.train.runner import fit

    out = tmp_path_factory.mktemp("prov") / "run"
    cfg = load_config(None, [f"train.output={out}", "model.name=pit_test", "train.epochs=1", "data.batch_size=16",
                             "data.num_workers=0", "train.amp=fp32", "train.device=cpu", "log.plot=false",
                             "sched.warmup_epochs=0"])
    fit(cfg, datasets=(Stripes(32), Stripes(16)))
    return out


def test_a_run_records_where_it_came_from(one_epoch_run):
    ckpt = torch.load(one_epoch_run / "last.pt", weights_only=True)
    saved = yaml.safe_load((one_epoch_run / "config.yaml").read_text())
    prov = ckpt["provenance"]
    assert saved["provenance"] == prov  # config.yaml and the checkpoint say the same
    from pitvit import __version__

    assert prov["pitvit"] == __version__ and prov["torch"] == torch.__version__
    assert prov["timm"] == timm.__version__ and prov["python"] == platform.python_version()
    assert prov["processes"] == 1 and prov["device"].startswith("cpu")
    assert prov["command"].split()[0] == Path(sys.argv[0]).as_posix() or sys.argv[0] in prov["command"]
    head = _git_head()
    if head is not None and (REPO / "src" / "pitvit" / "__init__.py").is_file():
        assert prov["git"] == {"commit": head[0], "dirty": head[1]}
    assert ckpt["metrics"]["epoch"] == 1 and "val_top1" in ckpt["metrics"]
    # the saved config is still a recipe that reproduces the run: the provenance is skipped when read
    from pitvit.train.config import config_to_dict
    from pitvit.train.recipes import load_config

    assert config_to_dict(load_config(one_epoch_run / "config.yaml")) == ckpt["config"]


def test_git_state_without_a_checkout_or_git(tmp_path, monkeypatch):
    assert git_state(tmp_path) is None  # not a repository: no failure, nothing recorded
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    assert git_state() is None


def test_info_on_a_run_checkpoint(one_epoch_run, capsys):
    assert cli(["info", str(one_epoch_run / "last.pt")]) == 0
    text = capsys.readouterr().out
    assert "pitvit checkpoint" in text and "variant:       pit_test" in text and "classes:       10 (c0, c1" in text
    assert "input size:    3x32x32" in text and "run:           1 epoch(s) done" in text
    assert f"torch {torch.__version__}, timm {timm.__version__}" in text and "digest:        verified" in text
    assert cli(["info", str(one_epoch_run / "last.pt"), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    ckpt = torch.load(one_epoch_run / "last.pt", weights_only=True)  # torch's own reader
    assert d["epoch"] == ckpt["epoch"] == 1 and d["metrics"] == ckpt["metrics"] and d["ema"]
    assert d["provenance"] == ckpt["provenance"] and d["num_classes"] == ckpt["state_dict"]["head.weight"].shape[0]


def test_info_on_safetensors_and_an_official_pth(tmp_path, capsys):
    model = create_model("pit_test", num_classes=7)
    save_weights(model, tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pth")  # the official release's layout: a bare state dict
    assert cli(["info", str(tmp_path / "w.safetensors"), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"].startswith("safetensors") and d["variant"] == "pit_test" and d["num_classes"] == 7
    assert d["tensors"] == len(model.state_dict()) and d["digest"].startswith("verified")
    assert cli(["info", str(tmp_path / "w.pth"), "--format", "json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["format"].startswith("torch file, official") and d["variant"] == "pit_test" and d["num_classes"] == 7
    assert d["input_size"] == [3, 32, 32] and d["digest"].startswith("none stored") and "provenance" not in d
    assert "epoch" not in d


def test_info_bad_files_are_one_line(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("not weights")
    assert cli(["info", str(tmp_path / "notes.pth")]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("pitvit info: error:") and "notes.pth" in err and "\n" not in err
    assert cli(["info", str(tmp_path / "absent.pt")]) == 2
    assert "absent.pt" in capsys.readouterr().err
    # a damaged safetensors file: its stored SHA-256 no longer matches
    save_weights(create_model("pit_test"), tmp_path / "w.safetensors")
    raw = bytearray((tmp_path / "w.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (tmp_path / "w.safetensors").write_bytes(bytes(raw))
    assert cli(["info", str(tmp_path / "w.safetensors")]) == 4
    err = capsys.readouterr().err.strip()
    assert "w.safetensors" in err and "\n" not in err
