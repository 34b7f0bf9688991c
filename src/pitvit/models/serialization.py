"""Files that may hold weights: the one safe reader, the writers, and the content hash they carry.

Containers: torch files (``.pth``/``.pt``, also DeiT's and timm's training checkpoints), safetensors,
Paddle pickles (``.pdparams``: a pickled dict of numpy arrays and a ``StructuredToParameterName@@`` name
table; PaddleViT training checkpoints nest the weights under ``model``/``model_ema`` as ``(name, array)``
tuples), pitvit training checkpoints (``docs/DESIGN.md``), ``save_pretrained`` directories (``config.json``
+ ``model.safetensors``), and Hugging Face Hub references (``hf-hub:OWNER/NAME``, see ``hub.py``).

Nothing here runs code from a file: torch files load with ``weights_only=True`` and Paddle pickles go through
an unpickler that can build numpy arrays and plain containers and nothing else. Paddle is never needed.

Weight files pitvit writes carry a SHA-256 of their tensors (safetensors metadata :data:`DIGEST_KEY`; a
training checkpoint's :data:`DIGESTS_KEY` entry, see :func:`with_digests`); reading checks it when present,
so a damaged file is an error instead of silently different weights.
"""
from __future__ import annotations

import argparse
import codecs
import hashlib
import json
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

import numpy as np
import torch
from torch import nn

from pitvit.utils.errors import CheckpointError, ConfigError, MissingPathError, first_line, preview_list
from pitvit.utils.io import NotRegularFileError, atomic_write, require_regular, save_torch, write_bytes, write_files
from pitvit.utils.names import SAVE_FORMATS

from . import hub
from .layouts import convert_state_dict

__all__ = ["SAVE_FORMATS", "CONFIG_NAME", "WEIGHTS_NAME", "DIGEST_KEY", "DIGESTS_KEY", "read_checkpoint",
           "read_state_dict", "state_dict_digest", "with_digests", "save_weights", "save_pretrained", "format_of"]

PathSource = Union[str, "os.PathLike[str]"]

PADDLE_SUFFIXES = (".pdparams", ".pdopt", ".pdema")
NAME_TABLE_KEY = "StructuredToParameterName@@"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DIGEST_KEY = "pitvit_sha256"  # safetensors metadata: state_dict_digest of the file's tensors
DIGESTS_KEY = "digests"  # training checkpoint: {entry name: state_dict_digest of that entry}
_SUFFIX_FORMAT = {".safetensors": "safetensors", ".pth": "official", ".pt": "official", ".pdparams": "paddle"}


def format_of(path: str | os.PathLike) -> str | None:
    """The weight format :func:`save_weights` writes for a file name's extension (``None``: unknown)."""
    return _SUFFIX_FORMAT.get(Path(path).suffix.lower())
# The first bytes of a legacy (non-zip) torch.save file: protocol 2, then the pickled magic number.
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


# ---------------------------------------------------------------------------------------------- content hash
def state_dict_digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 (hex) over a state dict's tensors: names, dtypes, shapes and bytes, in sorted name order.

    Entries that are not tensors are left out. Equal for equal tensors whatever the device or layout in memory.
    """
    h = hashlib.sha256()
    for name in sorted(k for k, v in state_dict.items() if isinstance(v, torch.Tensor)):
        t = state_dict[name].detach()
        h.update(f"{name}\0{str(t.dtype)}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def with_digests(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a training-checkpoint dict with :data:`DIGESTS_KEY`: the digest of each entry that is a dict
    of tensors (``state_dict``, ``ema_state_dict``). :func:`read_checkpoint` verifies them on load."""
    digests = {k: state_dict_digest(v) for k, v in checkpoint.items() if k != DIGESTS_KEY and _is_tensor_dict(v)}
    return {**checkpoint, DIGESTS_KEY: digests}


def _damaged(source: str, what: str, stored: str, actual: str) -> CheckpointError:
    return CheckpointError(f"{source}: {what} do not match the SHA-256 stored with them ({stored[:12]}... vs "
                           f"{actual[:12]}...); the file is damaged (a flipped bit, an incomplete copy): use an "
                           f"intact copy")


def _verify_digests(obj: Mapping[str, Any], source: str) -> None:
    digests = obj.get(DIGESTS_KEY)
    if obj.get("format") != "pitvit" or not isinstance(digests, Mapping):
        return  # only pitvit's own checkpoints define the entry; another program's "digests" means something else
    for name, stored in digests.items():
        entry = obj.get(name)
        if not isinstance(entry, Mapping):
            raise CheckpointError(f"{source}: the checkpoint lists a digest for {name!r} but holds no such "
                                  f"weights; the file is damaged or was edited: use an intact copy")
        actual = state_dict_digest(entry)
        if actual != stored:
            raise _damaged(source, f"the tensors of {name!r}", str(stored), actual)


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
        raise CheckpointError(f"{path}: refused by torch.load(weights_only=True), the file holds more than "
                              f"tensors and plain data ({first_line(e) or type(e).__name__})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch file, it may be truncated or not a checkpoint "
                              f"({type(e).__name__}: {first_line(e)})") from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types for every kind of bad file
        raise CheckpointError(f"{path}: not a readable safetensors file, it may be truncated "
                              f"({type(e).__name__}: {e})") from None
    stored = meta.get(DIGEST_KEY)
    if stored is not None:
        actual = state_dict_digest(tensors)
        if actual != stored:
            raise _damaged(str(path), "the tensors", stored, actual)
    return tensors, meta


def _sniff(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in PADDLE_SUFFIXES:
        return "paddle pickle"
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch file"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then a JSON header
        return "safetensors"
    if head[:1] == b"\x80":
        return "paddle pickle"  # a plain pickle that is not torch's: numpy arrays, as Paddle writes them
    raise CheckpointError(f"{path}: not a checkpoint (neither a PyTorch, safetensors nor pickle file; it starts "
                          f"with {head[:8]!r})")


class _Read(NamedTuple):
    obj: dict[str, Any]
    container: str  # "torch file", "safetensors", "paddle pickle", "save_pretrained directory"
    path: Path


def _read(source: PathSource) -> _Read:
    if not hub.is_hub_reference(source):
        return _read_path(Path(source))
    path = hub.download(source)
    try:
        return _read_path(path)
    except CheckpointError as e:
        # A damaged download stays in the cache (huggingface_hub checks sizes, not contents): say how to refetch.
        raise CheckpointError(f"{e}; it is {source}'s cached download: delete {path.resolve()} and {path} to "
                              f"fetch it again") from None


def _require_file(path: Path) -> None:
    """Refuse, before opening it, a path that is not a regular file: a FIFO would block the read for ever and
    ``/dev/zero`` never end."""
    try:
        require_regular(path)
    except FileNotFoundError:
        raise MissingPathError(f"no checkpoint at {path}: no such file or folder") from None
    except NotRegularFileError as e:
        raise CheckpointError(f"{e}; give the path of a checkpoint file") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None


def _read_path(path: Path) -> _Read:
    if path.is_dir():
        config_path, weights_path = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not weights_path.exists():
            raise CheckpointError(f"{path}: a directory without {WEIGHTS_NAME}, not a save_pretrained directory")
        _require_file(weights_path)
        try:
            config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        except (ValueError, OSError) as e:
            raise CheckpointError(f"{config_path}: not readable JSON ({first_line(e)})") from None
        state_dict, _ = _read_safetensors(weights_path)
        return _Read({**config, "format": "pitvit", "state_dict": state_dict}, "save_pretrained directory", path)
    _require_file(path)
    kind = _sniff(path)
    if kind == "safetensors":
        state_dict, meta = _read_safetensors(path)
        return _Read({"state_dict": state_dict, "safetensors_metadata": meta}, kind, path)
    obj = _read_pickle(path) if kind == "paddle pickle" else _read_torch(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (it holds a {type(obj).__name__}, not a dict of weights)")
    _verify_digests(obj, str(path))
    return _Read(dict(obj), kind, path)


def read_checkpoint(source: PathSource) -> dict[str, Any]:
    """Read a checkpoint file, ``save_pretrained`` directory or ``hf-hub:`` reference as plain data, never
    running code from it.

    Torch files load with ``weights_only=True`` on the CPU; Paddle pickles keep their numpy arrays; a
    ``save_pretrained`` directory reads as a pitvit checkpoint (``config.json`` fields plus ``state_dict``);
    a safetensors file as ``{"state_dict", "safetensors_metadata"}``. Content hashes are verified when present.

    Raises:
        MissingPathError: nothing at ``source`` (a ConfigError and a FileNotFoundError).
        CheckpointError: the file is truncated, damaged, not a checkpoint, or wants to import code; a Hub
            reference that is neither cached nor downloadable.
    """
    return _read(source).obj


# ---------------------------------------------------------------------------------------------- unwrapping
# Wrappers seen in the wild, with where each keeps its EMA weights: pitvit, DeiT/PaddleViT, timm's train.py,
# and plain training scripts.
_WRAPPERS = (("state_dict", "ema_state_dict"), ("model", "model_ema"), ("state_dict", "state_dict_ema"),
             ("model_state_dict", None), ("module", None))


def _unwrap(obj: Mapping, ema: bool, source: str) -> tuple[Mapping, bool]:
    """Find the weights inside a training checkpoint; returns them and whether they are EMA weights."""
    for _ in range(3):  # a wrapper may sit inside another ({"state_dict": {"model": ...}})
        if ema:
            for _, ema_key in _WRAPPERS:
                if ema_key and isinstance(obj.get(ema_key), Mapping):
                    return obj[ema_key], True
        inner = next((obj[k] for k, _ in _WRAPPERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if ema:
        raise CheckpointError(f"{source}: ema=True, but the checkpoint holds no EMA weights "
                              f"(looked for {', '.join(sorted({k for _, k in _WRAPPERS if k}))})")
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


class StoredTensors(NamedTuple):
    """The tensors a source holds, unwrapped, with what held them (see :func:`read_stored`)."""

    tensors: dict[str, torch.Tensor]
    container: str  # as in _Read, plus "pitvit checkpoint" and "dict"
    source: str
    ema: bool
    from_numpy: bool  # numpy arrays: written by Paddle
    checkpoint: Mapping[str, Any]  # the whole checkpoint (metadata next to the weights)


def read_stored(source: PathSource | Mapping[str, Any], *, ema: bool = False) -> StoredTensors:
    """Read any source and find its state dict: the step :func:`read_state_dict` and PiT's reader share."""
    if isinstance(source, Mapping):
        obj, name, container = source, "<dict>", "dict"
    else:
        read = _read(source)
        obj, container = read.obj, read.container
        name = str(source) if hub.is_hub_reference(source) else str(read.path)
        if obj.get("format") == "pitvit" and container == "torch file":
            container = "pitvit checkpoint"
    raw, is_ema = _unwrap(obj, ema, name)
    tensors, from_numpy = _as_tensors(raw, name)
    tensors = _strip_prefixes(tensors)
    if not tensors:
        raise CheckpointError(f"{name}: not a checkpoint, it holds no tensors "
                              f"(its entries: {preview_list(sorted(map(str, raw)))})")
    return StoredTensors(tensors, container, name, is_ema, from_numpy, obj)


def read_state_dict(source: PathSource | Mapping[str, Any], *, ema: bool = False) -> dict[str, torch.Tensor]:
    """The state dict in any weights file, for any model (PiT or not), read safely.

    Unwraps training checkpoints (``state_dict``, ``model``, ``model_state_dict``, ``module``; with ``ema=True``
    ``ema_state_dict``, ``model_ema``, ``state_dict_ema``), strips DDP's ``module.`` and ``torch.compile``'s
    ``_orig_mod.`` prefixes, and turns numpy arrays into tensors. Keys and values are otherwise as stored (no
    layout conversion: use :func:`pitvit.load_weights` for PiT weights).

    Args:
        source: a file, ``save_pretrained`` directory, ``hf-hub:`` reference, or an in-memory checkpoint.
        ema: take the EMA weights of a training checkpoint (an error if it has none).

    Raises:
        MissingPathError: nothing at ``source`` (a ConfigError and a FileNotFoundError).
        CheckpointError: unreadable, unsafe, damaged, holding no tensors, or no EMA weights when asked for.
    """
    return read_stored(source, ema=ema).tensors


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
    with atomic_write(path, "wb") as f:
        _PortablePickler(f, protocol=4).dump(arrays)


def _safetensors_bytes(sd: Mapping[str, torch.Tensor], meta: dict[str, str]) -> bytes:
    # In memory, then written by pitvit.utils.io: safetensors' own file writer fails on a full disk with an
    # error of its own type, after leaving part of the file behind.
    from safetensors.torch import save

    return save(dict(sd), metadata={**meta, DIGEST_KEY: state_dict_digest(sd)})


def save_weights(model: nn.Module, path: PathSource, format: str | None = None) -> Path:
    """Write the model's weights in a published format, atomically.

    Args:
        model: the PiT.
        path: the file to write.
        format: one of :data:`SAVE_FORMATS`; default from the extension (``.safetensors``, with the tensors'
            SHA-256 in its metadata; ``.pth``/``.pt`` official bare state dict; ``.pdparams`` Paddle pickle of
            float32 numpy arrays, Linear weights ``[in, out]``, loadable by ``paddle.load`` + ``set_state_dict``).
            ``"timm"``/``"timm_legacy"`` rename the pools for timm and write safetensors for a ``.safetensors``
            path, a torch file otherwise.

    Returns:
        The path written.

    Raises:
        ConfigError: an unknown format, or none given for an unknown extension.
        OutputError: the file cannot be written (nothing is left half-written).
    """
    path = Path(path)
    fmt = format or format_of(path)
    if fmt not in SAVE_FORMATS:
        raise ConfigError(f"cannot tell the format of {path} (give format= one of {', '.join(SAVE_FORMATS)}, "
                          f"or use a .safetensors, .pth, .pt or .pdparams path)" if fmt is None else
                          f"unknown format {fmt!r}; valid: {', '.join(SAVE_FORMATS)}")
    stem = getattr(getattr(model, "cfg", None), "stem_channels", 0)
    if stem and fmt in ("paddle", "timm", "timm_legacy"):
        raise ConfigError(f"a PiT with a convolutional stem (stem_channels={stem}) has no {fmt} layout: neither "
                          f"timm nor Paddle builds one; save it as .safetensors or .pth (pitvit reads both)")
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if fmt == "paddle":
        _write_paddle(convert_state_dict(sd, "official", "paddle"), path)
        return path
    layout = fmt if fmt in ("timm", "timm_legacy") else "official"
    sd = convert_state_dict(sd, "official", layout)
    if fmt == "safetensors" or (layout != "official" and path.suffix.lower() == ".safetensors"):
        write_bytes(path, _safetensors_bytes(sd, _safetensors_meta(model, layout)))
    else:
        save_torch(sd, path)
    return path


def _safetensors_meta(model: nn.Module, layout: str) -> dict[str, str]:
    meta = {"format": "pt", "pitvit_layout": layout}
    if getattr(model, "model_name", ""):
        meta["model_name"] = model.model_name
    return meta


def save_pretrained(model: nn.Module, directory: PathSource) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (model name, architecture, preprocessing, class names).

    ``create_model(name, weights=directory)`` and ``model_from_checkpoint(directory)`` read it back.

    Raises:
        OutputError: either file cannot be written; then neither was (nor the folder, if it was new).
    """
    directory = Path(directory)
    config: dict[str, Any] = {"format": "pitvit", "version": 1, "model_name": getattr(model, "model_name", ""),
                              "model_cfg": model.cfg.to_dict()}
    pretrained = getattr(model, "pretrained_cfg", None)
    if pretrained is not None:
        config["pretrained_cfg"] = pretrained.to_dict() if hasattr(pretrained, "to_dict") else dict(pretrained)
    if getattr(model, "class_names", None):
        config["class_names"] = list(model.class_names)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Both files or neither: a full disk must not leave new weights beside an old config.json.
    write_files({directory / WEIGHTS_NAME: _safetensors_bytes(sd, _safetensors_meta(model, "official")),
                 directory / CONFIG_NAME: (json.dumps(config, indent=2) + "\n").encode()})
    return directory
