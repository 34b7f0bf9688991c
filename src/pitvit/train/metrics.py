"""The per-epoch record of a run: ``metrics.jsonl`` and ``metrics.csv`` (rows as in ``docs/DESIGN.md``),
TensorBoard scalars when asked for and installed, and ``curves.png``.

Both files are rewritten whole and atomically after every epoch (a few hundred short rows), so a kill leaves
the previous version, never a cut line.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from pitvit.utils.io import write_bytes, write_text

from .curves import plot_runs, read_metrics

__all__ = ["MetricsLog", "FIELDS"]

log = logging.getLogger("pitvit.train")

FIELDS = ("epoch", "lr", "train_loss", "val_loss", "val_top1", "val_top5", "ema_loss", "ema_top1", "ema_top5",
          "epoch_time_s", "train_img_s", "skipped_images")


class MetricsLog:
    """Adds one row per epoch; a resumed run first drops the rows past its checkpoint (:meth:`truncate`).

    Args:
        run_dir: the run folder.
        tensorboard: also write TensorBoard scalars to ``run_dir/tensorboard`` (needs the ``tensorboard``
            package; without it a warning says so and the run goes on).
        plot: redraw ``curves.png`` after every row (needs matplotlib; without it a warning, then no plot).
    """

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = False, plot: bool = True) -> None:
        self.dir = Path(run_dir)
        self.jsonl, self.csv = self.dir / "metrics.jsonl", self.dir / "metrics.csv"
        self.plot = plot
        self._rows = read_metrics(self.jsonl) if self.jsonl.is_file() else []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("log.tensorboard is set but the tensorboard package is not installed "
                            "(pip install 'pitvit[tensorboard]'); skipping it")
            else:
                self.writer = SummaryWriter(str(self.dir / "tensorboard"))

    def rows(self) -> list[dict[str, Any]]:
        return list(self._rows)

    def truncate(self, last_epoch: int) -> None:
        """Keep the rows of epochs ``<= last_epoch`` (a resumed run rewrites the later ones)."""
        self._rows = [r for r in self._rows if r.get("epoch", 0) <= last_epoch]
        self._write()

    def append(self, row: dict[str, Any]) -> None:
        row = {k: row[k] for k in FIELDS if row.get(k) is not None}
        self._rows.append(row)
        self._write()
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        if self.plot:
            self._plot()

    def _write(self) -> None:
        write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in self._rows))
        present = [k for k in FIELDS if any(k in r for r in self._rows)]
        text = io.StringIO(newline="")
        w = csv.DictWriter(text, fieldnames=present)
        w.writeheader()
        for r in self._rows:
            w.writerow({k: r.get(k, "") for k in present})
        write_bytes(self.csv, text.getvalue().encode())  # csv's own line ends, untranslated

    def _plot(self) -> None:
        try:
            plot_runs([self.dir], self.dir / "curves.png")
        except ImportError:
            log.warning("log.plot is set but matplotlib cannot be imported (pip install 'pitvit[plot]'); "
                        "no curves.png")
            self.plot = False
        except Exception as e:  # noqa: BLE001 - a plot must never stop a training run
            log.warning("could not draw curves.png: %s", e)
            self.plot = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
