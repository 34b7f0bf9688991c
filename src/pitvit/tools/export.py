"""Export a PiT model to ONNX, OpenVINO IR (``.xml`` + ``.bin``) or a ``torch.export`` archive (``.pt2``),
checked against PyTorch.

The batch dimension is dynamic unless ``batch`` fixes it (ONNX and OpenVINO). ``dynamic_hw=True`` also frees the
height and width: the model resizes its position embedding to the token grid of the input, and the exported graph
keeps that resize (bicubic to the same size is an exact identity, so the stored size gives the same numbers).

ONNX goes through the TorchScript-based exporter (``dynamo=False``): it exists in every torch from 2.4 to
2.14 and needs nothing beyond ``onnx``, whereas the dynamo-based exporter needs ``onnxscript``, which it
falls back to only when the legacy exporter is gone. Each file is run once after export (onnxruntime, or
``torch.export.load``) on random inputs and compared with the PyTorch model; a difference above the
tolerance is an error, and :func:`export_model` then leaves nothing behind (every file is written to a temporary
name and renamed into place only once it passed, through :mod:`pitvit.utils.io`). Preprocessing and class
names travel inside the file (ONNX ``metadata_props``; ``pitvit.json`` in the ``.pt2`` archive) or beside it
(OpenVINO: ``MODEL.json``, the same keys), so a deployment reads them from the same place. OpenVINO goes through
``openvino.convert_model`` on the module, its weights stay fp32, and the check runs it with the precision hint
f32 (its CPU plugin would otherwise run bf16 on CPUs that have it).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from pitvit.models import resolve_preprocessing, token_grid
from pitvit.utils.errors import ConfigError, OutputError
from pitvit.utils.extras import require
from pitvit.utils.io import open_output, write_files, write_with
from pitvit.utils.names import DEFAULT_OPSET, EXPORT_FORMATS

from .loading import load_model
from .imagenet import class_names_for

__all__ = ["export_model", "export_onnx", "export_pt2", "check_onnx", "check_pt2", "metadata", "convert_openvino",
           "openvino_files", "check_openvino", "conversion_error"]

FORMATS = EXPORT_FORMATS
MAX_SIDE = 4096


@contextlib.contextmanager
def _dynamic_img_size(model: nn.Module, enable: bool) -> Iterator[None]:
    """While exporting with free height/width, resize the position embedding even at the stored size.

    The model skips the resize when the grid already matches, a Python branch on the input's shape: a tracer
    would freeze whichever side the example input took, and ``torch.export`` refuses a graph that only holds
    for grids other than the stored one. The model's ``set_dynamic_img_size`` switch always takes the resize
    path; bicubic resizing to the same size is an exact identity, so no number changes.
    A wrapper without the switch (the features of :mod:`pitvit.tools.backends`) exports at its stored size.
    """
    if not hasattr(model, "set_dynamic_img_size"):
        yield
        return
    before = model.dynamic_img_size
    model.set_dynamic_img_size(enable or before)
    try:
        yield
    finally:
        model.set_dynamic_img_size(before)


def _min_side(model: nn.Module) -> int:
    """The smallest input side whose last stage still has a grid of at least 2x2.

    A grid of 1 lets the exporters specialize size-1 dimensions (broadcasting), so the dynamic range
    starts above it.
    """
    cfg = model.cfg
    for side in range(cfg.patch_size, MAX_SIDE):
        g = token_grid(side, cfg.patch_size, cfg.stride)[0]
        for _ in range(len(cfg.depth) - 1):
            g = (g - 1) // 2 + 1  # the 3x3, stride-2, padding-1 pooling convolution
        if g >= 2:
            return side
    raise ValueError(f"no input size up to {MAX_SIDE} px gives a 2x2 last-stage grid")


def metadata(model: nn.Module) -> dict[str, str]:
    """Plain-string metadata stored with an export: model, preprocessing, class names."""
    pre = resolve_preprocessing(model)
    return {
        "pitvit_model": str(getattr(model, "model_name", "")),
        "pitvit_preprocessing": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()}),
        "pitvit_class_names": json.dumps(class_names_for(model)),
        "pitvit_model_cfg": json.dumps(model.cfg.to_dict()),
    }


def _example(model: nn.Module, batch: int = 2, hw: tuple[int, int] | None = None, seed: int = 0) -> torch.Tensor:
    c, h, w = resolve_preprocessing(model)["input_size"]
    if hw is not None:
        h, w = hw
    g = torch.Generator().manual_seed(seed)
    p = next(model.parameters())
    return torch.randn(batch, c, h, w, generator=g).to(device=p.device, dtype=p.dtype)


def _check_sizes(model: nn.Module, dynamic_hw: bool) -> list[tuple[int, tuple[int, int] | None]]:
    """(batch, (height, width)) pairs the check runs: another batch always, another size if free."""
    sizes: list[tuple[int, tuple[int, int] | None]] = [(2, None), (3, None)]
    if dynamic_hw:
        _, h, w = resolve_preprocessing(model)["input_size"]
        s = model.cfg.stride
        sizes.append((1, (h + 3 * s, w + 5 * s)))  # unequal sides: a swapped H/W would show
    return sizes


# ---------------------------------------------------------------------------- ONNX
def export_onnx(model: nn.Module, out: str | os.PathLike, *, dynamic_hw: bool = False,
                opset: int = DEFAULT_OPSET, batch: int | None = None) -> Path:
    """Write ``model`` (eval mode) as ONNX with input ``images`` (N, C, H, W) and output ``logits``; ``batch``
    fixes N (default: any)."""
    return write_with(out, lambda tmp: _write_onnx(model, tmp, dynamic_hw, opset, batch))


def _write_onnx(model: nn.Module, out: Path, dynamic_hw: bool, opset: int, batch: int | None = None) -> None:
    require("onnx")  # torch's exporter needs it; say which extra before tracing
    model = model.eval()
    axes: dict[str, dict[int, str]] = {"images": {} if batch else {0: "batch"}, "logits": {} if batch else {0: "batch"}}
    if dynamic_hw:
        axes["images"].update({2: "height", 3: "width"})
    kwargs: dict[str, Any] = dict(input_names=["images"], output_names=["logits"], dynamic_axes=axes,
                                  opset_version=opset, do_constant_folding=True)
    legacy = "dynamo" in inspect.signature(torch.onnx.export).parameters
    if legacy:
        kwargs["dynamo"] = False
    ctx = _dynamic_img_size(model, dynamic_hw)
    with ctx, torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about every Python-level shape check; those are the model's input validation.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        try:
            torch.onnx.export(model, (_example(model, batch or 2),), str(out), **kwargs)
        except (torch.onnx.OnnxExporterError, RuntimeError) as e:  # an opset torch cannot, or cannot here, do
            if opset == DEFAULT_OPSET:
                raise  # a bug: the default opset exports every variant
            raise ConfigError(f"--opset {opset}: {str(e).splitlines()[0]} (the default, {DEFAULT_OPSET}, "
                              f"exports every PiT)") from None
    _add_onnx_metadata(out, metadata(model))


def opset_range(onnx: Any) -> tuple[int, int]:
    """The ONNX opsets an export can use: those torch's TorchScript exporter writes (``torch.onnx._constants``,
    7..20 in torch 2.x) that the installed onnx also knows."""
    from torch.onnx import _constants

    hi = getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", getattr(_constants, "ONNX_MAX_OPSET", DEFAULT_OPSET))
    return int(getattr(_constants, "ONNX_MIN_OPSET", 7)), min(int(hi), int(onnx.defs.onnx_opset_version()))


def _onnx_modules() -> tuple[Any, Any]:
    """onnx and onnxruntime (their telemetry off, see ``utils.extras``), or the one-line error naming the ``onnx``
    extra."""
    return require("onnx", "exporting to ONNX"), require("onnxruntime", "checking an ONNX export")


def _add_onnx_metadata(path: Path, meta: dict[str, str]) -> None:
    onnx, _ = _onnx_modules()

    proto = onnx.load(str(path))
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def check_onnx(model: nn.Module, path: str | os.PathLike, *, dynamic_hw: bool = False,
               batch: int | None = None) -> float:
    """Largest absolute difference between onnxruntime on ``path`` and ``model`` over a few input shapes."""
    _, ort = _onnx_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return _max_diff(model, lambda x: session.run(None, {name: x})[0], "ONNX", dynamic_hw, batch)


def _max_diff(model: nn.Module, run: Any, what: str, dynamic_hw: bool, batch: int | None) -> float:
    """Largest absolute difference between ``run`` (numpy in, numpy out) and ``model`` over a few input shapes."""
    model = model.eval()
    diff = 0.0
    for i, (b, hw) in enumerate(_check_sizes(model, dynamic_hw)):
        x = _example(model, batch or b, hw, seed=i + 1).float().cpu()
        with torch.no_grad():
            ref = model.float().cpu()(x)
        got = torch.from_numpy(run(x.numpy()))
        if got.shape != ref.shape:
            raise RuntimeError(f"{what} output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)} for input "
                               f"{tuple(x.shape)}")
        diff = max(diff, (got - ref).abs().max().item())
    return diff


# ---------------------------------------------------------------------------- OpenVINO
def conversion_error(backend: str, model: nn.Module, e: BaseException) -> ConfigError:
    """A one-line error for a model a backend cannot convert, naming the operation(s) it names."""
    text = str(e)
    ops = sorted(set(re.findall(r"\b(?:aten|prim|onnx)::[A-Za-z_0-9.]+", text)))
    first = text.strip().splitlines()[0][:300] if text.strip() else type(e).__name__
    what = f"no conversion for {', '.join(ops)}" if ops else first
    return ConfigError(f"{backend} cannot convert {getattr(model, 'model_name', '') or 'the model'}: {what}; "
                       f"nothing else was tried (choose another backend)")


def convert_openvino(model: nn.Module, *, batch: int | None = None, dynamic_hw: bool = False) -> Any:
    """``model`` (eval mode) as an in-memory ``openvino.Model`` (``openvino.convert_model`` on the module) with
    input (N, C, H, W); ``batch`` fixes N (default: any), ``dynamic_hw`` frees H and W.

    Raises:
        ConfigError: openvino is not installed, or cannot convert an operation (named).
    """
    ov = require("openvino")
    model = model.eval()
    c, h, w = resolve_preprocessing(model)["input_size"]
    shape = (batch or -1, c, -1 if dynamic_hw else h, -1 if dynamic_hw else w)
    with _dynamic_img_size(model, dynamic_hw), torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        try:
            return ov.convert_model(model, example_input=_example(model, batch or 2), input=[shape])
        except Exception as e:  # OpConversionFailure lists the operations it has no rule for
            raise conversion_error("openvino", model, e) from e


def openvino_files(ov_model: Any, stem: str) -> dict[str, bytes]:
    """The bytes of ``STEM.xml`` and ``STEM.bin`` for an ``openvino.Model``, weights kept in fp32 (fp32 must stay
    exact; OpenVINO would store fp16 by default)."""
    ov = require("openvino")
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / f"{stem}.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)
        return {f"{stem}.xml": xml.read_bytes(), f"{stem}.bin": xml.with_suffix(".bin").read_bytes()}


def check_openvino(model: nn.Module, path: str | os.PathLike, *, dynamic_hw: bool = False,
                   batch: int | None = None) -> float:
    """Largest absolute difference between OpenVINO (fp32, told so) on ``path`` and ``model``."""
    ov = require("openvino")
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return _max_diff(model, lambda x: compiled(x)[0], "OpenVINO", dynamic_hw, batch)


def _export_openvino(model: nn.Module, out: Path, dynamic_hw: bool, batch: int | None, atol: float) -> float:
    """Convert, check in a temporary folder, then write ``.xml``, ``.bin`` and ``.json`` (metadata) together."""
    ov_model = convert_openvino(model, batch=batch, dynamic_hw=dynamic_hw)
    files = openvino_files(ov_model, out.stem)
    with tempfile.TemporaryDirectory() as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        diff = check_openvino(model, Path(tmp) / f"{out.stem}.xml", dynamic_hw=dynamic_hw, batch=batch)
    if not diff <= atol:
        raise OutputError(f"{out}: the export differs from PyTorch by {diff:.3g} (tolerance --atol {atol:g}); "
                          f"nothing was written")
    meta = json.dumps(metadata(model), indent=1).encode()
    write_files({out: files[f"{out.stem}.xml"], out.with_suffix(".bin"): files[f"{out.stem}.bin"],
                 out.with_suffix(".json"): meta})
    return diff


# ---------------------------------------------------------------------------- torch.export
def export_pt2(model: nn.Module, out: str | os.PathLike, *, dynamic_hw: bool = False) -> Path:
    """Write ``model`` (eval mode) as a ``torch.export`` archive (load it with ``torch.export.load``)."""
    return write_with(out, lambda tmp: _write_pt2(model, tmp, dynamic_hw))


def _write_pt2(model: nn.Module, out: Path, dynamic_hw: bool) -> None:
    from torch.export import Dim

    model = model.eval()
    dims: dict[int, Any] = {0: Dim("batch", min=1, max=MAX_SIDE)}
    if dynamic_hw:
        lo = _min_side(model)
        dims[2] = Dim("height", min=lo, max=MAX_SIDE)
        dims[3] = Dim("width", min=lo, max=MAX_SIDE)
    ctx = _dynamic_img_size(model, dynamic_hw)
    with ctx, torch.no_grad():
        program = torch.export.export(model, (_example(model),), dynamic_shapes=({**dims},))
    # Through a file object: torch.export wants a path ending in .pt2, and the temporary name does not. And
    # through open_output: told of a failed write (a full disk), torch's zip writer aborts the process.
    with open_output(out) as f:
        torch.export.save(program, f, extra_files={"pitvit.json": json.dumps(metadata(model))})


def check_pt2(model: nn.Module, path: str | os.PathLike, *, dynamic_hw: bool = False) -> float:
    """Largest absolute difference between the loaded-back archive and ``model`` over a few shapes."""
    extra = {"pitvit.json": ""}
    with open(path, "rb") as f:
        program = torch.export.load(f, extra_files=extra)
    json.loads(extra["pitvit.json"])  # the metadata came back readable
    loaded = program.module()
    model = model.eval()
    diff = 0.0
    with torch.no_grad():
        for i, (batch, hw) in enumerate(_check_sizes(model, dynamic_hw)):
            x = _example(model, batch, hw, seed=i + 1)
            got, ref = loaded(x), model(x)
            if got.shape != ref.shape:
                raise RuntimeError(f"pt2 output shape {tuple(got.shape)} != PyTorch {tuple(ref.shape)}")
            diff = max(diff, (got.float() - ref.float()).abs().max().item())
    return diff


# ---------------------------------------------------------------------------- entry point
class _Rejected(Exception):
    """The export differs from PyTorch by more than the tolerance (raised inside the atomic write)."""


def export_model(model_name: str | None, weights: str | os.PathLike | None = None, *, format: str = "onnx",
                 out: str | os.PathLike | None = None, dynamic_hw: bool = False, opset: int = DEFAULT_OPSET,
                 ema: bool = False, atol: float = 1e-4, batch: int | None = None,
                 allow_nonfinite: bool = False) -> dict[str, Any]:
    """Load a model, export it, run the export and compare it with PyTorch; keep the file only if it passed.

    Args:
        model_name: a registered variant (may be omitted for a checkpoint that names its model).
        weights: checkpoint or ``save_pretrained`` folder; ``None`` exports the random initialization.
        format: ``"onnx"``, ``"openvino"`` or ``"pt2"``.
        out: output file (default ``<model>.onnx`` / ``<model>.xml`` / ``<model>.pt2`` in the working
            directory); OpenVINO also writes the ``.bin`` and ``.json`` of the same name.
        dynamic_hw: free height and width as well as the batch.
        opset: ONNX opset.
        ema: export the EMA weights of a training checkpoint.
        atol: largest acceptable absolute difference between the export and PyTorch.
        batch: a fixed batch size (ONNX, OpenVINO; default: any).
        allow_nonfinite: load weights holding NaN or inf instead of refusing them.

    Returns:
        ``{"path", "format", "max_abs_diff", "dynamic_hw", "input_size"}``.

    Raises:
        ConfigError: an unknown format, a ``.pt2`` archive named otherwise, an opset outside
            :func:`opset_range`, or (``MissingExtraError``) onnx or onnxruntime not installed.
        OutputError: the export differs from PyTorch by more than ``atol`` (nothing is written), or ``out``
            cannot be written.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "pt2" and out is not None and Path(out).suffix != ".pt2":
        raise ConfigError(f"{out}: a torch.export archive's name must end in .pt2 (torch.export.load expects it)")
    if format == "openvino" and out is not None and Path(out).suffix != ".xml":
        raise ConfigError(f"{out}: an OpenVINO IR's name must end in .xml (its weights go beside it in .bin)")
    if batch is not None and (batch < 1 or format == "pt2"):
        raise ConfigError(f"--batch {batch}: a fixed batch must be >= 1 (ONNX and OpenVINO only)")
    if format == "onnx":
        onnx, _ = _onnx_modules()  # before anything else: a missing extra is one line, not a late traceback
        lo, hi = opset_range(onnx)
        if not lo <= opset <= hi:
            raise ConfigError(f"--opset {opset} is outside what this torch and onnx can write ({lo}..{hi}); the "
                              f"default, {DEFAULT_OPSET}, exports every PiT")
    model = load_model(model_name, weights, ema=ema, allow_nonfinite=allow_nonfinite).float().cpu()
    name = getattr(model, "model_name", model_name) or "model"
    out = Path(out) if out is not None else Path(f"{name}.{'xml' if format == 'openvino' else format}")
    result = {"path": str(out), "format": format, "dynamic_hw": dynamic_hw, "batch": batch,
              "input_size": list(resolve_preprocessing(model)["input_size"])}
    if format == "openvino":
        return {**result, "max_abs_diff": _export_openvino(model, out, dynamic_hw, batch, atol)}
    write, check = (_write_onnx, check_onnx) if format == "onnx" else (_write_pt2, check_pt2)
    args = (dynamic_hw, opset, batch) if format == "onnx" else (dynamic_hw,)
    diffs: list[float] = []

    def write_checked(tmp: Path) -> None:
        write(model, tmp, *args)
        diffs.append(check(model, tmp, dynamic_hw=dynamic_hw, **({"batch": batch} if format == "onnx" else {})))
        if not diffs[-1] <= atol:  # also catches NaN
            raise _Rejected

    try:
        path = write_with(out, write_checked)
    except _Rejected:
        raise OutputError(f"{out}: the export differs from PyTorch by {diffs[-1]:.3g} (tolerance --atol "
                          f"{atol:g}); nothing was written") from None
    return {**result, "path": str(path), "max_abs_diff": diffs[-1]}
