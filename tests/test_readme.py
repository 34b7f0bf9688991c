"""The README's commands, run.

Every ``pitvit`` command in the README (also behind ``torchrun ... -m pitvit``) is run by the real command line:
the ones that need no GPU, no ImageNet and no downloaded weights for real, in a folder of stand-in files made
here under the names the README uses (random pit_ti weights, a tiny training run of pit_test as
``runs/pit_ti``, a few images); training commands as a dry run (``--print-config``: the recipe and every
``--set`` resolve); the rest with ``--help`` after their options. ``make`` targets run with ``make -n``; the
Python example runs as written.
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pitvit
from pitvit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, re.S)


def _commands() -> list[list[str]]:
    """Each shell command of the README (continuations joined, comments dropped) as a pitvit argv."""
    out = []
    for block in _blocks("sh"):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            argv = shlex.split(line)
            if argv[0] == "pitvit":
                out.append(argv[1:])
            elif argv[0] == "torchrun":
                out.append(argv[argv.index("pitvit") + 1:])
    return out


COMMANDS = _commands()


def test_readme_opens_with_make_targets_that_exist():
    first = _blocks("sh")[0].strip().splitlines()
    targets = [line.split("#")[0].split() for line in first]
    assert all(t[0] == "make" for t in targets) and README.index("```sh") < README.index("\n## ")
    for t in targets:  # a dry run: make says what it would do, and fails for a target it does not know
        subprocess.run(["make", "-n", *t[1:]], cwd=ROOT, check=True, capture_output=True)


def test_readme_has_commands_for_every_tool():
    used = {argv[0] for argv in COMMANDS}
    assert {"train", "eval", "predict", "export", "benchmark", "convert", "plot", "info"} <= used


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_command_parses_and_its_config_resolves(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)
    if args.command == "train":
        from pitvit.train.recipes import list_recipes, load_config

        assert args.config in list_recipes(), args.config  # by name: works from an installed pitvit too
        load_config(args.config, list(args.overrides))  # unknown keys or bad values raise
    model = getattr(args, "model", None)
    if model:
        assert model in pitvit.list_models()


def _run_here(argv: list[str]) -> None:
    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Stand-ins under the README's names: weight files, images, and runs/ folders of a 1-epoch pit_test run."""
    import shutil

    from PIL import Image

    from pitvit.train.recipes import load_config
    from pitvit.train.runner import fit

    root = tmp_path_factory.mktemp("readme")
    torch.manual_seed(0)
    model = pitvit.create_model("pit_ti")
    pitvit.save_weights(model, root / "pit_ti_730.pth")
    pitvit.save_weights(model, root / "Best_PiT-EMA.pdparams")
    pitvit.save_weights(model, root / "pit_ti_timm.pth", format="timm")
    (root / "photos").mkdir()
    for name in ("photo.jpg", "photos/a.jpg", "photos/b.png"):
        Image.new("RGB", (64, 48), (200, 120, 30)).save(root / name)

    class Toy(torch.utils.data.Dataset):
        classes = ["a", "b"]

        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)), i % 2

    cfg = load_config(None, [f"train.output={root / 'runs' / 'pit_ti'}", "model.name=pit_test", "train.epochs=1",
                             "data.batch_size=4", "data.num_workers=0", "train.device=cpu", "log.plot=false"])
    fit(cfg, datasets=(Toy(), Toy()))
    for copy in ("a", "b"):
        shutil.copytree(root / "runs" / "pit_ti", root / "runs" / copy)
    return root


CHEAP = ("predict", "info", "convert", "plot", "models")  # seconds on a CPU with the stand-ins


def _inputs(argv: list[str]) -> list[str]:
    """The files a command reads: its positional arguments (convert: the first), predict's --data and --weights."""
    args = build_parser().parse_args(argv)
    found = {"predict": lambda: args.inputs + ([args.data] if args.data else []), "info": lambda: [args.file],
             "convert": lambda: [args.src],
             "plot": lambda: args.run_dirs}.get(argv[0], list)()
    return [str(p) for p in found] + ([args.weights] if getattr(args, "weights", None) else [])


def _how(argv: list[str], workspace: Path) -> str:
    """``real``, ``dry`` (training: --print-config) or ``help``, for one README command."""
    if argv[0] == "train":
        return "dry"
    if argv[0] in CHEAP and all((workspace / p).exists() for p in _inputs(argv)):
        return "real"
    return "help"


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_every_command_runs(argv, workspace, monkeypatch, capsys):
    """Each README command, run as a user would (for real, dry, or --help: see the module docstring)."""
    monkeypatch.chdir(workspace)
    how = _how(argv, workspace)
    if how == "dry":
        _run_here(argv + ["--print-config"])
        assert "model:" in capsys.readouterr().out
    elif how == "real":
        _run_here(argv)
    else:
        with pytest.raises(SystemExit) as e:
            build_parser().parse_args(argv + ["--help"])
        assert e.value.code == 0
        assert f"usage: pitvit {argv[0]}" in capsys.readouterr().out


def test_convert_commands_run(tmp_path, monkeypatch, capsys):
    """Every `pitvit convert` line of the README, on stand-in files with the README's names."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = pitvit.create_model("pit_ti")
    pitvit.save_weights(model, "pit_ti_730.pth")
    pitvit.save_weights(model, "Best_PiT-EMA.pdparams")
    pitvit.save_weights(model, "pit_ti_timm.pth", format="timm")
    lines = [a for a in COMMANDS if a[0] == "convert"]
    assert len(lines) >= 6
    for argv in lines:
        if argv[1].startswith("runs/"):
            continue  # needs a training run; converting a pitvit checkpoint is tested in test_weights
        _run_here(argv)
        dst = Path(argv[2])
        assert dst.exists(), argv
        back = pitvit.create_model("pit_ti", weights=str(dst))
        for k, v in model.state_dict().items():
            torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)


def test_python_example_runs():
    (code,) = _blocks("python")
    lines = [line for line in code.splitlines()]
    namespace: dict = {}
    exec(compile("\n".join(lines), "README.md", "exec"), namespace)
    assert namespace["logits"].shape == (2, 10)
    assert [f.shape[-1] for f in namespace["feats"]] == [35, 18, 9]


def test_models_command_runs():
    out = subprocess.run([sys.executable, "-m", "pitvit", "models", "pit_ti*"], capture_output=True, text=True,
                         check=True).stdout
    assert "4,847,272" in out and "0.699" in out
