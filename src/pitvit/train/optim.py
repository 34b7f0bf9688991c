"""Optimizers of the PiT recipe: AdamW (DeiT's) and AdamP (what the PiT authors used), with the weight-decay
exclusions and the linear learning-rate scaling rule (``lr = base_lr * global_batch / 512``).

AdamP: Heo et al., "AdamP: Slowing Down the Slowdown for Momentum Optimizers on Scale-invariant Weights",
ICLR 2021 (arXiv 2006.08217). When a weight's gradient is nearly orthogonal to the weight (a
scale-invariant weight, e.g. one followed by a normalization), the radial part of the update only inflates
the weight norm; AdamP removes it and shrinks weight decay for that weight. The PiT authors trained with
DeiT's ``--opt adamp``, for which timm 0.3.x's optimizer factory built ``AdamP(wd_ratio=0.01, nesterov=True)``
(``delta`` 0.1); the recipes' ``optim.wd_ratio``, ``optim.nesterov`` and ``optim.delta`` say the same.
"""
from __future__ import annotations

from typing import Iterable

import torch
from timm.optim import AdamP as TimmAdamP
from torch import nn

from pitvit.utils.names import OPTIMIZERS

__all__ = ["AdamP", "param_groups", "scaled_lr", "build_optimizer"]


def scaled_lr(base_lr: float, global_batch: int, base_batch: int = 512) -> float:
    """The linear scaling rule; ``base_batch`` of 0 leaves ``base_lr`` unchanged."""
    return base_lr * global_batch / base_batch if base_batch else base_lr


def param_groups(model: nn.Module, weight_decay: float, exclude: bool = True) -> list[dict]:
    """Two groups: decayed weights, and biases / 1-d params (norms) / ``model.no_weight_decay()`` undecayed.

    With ``exclude=False`` every parameter is decayed (what the Paddle reproduction did).
    """
    skip = set(model.no_weight_decay()) if exclude and hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if exclude and (p.ndim <= 1 or name.endswith(".bias") or name in skip):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class AdamP(TimmAdamP):
    """timm's AdamP, which is the authors' code (clovaai/AdamP) and what DeiT's ``--opt adamp`` ran.

    Args:
        params: parameters or parameter groups.
        lr: learning rate.
        betas: moving-average coefficients of the gradient and its square.
        eps: added to the denominator and to the norms of the projection.
        weight_decay: decoupled weight decay (multiplied by ``wd_ratio`` on projected weights).
        delta: a weight counts as scale-invariant when ``|cos(grad, weight)| < delta / sqrt(dim)``.
        wd_ratio: weight-decay factor for scale-invariant weights.
        nesterov: Nesterov momentum.

    The defaults are the paper's; the PiT run used ``wd_ratio=0.01, nesterov=True`` (see the module docstring).
    Own code only in :meth:`load_state_dict`: checkpoints of pitvit 0.1's own AdamP count ``step`` in a tensor,
    where timm's AdamP needs a number.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, delta: float = 0.1, wd_ratio: float = 0.1,
                 nesterov: bool = False) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid AdamP settings lr={lr} eps={eps} betas={betas}")
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                         wd_ratio=wd_ratio, nesterov=nesterov)

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if torch.is_tensor(state.get("step")):
                state["step"] = int(state["step"].item())


def build_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, exclude_wd: bool = True, *,
                    wd_ratio: float = 0.01, nesterov: bool = True, delta: float = 0.1) -> torch.optim.Optimizer:
    """AdamW or AdamP over :func:`param_groups` (``lr`` is the already scaled learning rate).

    ``wd_ratio``, ``nesterov`` and ``delta`` are AdamP's; their defaults are what timm 0.3.x built for DeiT's
    ``--opt adamp`` (the paper's run), not the :class:`AdamP` class defaults.
    """
    groups = param_groups(model, weight_decay, exclude_wd)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    if name == "adamp":
        return AdamP(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, delta=delta,
                     wd_ratio=wd_ratio, nesterov=nesterov)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")
