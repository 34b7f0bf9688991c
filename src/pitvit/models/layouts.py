"""PiT state-dict layouts: every key rename and transpose, detection, and reading the architecture off shapes.

The layouts (see the module docstring of ``pitvit.models.serialization`` for the containers):

* ``official``: the ``naver-ai/pit`` release (Heo et al., ICCV 2021), a bare state dict whose pooling layers
  are ``pools.{i}.conv`` and ``pools.{i}.fc``. This is also our models' own layout.
* ``timm``: timm >= 0.9 keeps pool ``i`` under ``transformers.{i+1}.pool``; ``timm_legacy`` (timm <= 0.6)
  under ``transformers.{i}.pool``. Nothing else differs.
* ``paddle``: PaddleViT and the Paddle reproduction store the official key names with Paddle ``Linear``
  weights ``[in, out]`` (the transpose of torch's).
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

from .pit import PATCH_KEY, STEM_KEY, PiT, grid_img_size
from .registry import get_model_config, list_models

__all__ = ["LAYOUTS", "LAYOUT_TEXT", "convert_state_dict", "detect_layout", "inspect_state_dict",
           "describe_state_dict", "describe_model"]

LAYOUTS = ("official", "timm", "timm_legacy", "paddle")
LAYOUT_TEXT = {"official": "official PiT layout (pools.{i})",
               "timm": "timm >= 0.9 layout (transformers.{i+1}.pool)",
               "timm_legacy": "timm <= 0.6 layout (transformers.{i}.pool)",
               "paddle": "Paddle layout (Linear weights [in, out])"}
_TIMM_POOL = re.compile(r"^transformers\.(\d+)\.pool\.")
_OFFICIAL_POOL = re.compile(r"^pools\.(\d+)\.")
_BLOCK = re.compile(r"^transformers\.(\d+)\.blocks\.(\d+)\.")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], src: str,
                       dst: str = "official") -> dict[str, torch.Tensor]:
    """Move a PiT state dict from one layout to another: all key renames and transposes live here.

    Args:
        state_dict: tensors in the ``src`` layout.
        src: one of :data:`LAYOUTS`; ``"timm"`` accepts either timm layout (told apart by the pool indices).
        dst: one of :data:`LAYOUTS`.

    Returns:
        A new dict in the ``dst`` layout (tensors are shared where nothing changes).
    """
    for name, value in (("src", src), ("dst", dst)):
        if value not in LAYOUTS:
            raise ValueError(f"unknown layout {name}={value!r}; valid: {', '.join(LAYOUTS)}")

    # In PiT every 2-D ".weight" is a Linear weight (convs are 4-D, norms 1-D), so the key and rank decide
    # what Paddle transposed; shape alone could not (attn.proj is square).
    def transpose_linears(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.t().contiguous() if k.endswith(".weight") and v.ndim == 2 else v for k, v in sd.items()}

    def renumber(sd: Mapping[str, torch.Tensor], pattern: re.Pattern, prefix: str, shift: int) -> dict:
        out = {}
        for k, v in sd.items():
            m = pattern.match(k)
            out[prefix.format(int(m.group(1)) + shift) + k[m.end():] if m else k] = v
        return out

    if src == "timm":
        src = detect_layout(state_dict)
    if src == "paddle":
        official = transpose_linears(state_dict)
    elif src == "timm":
        official = renumber(state_dict, _TIMM_POOL, "pools.{}.", -1)
    elif src == "timm_legacy":
        official = renumber(state_dict, _TIMM_POOL, "pools.{}.", 0)
    else:
        official = dict(state_dict)

    if dst == "paddle":
        return transpose_linears(official)
    if dst == "timm":
        return renumber(official, _OFFICIAL_POOL, "transformers.{}.pool.", 1)
    if dst == "timm_legacy":
        return renumber(official, _OFFICIAL_POOL, "transformers.{}.pool.", 0)
    return official


def detect_layout(state_dict: Mapping[str, Any]) -> str:
    """``"timm"``, ``"timm_legacy"`` or ``"official"``, from the pool keys (Paddle is told by its container)."""
    pools = {int(m.group(1)) for m in map(_TIMM_POOL.match, state_dict) if m}
    if not pools:
        return "official"
    return "timm_legacy" if 0 in pools else "timm"


def inspect_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the architecture off the shapes of an official-layout state dict.

    Returns:
        ``{"is_pit", "widths", "depth", "distilled", "num_classes", "patch_size", "in_chans", "stem_channels",
        "grid", "variant", "img_size"}``; ``variant`` is the registered name with the same widths, depths, stem and
        distillation (``None`` when none matches), ``img_size`` the input size the position embedding fits
        for that variant's stride.
    """
    def shape(key: str) -> tuple[int, ...] | None:
        v = state_dict.get(key)
        return tuple(v.shape) if isinstance(v, torch.Tensor) else None

    depth: dict[int, set[int]] = {}
    for k in state_dict:
        m = _BLOCK.match(k)
        if m:
            depth.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    stages = sorted(depth)
    widths = tuple((shape(f"transformers.{s}.blocks.0.norm1.weight") or (0,))[0] for s in stages)
    stem, pos, cls, head = (shape(PATCH_KEY), shape("pos_embed"), shape("cls_token"),
                            shape("head.weight"))
    conv_stem = shape(STEM_KEY)  # the optional convolutional stem before the patches
    first = conv_stem if conv_stem and len(conv_stem) == 4 else stem
    info: dict[str, Any] = {
        "is_pit": bool(stages) and stem is not None and len(stem) == 4,
        "widths": widths,
        "depth": tuple(len(depth[s]) for s in stages),
        "distilled": "head_dist.weight" in state_dict or (cls is not None and len(cls) == 3 and cls[1] == 2),
        "num_classes": head[0] if head and len(head) == 2 else 0,
        "patch_size": stem[-1] if stem and len(stem) == 4 else None,
        "in_chans": first[1] if first and len(first) == 4 else None,
        "stem_channels": conv_stem[0] if conv_stem and len(conv_stem) == 4 else 0,
        "grid": pos[-2:] if pos and len(pos) == 4 else None,
        "variant": None,
        "img_size": None,
    }
    if not info["is_pit"]:
        return info
    for name in list_models():
        cfg = get_model_config(name)
        if (cfg.widths, cfg.depth, cfg.distilled, cfg.patch_size, cfg.stem_channels) == (
                widths, info["depth"], info["distilled"], info["patch_size"], info["stem_channels"]):
            info["variant"] = name
            if info["grid"]:
                size = grid_img_size(info["grid"], cfg.patch_size, cfg.stride)
                info["img_size"] = size[0] if size[0] == size[1] else size
            break
    return info


def describe_state_dict(info: Mapping[str, Any]) -> str:
    """One phrase for an :func:`inspect_state_dict` result: ``pit_ti (widths 64/128/256, ...)``."""
    if not info["is_pit"]:
        return "no PiT at all"
    name = info["variant"] or "an unregistered PiT"
    parts = ["widths " + "/".join(map(str, info["widths"])), "depth " + "/".join(map(str, info["depth"]))]
    if info["distilled"]:
        parts.append("distilled")
    parts.append(f"{info['num_classes']} classes")
    if info["grid"]:
        grid = "x".join(map(str, info["grid"]))
        size = info["img_size"]
        parts.append(f"{grid} tokens" + (f" = {size if isinstance(size, int) else 'x'.join(map(str, size))} px"
                                         if size else ""))
    parts.append(f"{info['in_chans']} input channels")
    if info.get("stem_channels"):
        parts.append(f"a {info['stem_channels']}-channel convolutional stem")
    return f"{name} ({', '.join(parts)})"


def describe_model(model: PiT) -> str:
    """The same phrase for a built model."""
    c = model.cfg
    name = getattr(model, "model_name", "") or "PiT"
    return (f"{name} (widths {'/'.join(map(str, c.widths))}, depth {'/'.join(map(str, c.depth))}"
            f"{', distilled' if c.distilled else ''}, {model.num_classes} classes, "
            f"{'x'.join(map(str, c.img_size))} px, {c.in_chans} input channels)")
