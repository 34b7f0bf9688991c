"""Training PiT: the configuration, the engine, ``fit``, checkpoints, EMA, optimizers, distillation and the
record of a run (metrics and curves).

The recipe is DeiT's (Touvron et al., ICML 2021) as the PiT paper used it (Heo et al., ICCV 2021,
arXiv 2103.16302); see ``configs/`` for the variants' recipes.
"""
from pitvit.utils.errors import NonFiniteLossError, TrainingError

from .config import Config, config_from_dict, config_to_dict
from .recipes import apply_overrides, load_config, save_config
from .curves import plot_runs, read_metrics
from .distill import ClassificationLoss, DistillationLoss, build_teacher
from .ema import ModelEma
from .engine import TrainStep, evaluate, train_one_epoch
from .optim import AdamP, build_optimizer, param_groups, scaled_lr
from .sched import LRSchedule

__all__ = ["Config", "load_config", "apply_overrides", "config_from_dict", "config_to_dict", "save_config",
           "TrainStep", "train_one_epoch", "evaluate", "NonFiniteLossError", "TrainingError", "ModelEma", "AdamP",
           "build_optimizer", "param_groups", "scaled_lr", "LRSchedule", "ClassificationLoss", "DistillationLoss",
           "build_teacher", "read_metrics", "plot_runs", "fit"]


def __getattr__(name: str):
    # fit pulls in the data layer; import it on first use
    if name == "fit":
        from .runner import fit

        return fit
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
