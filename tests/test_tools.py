"""Tools around the model: plot, eval, predict, benchmark, torch.hub. Small inputs, CPU only."""
from __future__ import annotations

import json
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
    from pitvit.tools.plot import plot_runs, read_metrics

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
