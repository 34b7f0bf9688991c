"""Training curves, where the tools are looked for: :mod:`pitvit.train.curves` draws them (training redraws
``curves.png`` after every epoch, and training does not import tools)."""
from pitvit.train.curves import plot_runs, read_metrics

__all__ = ["read_metrics", "plot_runs"]
