"""PiT weights in every published format: read them safely, fit them to a model, write them back.

The layouts (see the reference notes, FACTS §2):

* ``official``: the ``naver-ai/pit`` release (Heo et al., ICCV 2021), a bare state dict whose pooling layers
  are ``pools.{i}.conv`` and ``pools.{i}.fc``. This is also our models' own layout.
* ``timm``: timm >= 0.9 keeps pool ``i`` under ``transformers.{i+1}.pool``; ``timm_legacy`` (timm <= 0.6)
  under ``transformers.{i}.pool``. Nothing else differs.
* ``paddle``: PaddleViT and the Paddle reproduction save ``.pdparams``, a pickled dict of numpy arrays with
  the official key names, Paddle ``Linear`` weights stored ``[in, out]`` (the transpose of torch's), and a
  ``StructuredToParameterName@@`` name table. Their training checkpoints nest the weights under ``model``
  and ``model_ema``, each tensor pickled as a ``(name, array)`` tuple.

Containers: torch files (``.pth``/``.pt``), safetensors, Paddle pickles, pitvit training checkpoints
(``docs/DESIGN.md``) and ``save_pretrained`` directories (``config.json`` + ``model.safetensors``).

Nothing here runs code from a file: torch files load with ``weights_only=True`` and Paddle pickles go through
an unpickler that can build numpy arrays and plain containers and nothing else. Paddle is never needed.
"""
from __future__ import annotations

import argparse
import codecs
import json
import os
import pickle
import re
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import nn

from .pit import PiT, PiTConfig, resize_pos_embed
from .registry import PretrainedCfg, create_model, get_model_config, get_pretrained_cfg, is_model, list_models

__all__ = ["CheckpointError", "Weights", "LoadResult", "LAYOUTS", "SAVE_FORMATS", "convert_state_dict",
           "inspect_state_dict", "read_weights", "read_checkpoint", "load_weights", "save_weights",
           "save_pretrained", "model_from_checkpoint"]

Source = Union[str, "os.PathLike[str]", Mapping, "Weights"]

LAYOUTS = ("official", "timm", "timm_legacy", "paddle")
SAVE_FORMATS = ("safetensors", "official", "timm", "timm_legacy", "paddle")
PADDLE_SUFFIXES = (".pdparams", ".pdopt", ".pdema")
NAME_TABLE_KEY = "StructuredToParameterName@@"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_LAYOUT_TEXT = {"official": "official PiT layout (pools.{i})",
                "timm": "timm >= 0.9 layout (transformers.{i+1}.pool)",
                "timm_legacy": "timm <= 0.6 layout (transformers.{i}.pool)",
                "paddle": "Paddle layout (Linear weights [in, out])"}
_SUFFIX_FORMAT = {".safetensors": "safetensors", ".pth": "official", ".pt": "official", ".pdparams": "paddle"}
_TIMM_POOL = re.compile(r"^transformers\.(\d+)\.pool\.")
_OFFICIAL_POOL = re.compile(r"^pools\.(\d+)\.")
_BLOCK = re.compile(r"^transformers\.(\d+)\.blocks\.(\d+)\.")
# The first bytes of a legacy (non-zip) torch.save file: protocol 2, then the pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, or that does not fit the model it is loaded into."""


# ---------------------------------------------------------------------------------------------- conversion
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
        pools = {int(m.group(1)) for m in map(_TIMM_POOL.match, state_dict) if m}
        src = "timm_legacy" if 0 in pools else "timm"
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


def _detect_layout(state_dict: Mapping[str, Any]) -> str:
    pools = {int(m.group(1)) for m in map(_TIMM_POOL.match, state_dict) if m}
    if not pools:
        return "official"
    return "timm_legacy" if 0 in pools else "timm"


# ---------------------------------------------------------------------------------------------- inspection
def inspect_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Read the architecture off the shapes of an official-layout state dict.

    Returns:
        ``{"is_pit", "widths", "depth", "distilled", "num_classes", "patch_size", "in_chans", "grid",
        "variant", "img_size"}``; ``variant`` is the registered name with the same widths, depths, stem and
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
    stem, pos, cls, head = (shape("patch_embed.conv.weight"), shape("pos_embed"), shape("cls_token"),
                            shape("head.weight"))
    info: dict[str, Any] = {
        "is_pit": bool(stages) and stem is not None and len(stem) == 4,
        "widths": widths,
        "depth": tuple(len(depth[s]) for s in stages),
        "distilled": "head_dist.weight" in state_dict or (cls is not None and len(cls) == 3 and cls[1] == 2),
        "num_classes": head[0] if head and len(head) == 2 else 0,
        "patch_size": stem[-1] if stem and len(stem) == 4 else None,
        "in_chans": stem[1] if stem and len(stem) == 4 else None,
        "grid": pos[-2:] if pos and len(pos) == 4 else None,
        "variant": None,
        "img_size": None,
    }
    if not info["is_pit"]:
        return info
    for name in list_models():
        cfg = get_model_config(name)
        if (cfg.widths, cfg.depth, cfg.distilled, cfg.patch_size) == (
                widths, info["depth"], info["distilled"], info["patch_size"]):
            info["variant"] = name
            if info["grid"]:
                size = tuple((g - 1) * cfg.stride + cfg.patch_size for g in info["grid"])
                info["img_size"] = size[0] if size[0] == size[1] else size
            break
    return info


def _describe(info: Mapping[str, Any]) -> str:
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
    return f"{name} ({', '.join(parts)})"


def _describe_model(model: PiT) -> str:
    c = model.cfg
    name = getattr(model, "model_name", "") or "PiT"
    return (f"{name} (widths {'/'.join(map(str, c.widths))}, depth {'/'.join(map(str, c.depth))}"
            f"{', distilled' if c.distilled else ''}, {model.num_classes} classes, "
            f"{'x'.join(map(str, c.img_size))} px, {c.in_chans} input channels)")


# ---------------------------------------------------------------------------------------------- safe reading
def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol-2 pickles store bytes as codecs.encode(text, "latin1"); nothing else is let through.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    # Take numpy's reconstructors from numpy itself, so both numpy.core (1.x) and numpy._core (2.x) names map
    # to the functions this numpy has, without importing either module path.
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float32(0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): OrderedDict,
        ("builtins", "tuple"): tuple,  # Paddle pickles a nested tensor as tuple(((name, array),))
        ("_codecs", "encode"): _latin1_encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{pkg}.multiarray", "scalar")] = scalar
        allowed[(f"{pkg}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _NumpyUnpickler(pickle.Unpickler):
    """Builds numpy arrays, numbers, strings and containers; refuses every other import."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: numpy arrays pickled by Python 2
        self.source = source
        self.allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise CheckpointError(
                f"{self.source}: the file wants to import {module}.{name}, which a weights file never needs; "
                f"refused, nothing from it was run (only numpy arrays and plain containers are read)") from None


def _read_pickle(path: Path) -> Any:
    with open(path, "rb") as f:
        try:
            return _NumpyUnpickler(f, str(path)).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"{path}: not a readable pickle of arrays, the file may be truncated or not a "
                                  f"checkpoint ({type(e).__name__}: {e})") from None


def _read_torch(path: Path) -> Any:
    # DeiT and timm's train.py store their argparse options beside the weights; a Namespace is plain data.
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if allow is None:
            return torch.load(path, map_location="cpu", weights_only=True)
        with allow([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True), the file holds more than "
                              f"tensors and plain data ({first})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file, it may be truncated or not a checkpoint "
                              f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for every kind of bad file
        raise CheckpointError(f"{path}: not a readable safetensors file, it may be truncated "
                              f"({type(e).__name__}: {e})") from None


def _sniff(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PADDLE_SUFFIXES:
        return "paddle pickle"
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    if head[:1] == b"\x80":
        return "paddle pickle"  # a plain pickle that is not torch's: numpy arrays, as Paddle writes them
    raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch, safetensors nor pickle file; it starts "
                          f"with {head[:8]!r})")


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint file or ``save_pretrained`` directory as plain data, never running code from it.

    Torch files load with ``weights_only=True`` on the CPU; Paddle pickles keep their numpy arrays; a
    ``save_pretrained`` directory reads as a pitvit checkpoint (``config.json`` fields plus ``state_dict``).

    Raises:
        FileNotFoundError: nothing at ``path``.
        CheckpointError: the file is truncated, not a checkpoint, or wants to import code.
    """
    path = Path(path)
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not weights_path.is_file():
            raise CheckpointError(f"{path}: a directory without {WEIGHTS_NAME}, not a save_pretrained directory")
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        state_dict, _ = _read_safetensors(weights_path)
        return {**config, "format": "pitvit", "state_dict": state_dict}
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    kind = _sniff(path)
    if kind == "safetensors":
        state_dict, meta = _read_safetensors(path)
        return {"state_dict": state_dict, "safetensors_metadata": meta}
    obj = _read_pickle(path) if kind == "paddle pickle" else _read_torch(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(obj).__name__}, not a dict of weights)")
    return dict(obj)


# ---------------------------------------------------------------------------------------------- unwrapping
@dataclass
class Weights:
    """A state dict in the official layout, with what it was read from.

    Attributes:
        state_dict: tensors with the official keys (Paddle transposes undone, timm pools renamed).
        layout: the layout it was stored in (one of :data:`LAYOUTS`).
        container: what held it (``"torch file"``, ``"safetensors"``, ``"paddle pickle"``,
            ``"pitvit checkpoint"``, ``"save_pretrained directory"``, ``"dict"``).
        source: the path, or ``"<dict>"``.
        ema: whether these are EMA weights.
        meta: ``model_name``, ``model_cfg``, ``pretrained_cfg``, ``class_names`` when the checkpoint had them.
    """

    state_dict: dict[str, torch.Tensor]
    layout: str
    container: str
    source: str = "<dict>"
    ema: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def info(self) -> dict[str, Any]:
        """The architecture read off the shapes (see :func:`inspect_state_dict`)."""
        return inspect_state_dict(self.state_dict)

    def summary(self) -> str:
        ema = "EMA weights, " if self.ema else ""
        return (f"{self.container}, {_LAYOUT_TEXT[self.layout]}, {ema}{len(self.state_dict)} tensors; "
                f"looks like {_describe(self.info)}")


# Wrappers seen in the wild, with where each keeps its EMA weights: pitvit and DeiT/PaddleViT/timm-train.
_WRAPPERS = (("state_dict", "ema_state_dict"), ("model", "model_ema"), ("state_dict", "state_dict_ema"))


def _unwrap(obj: Mapping, ema: bool, source: str) -> tuple[Mapping, bool]:
    """Find the weights inside a training checkpoint; returns them and whether they are EMA weights."""
    for _ in range(3):  # a wrapper may sit inside another ({"state_dict": {"model": ...}})
        if ema:
            for _, ema_key in _WRAPPERS:
                if isinstance(obj.get(ema_key), Mapping):
                    return obj[ema_key], True
        inner = next((obj[k] for k, _ in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if ema:
        raise CheckpointError(f"{source}: ema=True, but the checkpoint holds no EMA weights "
                              f"(looked for {', '.join(sorted({k for _, k in _WRAPPERS}))})")
    return obj, False


def _strip_prefixes(sd: dict[str, Any]) -> dict[str, Any]:
    # DDP wraps in "module.", torch.compile in "_orig_mod."; either may wrap the other.
    changed = True
    while changed and sd:
        changed = False
        for prefix in ("module.", "_orig_mod."):
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def _as_tensors(obj: Mapping, source: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Keep the tensor entries; numpy arrays (also Paddle's (name, array) tuples) become tensors.

    Returns the tensors and whether any came from numpy, i.e. were written by Paddle.
    """
    out: dict[str, torch.Tensor] = {}
    from_numpy = False
    for k, v in obj.items():
        if k == NAME_TABLE_KEY or not isinstance(k, str):
            continue
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], np.ndarray):
            v = v[1]
        if isinstance(v, np.ndarray):
            if v.dtype == object:
                raise CheckpointError(f"{source}: entry {k!r} is an array of Python objects, not weights")
            v, from_numpy = torch.from_numpy(np.ascontiguousarray(v)), True
        if isinstance(v, torch.Tensor):
            out[k] = v
    return out, from_numpy


def read_weights(source: Source, *, ema: bool = False) -> Weights:
    """Read PiT weights from any supported source and bring them to the official layout.

    Args:
        source: a checkpoint file, a ``save_pretrained`` directory, a state dict (possibly wrapped in
            ``{"model": ...}``/``{"state_dict": ...}``, possibly with ``module.`` prefixes), or a
            :class:`Weights`. An in-memory dict of numpy arrays is taken to be in Paddle's layout.
        ema: take the EMA weights of a training checkpoint (an error if it has none).

    Raises:
        CheckpointError: unreadable, unsafe, not PiT weights, or no EMA weights when asked for.
    """
    if isinstance(source, Weights):
        if ema and not source.ema:
            raise CheckpointError(f"{source.source}: ema=True, but these weights are not EMA weights")
        return source
    if isinstance(source, Mapping):
        obj, name, container = source, "<dict>", "dict"
    else:
        path = Path(source)
        obj, name = read_checkpoint(path), str(path)
        container = ("save_pretrained directory" if path.is_dir() else
                     {"safetensors": "safetensors", "paddle pickle": "paddle pickle"}.get(_sniff(path), "torch file"))
    meta: dict[str, Any] = {}
    if obj.get("format") == "pitvit":
        if container not in ("save_pretrained directory", "safetensors"):
            container = "pitvit checkpoint"
        meta = {k: obj[k] for k in ("model_name", "model_cfg", "pretrained_cfg", "class_names") if k in obj}
    elif "safetensors_metadata" in obj:
        meta = {k: v for k, v in obj["safetensors_metadata"].items() if k == "model_name"}
    raw, is_ema = _unwrap(obj, ema, name)
    tensors, from_numpy = _as_tensors(raw, name)
    tensors = _strip_prefixes(tensors)
    if not tensors:
        raise CheckpointError(f"{name}: not a checkpoint, it holds no tensors "
                              f"(its entries: {_preview(sorted(map(str, raw)))})")
    layout = "paddle" if from_numpy or container == "paddle pickle" else _detect_layout(tensors)
    weights = Weights(convert_state_dict(tensors, layout), layout, container, name, is_ema, meta)
    if not weights.info["is_pit"]:
        raise CheckpointError(f"{name}: not a PiT checkpoint; its {len(tensors)} tensors have keys like "
                              f"{_preview(list(tensors), 4)}")
    return weights


def _preview(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


# ---------------------------------------------------------------------------------------------- loading
@dataclass
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


def _fit(sd: dict[str, torch.Tensor], model: PiT, source: str) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """Fit a checkpoint to the model: refuse another in_chans, resize the position embedding, drop heads
    trained for another number of classes. Returns the state dict, notes, and whether the heads were dropped."""
    target = model.state_dict()
    notes: list[str] = []
    stem, model_stem = sd.get("patch_embed.conv.weight"), target["patch_embed.conv.weight"]
    if (stem is not None and stem.ndim == 4 and stem.shape[1] != model_stem.shape[1]
            and stem.shape[0] == model_stem.shape[0]):
        raise CheckpointError(
            f"{source}: the checkpoint's stem takes {stem.shape[1]} input channel(s), the model "
            f"{model_stem.shape[1]} (in_chans); build the model with in_chans={stem.shape[1]}, or adapt the "
            f"stem weights yourself")
    pos, model_pos = sd.get("pos_embed"), target["pos_embed"]
    if pos is not None and pos.ndim == 4 and pos.shape[:2] == model_pos.shape[:2] and pos.shape != model_pos.shape:
        sd = {**sd, "pos_embed": resize_pos_embed(pos, tuple(model_pos.shape[-2:]))}
        notes.append(f"position embedding resized {tuple(pos.shape[-2:])} -> {tuple(model_pos.shape[-2:])} "
                     f"(bicubic)")

    # Heads: drop them when they are the only difference and differ in the number of classes only.
    body_ok = not any(_compare(sd, target, skip=_HEAD_KEYS))
    head = sd.get("head.weight")
    ckpt_classes = head.shape[0] if head is not None and head.ndim == 2 else 0
    heads_fit = not any(_compare(sd, target, only=_HEAD_KEYS))
    if body_ok and not heads_fit and ckpt_classes != model.num_classes and (
            head is None or head.shape[1] == model.embed_dim):
        sd = {k: v for k, v in sd.items() if k not in _HEAD_KEYS}
        msg = (f"{source}: the checkpoint's head has {ckpt_classes} classes, the model {model.num_classes}; "
               f"the head(s) were not loaded and keep their fresh initialization")
        warnings.warn(msg, stacklevel=3)
        notes.append(f"head(s) dropped ({ckpt_classes} -> {model.num_classes} classes)")
        return sd, notes, True
    return sd, notes, False


def _compare(sd: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], *,
             skip: tuple[str, ...] = (), only: tuple[str, ...] | None = None) -> tuple[list, list, list]:
    """Missing, unexpected and mis-shaped keys of ``sd`` against ``target``."""
    keep = (lambda k: k in only) if only is not None else (lambda k: k not in skip)
    missing = [k for k in target if keep(k) and k not in sd]
    unexpected = [k for k in sd if keep(k) and k not in target]
    mismatched = [k for k in sd if keep(k) and k in target and sd[k].shape != target[k].shape]
    return missing, unexpected, mismatched


def load_weights(model: PiT, source: Source, *, strict: bool = True, ema: bool = False) -> LoadResult:
    """Load PiT weights from any supported format into ``model``.

    Detects the format (official, timm either layout, Paddle, safetensors, pitvit checkpoints and
    ``save_pretrained`` directories), undoes its layout, resizes the position embedding to the model's input
    size, and drops the head(s) with a warning when only the number of classes differs.

    Args:
        model: the PiT to fill.
        source: a path, a ``save_pretrained`` directory, an in-memory state dict, or :class:`Weights`.
        strict: refuse any missing, unexpected or mis-shaped key; otherwise load what fits and report the rest.
        ema: take the EMA weights of a training checkpoint.

    Raises:
        CheckpointError: the checkpoint is unreadable, or does not fit (the message names the variant the
            checkpoint looks like and the keys that differ).
    """
    weights = read_weights(source, ema=ema)
    sd, notes, dropped = _fit(dict(weights.state_dict), model, weights.source)
    target = model.state_dict()
    missing, unexpected, mismatched = _compare(sd, target, skip=_HEAD_KEYS if dropped else ())
    if strict and (missing or unexpected or mismatched):
        raise CheckpointError(_mismatch_message(weights, model, sd, target, missing, unexpected, mismatched))
    bad = set(unexpected) | set(mismatched)
    model.load_state_dict({k: v for k, v in sd.items() if k not in bad}, strict=False)
    class_names = weights.meta.get("class_names")
    if class_names and not dropped and len(class_names) == model.num_classes:
        model.class_names = list(class_names)
    return LoadResult(weights, notes, missing, unexpected, mismatched)


def _mismatch_message(weights: Weights, model: PiT, sd: Mapping, target: Mapping, missing: list[str],
                      unexpected: list[str], mismatched: list[str]) -> str:
    lines = [f"{weights.source} does not fit the model {_describe_model(model)}: the checkpoint looks like "
             f"{_describe(weights.info)}."]
    if weights.info["variant"] and weights.info["variant"] != getattr(model, "model_name", None):
        lines.append(f"Build the model as create_model({weights.info['variant']!r}, ...) to load it.")
    if missing:
        lines.append(f"missing keys ({len(missing)}): {_preview(missing)}")
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
    if mismatched:
        shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}" for k in mismatched]
        lines.append(f"mis-shaped keys ({len(mismatched)}): {_preview(shapes, 4)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- building
def _pretrained_cfg(d: Mapping[str, Any]) -> PretrainedCfg:
    fields = PretrainedCfg.__dataclass_fields__
    return PretrainedCfg(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in fields})


def model_from_checkpoint(source: Source, *, ema: bool = False, **create_kwargs: Any) -> PiT:
    """Build the model a checkpoint holds and load it.

    pitvit checkpoints and ``save_pretrained`` directories carry the model's name and architecture; for
    other formats pass ``model=NAME``, and the number of classes, input size and channels are read off the
    checkpoint's shapes.

    Args:
        source: a path, directory, state dict or :class:`Weights`.
        ema: build from the EMA weights.
        **create_kwargs: ``model=NAME`` and any :func:`create_model` option (``num_classes``, ``img_size``,
            ``drop_path_rate``, ...); they override what the checkpoint says.
    """
    weights = read_weights(source, ema=ema)
    name = create_kwargs.pop("model", None)
    stored_cfg = weights.meta.get("model_cfg")
    if stored_cfg and (name is None or name == weights.meta.get("model_name")):
        name = weights.meta.get("model_name") or ""
        valid = set(PiTConfig.__dataclass_fields__)
        unknown = sorted(set(create_kwargs) - valid)
        if unknown:
            raise TypeError(f"model_from_checkpoint got unknown option(s) {unknown}; valid: {sorted(valid)}")
        cfg = PiTConfig(**{k: v for k, v in stored_cfg.items() if k in valid})
        model = PiT(cfg.replace(**{k: v for k, v in create_kwargs.items() if v is not None}))
        model.model_name = name
        if weights.meta.get("pretrained_cfg"):
            model.pretrained_cfg = _pretrained_cfg(weights.meta["pretrained_cfg"])
        elif is_model(name):
            model.pretrained_cfg = get_pretrained_cfg(name)
    else:
        name = name or weights.meta.get("model_name")
        info = weights.info
        if not name:
            hint = (f"model={info['variant']!r}, or --model {info['variant']} on the command line"
                    if info["variant"] else "model=NAME, or --model NAME on the command line")
            raise CheckpointError(f"{weights.source}: a {weights.container} does not say which model it holds; "
                                  f"name it ({hint}); it looks like {_describe(info)}")
        cfg = get_model_config(name)
        found: dict[str, Any] = {"num_classes": info["num_classes"], "in_chans": info["in_chans"]}
        if info["grid"]:
            found["img_size"] = tuple((g - 1) * cfg.stride + cfg.patch_size for g in info["grid"])
        model = create_model(name, **{**found, **create_kwargs})
    load_weights(model, weights)
    return model


# ---------------------------------------------------------------------------------------------- writing
class _PortablePickler(pickle._Pickler):
    """Names numpy's reconstructor ``numpy.core.*``, which numpy 1.x (where Paddle lives) and 2.x both import."""

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", None) or ""
        if module.startswith("numpy._core"):
            qualname = name or obj.__qualname__
            self.write(pickle.GLOBAL + f"numpy.core{module[len('numpy._core'):]}\n{qualname}\n".encode("ascii"))
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _write_paddle(sd: Mapping[str, torch.Tensor], path: Path) -> None:
    arrays: dict[str, Any] = {k: v.detach().cpu().float().contiguous().numpy() for k, v in sd.items()}
    arrays[NAME_TABLE_KEY] = {k: k for k in sd}  # what paddle.save adds; paddle.load drops it
    with open(path, "wb") as f:
        _PortablePickler(f, protocol=4).dump(arrays)


def save_weights(model: nn.Module, path: str | os.PathLike, format: str | None = None) -> Path:
    """Write the model's weights in a published format.

    Args:
        model: the PiT.
        path: the file to write.
        format: one of :data:`SAVE_FORMATS`; default from the extension (``.safetensors``; ``.pth``/``.pt``
            official bare state dict; ``.pdparams`` Paddle pickle of float32 numpy arrays, Linear weights
            ``[in, out]``, loadable by ``paddle.load`` + ``set_state_dict``). ``"timm"``/``"timm_legacy"``
            rename the pools for timm and write safetensors for a ``.safetensors`` path, a torch file otherwise.

    Returns:
        The path written.
    """
    path = Path(path)
    fmt = format or _SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt not in SAVE_FORMATS:
        raise ValueError(f"cannot tell the format of {path} (give format= one of {', '.join(SAVE_FORMATS)}, "
                         f"or use a .safetensors, .pth, .pt or .pdparams path)" if fmt is None else
                         f"unknown format {fmt!r}; valid: {', '.join(SAVE_FORMATS)}")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "paddle":
        _write_paddle(convert_state_dict(sd, "official", "paddle"), path)
        return path
    layout = fmt if fmt in ("timm", "timm_legacy") else "official"
    sd = convert_state_dict(sd, "official", layout)
    if fmt == "safetensors" or (layout != "official" and path.suffix.lower() == ".safetensors"):
        from safetensors.torch import save_file

        meta = {"format": "pt", "pitvit_layout": layout}
        if getattr(model, "model_name", ""):
            meta["model_name"] = model.model_name
        save_file(sd, str(path), metadata=meta)
    else:
        torch.save(sd, path)
    return path


def save_pretrained(model: PiT, directory: str | os.PathLike) -> Path:
    """Write ``config.json`` (model name, architecture, preprocessing, class names) and ``model.safetensors``.

    ``create_model(name, weights=directory)`` and ``model_from_checkpoint(directory)`` read it back.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"format": "pitvit", "version": 1, "model_name": getattr(model, "model_name", ""),
                              "model_cfg": model.cfg.to_dict()}
    if getattr(model, "pretrained_cfg", None) is not None:
        config["pretrained_cfg"] = model.pretrained_cfg.to_dict()
    if getattr(model, "class_names", None):
        config["class_names"] = list(model.class_names)
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_weights(model, directory / WEIGHTS_NAME)
    return directory
