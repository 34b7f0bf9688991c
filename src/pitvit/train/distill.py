"""Losses of the recipe, and knowledge distillation through the distillation token (DeiT).

Touvron et al., "Training data-efficient image transformers & distillation through attention",
ICML 2021 (arXiv 2012.12877). A distilled PiT in distilled-training mode returns ``(cls_logits,
dist_logits)``: the class head learns from the labels, the distillation head from a frozen teacher that sees
the same augmented batch. Hard distillation: cross-entropy against the teacher's argmax. Soft: KL divergence
between the tempered distributions, times ``tau**2``. The two terms are weighted ``1 - alpha`` and ``alpha``.

Every loss here is called as ``loss_fn(outputs, targets, images)``; plain losses ignore the images.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torch import nn

from pitvit.utils.errors import CheckpointError, ConfigError
from pitvit.utils.names import DISTILL_MODES
from pitvit.utils.precision import autocast

__all__ = ["ClassificationLoss", "DistillationLoss", "build_teacher"]

log = logging.getLogger("pitvit.train")


class ClassificationLoss(nn.Module):
    """Cross-entropy against hard labels (with optional label smoothing) or soft (mixed) targets.

    A ``(cls, dist)`` pair of outputs is scored on the class head only.
    """

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.soft = SoftTargetCrossEntropy()

    def forward(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(outputs, (tuple, list)):
            outputs = outputs[0]
        outputs = outputs.float()
        if targets.ndim == outputs.ndim:  # soft targets from mixup/cutmix, smoothing already applied
            return self.soft(outputs, targets)
        return F.cross_entropy(outputs, targets, label_smoothing=self.smoothing)


class DistillationLoss(nn.Module):
    """DeiT's distillation loss.

    Args:
        base: the loss on the class head (``ClassificationLoss``).
        teacher: a frozen model in eval mode, or ``None`` with ``mode="none"``.
        mode: ``none`` (base loss only), ``hard`` or ``soft``.
        alpha: weight of the distillation term.
        tau: temperature of the soft term.
        amp_dtype: autocast dtype for the teacher's forward pass, or ``None``.
    """

    def __init__(self, base: nn.Module, teacher: nn.Module | None, mode: str = "hard", alpha: float = 0.5,
                 tau: float = 1.0, amp_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if mode not in DISTILL_MODES:
            raise ValueError(f"distillation mode must be none, hard or soft; got {mode!r}")
        if mode != "none" and teacher is None:
            raise ValueError(f"{mode} distillation needs a teacher")
        self.base = base
        # Kept out of the module tree: the teacher is not trained, not saved, not wrapped by DDP.
        self.__dict__["teacher"] = teacher
        self.mode, self.alpha, self.tau, self.amp_dtype = mode, alpha, tau, amp_dtype

    def forward(self, outputs: Any, targets: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.base(outputs, targets)
        if not isinstance(outputs, (tuple, list)):
            raise ValueError("distillation needs (cls_logits, dist_logits): use a *_distilled model with "
                             "model.set_distilled_training(True)")
        cls_out, dist_out = outputs
        base_loss = self.base(cls_out, targets)
        with torch.no_grad(), autocast(images.device, self.amp_dtype):
            teacher_out = self.teacher(images)
        if isinstance(teacher_out, (tuple, list)):
            teacher_out = teacher_out[0]
        teacher_out, dist_out = teacher_out.float(), dist_out.float()
        if self.mode == "soft":
            t = self.tau
            kd = F.kl_div(F.log_softmax(dist_out / t, dim=1), F.log_softmax(teacher_out / t, dim=1),
                          reduction="sum", log_target=True) * (t * t) / dist_out.numel()
        else:
            kd = F.cross_entropy(dist_out, teacher_out.argmax(dim=1))
        return base_loss * (1 - self.alpha) + kd * self.alpha


def build_teacher(spec: str, num_classes: int, weights: str = "", device: torch.device | str = "cpu") -> nn.Module:
    """A frozen teacher in eval mode.

    Args:
        spec: a pitvit checkpoint or ``save_pretrained`` folder, or a timm or torchvision model name.
        num_classes: the student's classes (the teacher must predict the same ones).
        weights: a state-dict checkpoint for a teacher given by name (nothing is downloaded).
        device: where the teacher runs.

    Raises:
        ConfigError: ``spec`` is neither a file nor a model name, ``weights`` does not exist, or the teacher
            predicts another number of classes.
        CheckpointError: a checkpoint is unreadable, unsafe, damaged, or its weights do not fit the teacher.
    """
    model: nn.Module
    if os.path.exists(spec):
        from pitvit.models import model_from_checkpoint

        model = model_from_checkpoint(spec, ema=False)
    else:
        import timm

        if timm.is_model(spec):
            model = timm.create_model(spec, pretrained=False, num_classes=num_classes)
        else:
            import torchvision

            if spec not in torchvision.models.list_models():
                raise ConfigError(f"distill.teacher {spec!r} is neither a file nor a timm or torchvision model name")
            model = torchvision.models.get_model(spec, weights=None, num_classes=num_classes)
        if weights:
            _load_teacher_weights(model, spec, weights)
        else:
            log.warning("teacher %s has random weights (nothing is downloaded): pass distill.teacher_weights", spec)
    out = getattr(model, "num_classes", None)
    if out is not None and out != num_classes:
        raise ConfigError(f"the teacher {spec} predicts {out} classes, the student {num_classes}; distil from a "
                          f"teacher trained on the student's classes")
    model.eval().requires_grad_(False)
    return model.to(device)


def _load_teacher_weights(model: nn.Module, spec: str, weights: str) -> None:
    from pitvit.models import describe_differences, read_state_dict
    from pitvit.models.loading import check_values

    if not os.path.exists(weights):
        raise ConfigError(f"distill.teacher_weights: {weights} does not exist")
    state = read_state_dict(weights)
    check_values(state, model.state_dict(), f"distill.teacher_weights: {weights}")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # torch lists every missing and unexpected key, over many lines
        detail = "; ".join(describe_differences(state, model.state_dict(), n=3, owner="teacher"))
        raise CheckpointError(f"distill.teacher_weights: {weights} does not hold {spec}'s weights ({detail}); give "
                              f"a state dict of that model") from e
