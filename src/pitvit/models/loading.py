"""Loading PiT weights into a model: read any source, bring it to the official layout, fit it, load it.

Fitting (``_fit``) is the one place for checkpoint surgery against a model: the position embedding is
resized to the model's input size, heads trained for another number of classes are dropped with a warning,
and a stem for other input channels is refused with a message that says what to do.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from pitvit.utils.errors import CheckpointError, preview_list

from .layouts import LAYOUT_TEXT, convert_state_dict, describe_model, describe_state_dict, detect_layout, inspect_state_dict
from .pit import PATCH_KEY, STEM_KEY, PiT, resize_pos_embed
from .serialization import read_stored

__all__ = ["Weights", "LoadResult", "read_weights", "load_weights", "check_values", "state_dict_differences",
           "describe_differences"]

Source = Union[str, "os.PathLike[str]", Mapping, "Weights"]

_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")
_RECORD_KEYS = ("format", "version", "epoch", "step_in_epoch", "best_metric", "metrics", "provenance", "digests",
                "safetensors_metadata")


@dataclass(repr=False)
class Weights:
    """A state dict in the official layout, with what it was read from.

    Attributes:
        state_dict: tensors with the official keys (Paddle transposes undone, timm pools renamed).
        layout: the layout it was stored in (one of ``LAYOUTS``).
        container: what held it (``"torch file"``, ``"safetensors"``, ``"paddle pickle"``,
            ``"pitvit checkpoint"``, ``"save_pretrained directory"``, ``"dict"``).
        source: the path, the ``hf-hub:`` reference, or ``"<dict>"``.
        ema: whether these are EMA weights.
        meta: ``model_name``, ``model_cfg``, ``pretrained_cfg``, ``class_names`` when the checkpoint had them.
        record: what the file says besides its weights: a training checkpoint's ``format``, ``epoch``,
            ``step_in_epoch``, ``best_metric``, ``metrics``, ``provenance``, ``digests``; a safetensors file's
            ``safetensors_metadata``; and ``entries``, the names of everything it holds.
    """

    state_dict: dict[str, torch.Tensor]
    layout: str
    container: str
    source: str = "<dict>"
    ema: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        """The architecture read off the shapes (see :func:`inspect_state_dict`)."""
        return inspect_state_dict(self.state_dict)

    def summary(self) -> str:
        ema = "EMA weights, " if self.ema else ""
        return (f"{self.container}, {LAYOUT_TEXT[self.layout]}, {ema}{len(self.state_dict)} tensors; "
                f"looks like {describe_state_dict(self.info)}")

    def __repr__(self) -> str:
        ema = ", EMA" if self.ema else ""
        return f"Weights({self.source!r}: {self.container}, {self.layout} layout{ema}, {len(self.state_dict)} tensors)"


def read_weights(source: Source, *, ema: bool = False) -> Weights:
    """Read PiT weights from any supported source and bring them to the official layout.

    Args:
        source: a checkpoint file, a ``save_pretrained`` directory, an ``hf-hub:`` reference, a state dict
            (possibly wrapped in ``{"model": ...}``/``{"state_dict": ...}``, possibly with ``module.``
            prefixes), or a :class:`Weights`. An in-memory dict of numpy arrays is taken to be in Paddle's layout.
        ema: take the EMA weights of a training checkpoint (an error if it has none).

    Raises:
        CheckpointError: unreadable, unsafe, damaged, not PiT weights, or no EMA weights when asked for.
    """
    if isinstance(source, Weights):
        if ema and not source.ema:
            raise CheckpointError(f"{source.source}: ema=True, but these weights are not EMA weights")
        return source
    stored = read_stored(source, ema=ema)
    obj = stored.checkpoint
    meta: dict[str, Any] = {}
    if obj.get("format") == "pitvit":
        meta = {k: obj[k] for k in ("model_name", "model_cfg", "pretrained_cfg", "class_names") if k in obj}
    elif "safetensors_metadata" in obj:
        meta = {k: v for k, v in obj["safetensors_metadata"].items() if k == "model_name"}
    tensors = stored.tensors
    layout = "paddle" if stored.from_numpy or stored.container == "paddle pickle" else detect_layout(tensors)
    record = {k: obj[k] for k in _RECORD_KEYS if k in obj}  # no tensors: a Weights stays the size of its weights
    record["entries"] = sorted(map(str, obj))
    weights = Weights(convert_state_dict(tensors, layout), layout, stored.container, stored.source, stored.ema, meta,
                      record)
    if not weights.info["is_pit"]:
        raise CheckpointError(f"{stored.source}: not a PiT checkpoint; its {len(tensors)} tensors have keys like "
                              f"{preview_list(list(tensors), 4)}")
    return weights


@dataclass(repr=False)
class LoadResult:
    """What :func:`load_weights` found and did.

    Attributes:
        weights: what was read (format, layout, source).
        notes: adaptations made (position embedding resized, head dropped).
        missing: model keys the checkpoint lacked (non-strict loads only; heads dropped on purpose excluded).
        unexpected: checkpoint keys the model lacks (non-strict loads only).
        mismatched: keys skipped for a shape difference (non-strict loads only).
    """

    weights: Weights
    notes: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        parts = [repr(self.weights)]
        for name in ("notes", "missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                parts.append(f"{name}=[{preview_list([str(i) for i in items], 3)}]")
        return f"LoadResult({', '.join(parts)})"


def fit_pos_embed(sd: dict[str, torch.Tensor], model: PiT) -> tuple[dict[str, torch.Tensor], str]:
    """Resize a checkpoint's position embedding to the model's grid (bicubic); returns the state dict and a
    note saying what changed (``""`` when nothing did). Also used by the timm adapter's checkpoint filter."""
    pos, model_pos = sd.get("pos_embed"), model.pos_embed
    if pos is None or pos.ndim != 4 or pos.shape[:2] != model_pos.shape[:2] or pos.shape == model_pos.shape:
        return sd, ""
    sd = {**sd, "pos_embed": resize_pos_embed(pos, tuple(model_pos.shape[-2:]))}
    return sd, f"position embedding resized {tuple(pos.shape[-2:])} -> {tuple(model_pos.shape[-2:])} (bicubic)"


def _fit(sd: dict[str, torch.Tensor], model: PiT, source: str) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Fit a checkpoint to the model: refuse another in_chans, resize the position embedding, drop heads
    trained for another number of classes. Returns the state dict, notes, and whether the heads were dropped."""
    target = model.state_dict()
    notes: list[str] = []
    ckpt_stem_ch, model_stem_ch = inspect_state_dict(sd)["stem_channels"], model.cfg.stem_channels
    if ckpt_stem_ch != model_stem_ch:
        raise CheckpointError(f"{source}: the checkpoint's convolutional stem has {ckpt_stem_ch} channel(s) (0: none), "
                              f"the model's {model_stem_ch}; build the model with stem_channels={ckpt_stem_ch}")
    first = STEM_KEY if model_stem_ch else PATCH_KEY
    stem, model_stem = sd.get(first), target[first]  # the first convolution: what reads the input channels
    if (stem is not None and stem.ndim == 4 and stem.shape[1] != model_stem.shape[1]
            and stem.shape[0] == model_stem.shape[0]):
        raise CheckpointError(
            f"{source}: the checkpoint's stem takes {stem.shape[1]} input channel(s), the model "
            f"{model_stem.shape[1]} (in_chans); build the model with in_chans={stem.shape[1]}, or adapt the "
            f"stem weights yourself")
    sd, note = fit_pos_embed(sd, model)
    if note:
        notes.append(note)

    # Heads: drop them when they are the only difference and differ in the number of classes only.
    body_ok = not any(state_dict_differences(sd, target, skip=_HEAD_KEYS))
    head = sd.get("head.weight")
    ckpt_classes = head.shape[0] if head is not None and head.ndim == 2 else 0
    heads_fit = not any(state_dict_differences(sd, target, only=_HEAD_KEYS))
    if body_ok and not heads_fit and ckpt_classes != model.num_classes and (
            head is None or head.shape[1] == model.embed_dim):
        sd = {k: v for k, v in sd.items() if k not in _HEAD_KEYS}
        msg = (f"{source}: the checkpoint's head has {ckpt_classes} classes, the model {model.num_classes}; "
               f"the head(s) were not loaded and keep their fresh initialization")
        warnings.warn(msg, stacklevel=3)
        notes.append(f"head(s) dropped ({ckpt_classes} -> {model.num_classes} classes)")
        return sd, notes, True
    return sd, notes, False


def state_dict_differences(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                           skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None
                           ) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and mis-shaped keys of ``sd`` against ``target`` (the one comparison of two state
    dicts; :func:`describe_differences` words it)."""
    keep = (lambda k: k in only) if only is not None else (lambda k: k not in skip)
    missing = [k for k in target if keep(k) and k not in sd]
    unexpected = [k for k in sd if keep(k) and k not in target]
    mismatched = [k for k in sd if keep(k) and k in target and sd[k].shape != target[k].shape]
    return missing, unexpected, mismatched


def describe_differences(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
                         skip: tuple[str, ...] = (), n: int = 5, owner: str = "model") -> list[str]:
    """One line per kind of difference between ``sd`` and ``target`` (``[]`` when they fit): missing,
    unexpected and mis-shaped keys, each list cut to ``n`` items; ``owner`` names ``target`` in the shapes."""
    missing, unexpected, mismatched = state_dict_differences(sd, target, skip=skip)
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): {preview_list(missing, n)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {preview_list(unexpected, n)}")
    if mismatched:
        shapes = [f"{k} {tuple(sd[k].shape)} vs {owner} {tuple(target[k].shape)}" for k in mismatched]
        lines.append(f"mis-shaped keys ({len(mismatched)}): {preview_list(shapes, min(n, 4))}")
    return lines




def check_values(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], source: str, *,
                 allow_nonfinite: bool = False) -> None:
    """Refuse tensors a model cannot take as they are: a dtype other than floating point where the model holds
    a float (int8 values of a quantized file without their scales would load as if they were weights), and
    NaN or infinite values (they predict NaN). Integer tensors the model itself holds as integers (BatchNorm's
    ``num_batches_tracked``) are fine. Keys the model lacks are left to the key check.

    Args:
        sd: what is about to be loaded.
        target: the model's state dict.
        source: the file, for messages.
        allow_nonfinite: let NaN and inf through (to look at a run that diverged).

    Raises:
        CheckpointError: naming the first offending key, its dtype or how many values are not finite.
    """
    for key, value in sd.items():
        want = target.get(key)
        if want is None or not isinstance(value, torch.Tensor):
            continue
        if want.is_floating_point() and not value.is_floating_point():
            kind = "a quantized file without its scales" if value.dtype in (torch.int8, torch.uint8) else "not weights"
            raise CheckpointError(f"{source}: {key} holds {str(value.dtype).replace('torch.', '')} values where the "
                                  f"model has {str(want.dtype).replace('torch.', '')} ({kind}); pitvit reads floating "
                                  f"point weights only: dequantize the file first")
        if not want.is_floating_point() and value.is_floating_point():
            raise CheckpointError(f"{source}: {key} holds {str(value.dtype).replace('torch.', '')} values where the "
                                  f"model has an integer buffer ({str(want.dtype).replace('torch.', '')})")
        if not allow_nonfinite and value.is_floating_point() and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(f"{source}: {key} holds {bad} non-finite value(s) (NaN or inf) of "
                                      f"{value.numel()}; the weights come from a run that diverged or a damaged file; "
                                      f"pass --allow-nonfinite (allow_nonfinite=True) to load them anyway")


def load_weights(model: PiT, source: Source, *, strict: bool = True, ema: bool = False,
                 allow_nonfinite: bool = False) -> LoadResult:
    """Load PiT weights from any supported format into ``model``.

    Detects the format (official, timm either layout, Paddle, safetensors, pitvit checkpoints and
    ``save_pretrained`` directories, ``hf-hub:`` references), undoes its layout, resizes the position
    embedding to the model's input size, and drops the head(s) with a warning when only the number of
    classes differs.

    Args:
        model: the PiT to fill.
        source: a path, a ``save_pretrained`` directory, an ``hf-hub:`` reference, an in-memory state dict,
            or :class:`Weights`.
        strict: refuse any missing, unexpected or mis-shaped key; otherwise load what fits and report the rest.
        ema: take the EMA weights of a training checkpoint.
        allow_nonfinite: load NaN and infinite values instead of refusing them (:func:`check_values`).

    Raises:
        CheckpointError: the checkpoint is unreadable, holds non-float or non-finite values
            (:func:`check_values`), or does not fit (the message names the variant the
            checkpoint looks like and the keys that differ).
    """
    weights = read_weights(source, ema=ema)
    sd, notes, dropped = _fit(dict(weights.state_dict), model, weights.source)
    target = model.state_dict()
    missing, unexpected, mismatched = state_dict_differences(sd, target, skip=_HEAD_KEYS if dropped else ())
    if strict and (missing or unexpected or mismatched):
        raise CheckpointError(_mismatch_message(weights, model, sd, target, _HEAD_KEYS if dropped else ()))
    bad = set(unexpected) | set(mismatched)
    check_values({k: v for k, v in sd.items() if k not in bad}, target, weights.source,
                 allow_nonfinite=allow_nonfinite)
    model.load_state_dict({k: v for k, v in sd.items() if k not in bad}, strict=False)
    class_names = weights.meta.get("class_names")
    if class_names and not dropped and len(class_names) == model.num_classes:
        model.class_names = [str(n) for n in class_names]
    return LoadResult(weights, notes, missing, unexpected, mismatched)


def _mismatch_message(weights: Weights, model: PiT, sd: Mapping, target: Mapping, skip: tuple[str, ...]) -> str:
    lines = [f"{weights.source} does not fit the model {describe_model(model)}: the checkpoint looks like "
             f"{describe_state_dict(weights.info)}."]
    if weights.info["variant"] and weights.info["variant"] != getattr(model, "model_name", None):
        lines.append(f"Build the model as create_model({weights.info['variant']!r}, ...) to load it.")
    return "\n".join(lines + describe_differences(sd, target, skip=skip))
