"""The README's commands, tried mechanically.

Every ``pitvit`` command in the README (also behind ``torchrun ... -m pitvit``) must parse with the real
command line, name shipped recipes and ``--set`` keys the config accepts. The ones that need no GPU,
no ImageNet and no downloaded weights run for real here, on stand-in files made by the test under the names
the README uses; the Python example runs as written.
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


def test_readme_opens_with_the_two_commands():
    first = _blocks("sh")[0].strip().splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]
    assert README.index("```sh") < README.index("\n## ")


def test_readme_has_commands_for_every_tool():
    used = {argv[0] for argv in COMMANDS}
    assert {"train", "eval", "predict", "export", "benchmark", "convert", "plot"} <= used


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
