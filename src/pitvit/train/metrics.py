"""The per-epoch record of a run: ``metrics.jsonl`` and ``metrics.csv`` (rows as in ``docs/DESIGN.md``),
TensorBoard scalars when asked for and installed, and ``curves.png``."""
from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "FIELDS"]

log = logging.getLogger("pitvit.train")

FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "ema_loss", "ema_top1", "ema_top5",
          "epoch_time_s", "train_img_s", "skipped_images")


class MetricsLog:
    """Appends one row per epoch; a resumed run first drops rows past its checkpoint.

    Args:
        run_dir: the run folder.
        tensorboard: also write TensorBoard scalars (needs the ``tensorboard`` package).
        plot: redraw ``curves.png`` after every row (needs ``pitvit.tools.plot`` and matplotlib).
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False, plot: bool = True) -> None:
        self.dir = Path(run_dir)
        self.jsonl, self.csv = self.dir / "metrics.jsonl", self.dir / "metrics.csv"
        self.plot = plot
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.dir / "tensorboard"))
            except ImportError:
                log.warning("log.tensorboard is set but the tensorboard package is not installed; skipping it")

    def rows(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        out = []
        for line in self.jsonl.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
        return out

    def truncate(self, last_epoch: int) -> None:
        """Keep the rows of epochs ``<= last_epoch`` (a resumed run rewrites the later ones)."""
        rows = [r for r in self.rows() if r.get("epoch", 0) <= last_epoch]
        self._write(rows)

    def append(self, row: dict[str, Any]) -> None:
        row = {k: row[k] for k in FIELDS if row.get(k) is not None}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv(self.rows())
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        if self.plot:
            self._plot()

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
        self._write_csv(rows)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        present = [k for k in FIELDS if any(k in r for r in rows)]
        with open(self.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=present)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in present})

    def _plot(self) -> None:
        try:
            from pitvit.tools.plot import plot_runs
        except ImportError:
            return
        try:
            plot_runs([self.dir], self.dir / "curves.png")
        except Exception as e:  # a plot must never stop a training run
            log.warning("could not draw curves.png: %s", e)
            self.plot = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
