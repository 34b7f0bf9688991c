"""Inference backends: one compiled predictor over PyTorch, ONNX Runtime or OpenVINO, in one named precision.

:func:`load_predictor` takes a model, a weights file or a file written by ``pitvit export`` (``.onnx``, OpenVINO
``.xml``) and returns a :class:`Predictor`: a callable from a batch of preprocessed images (N, C, H, W) to fp32
logits (or, with ``output="features"``, the features the head reads). The precision is always explicit:

- ``fp32`` runs exactly what PyTorch runs (within 1e-4 on the logits on every backend);
- ``bf16`` needs a CPU that computes it natively (AMX or AVX-512 BF16) and is refused elsewhere, naming what
  the CPU lacks; OpenVINO is always given ``INFERENCE_PRECISION_HINT`` (its CPU plugin would otherwise pick bf16
  by itself on such CPUs and change the numbers without saying so);
- ``auto`` is bf16 where the device computes it natively and fp32 elsewhere (ONNX Runtime: fp32, its CPU provider
  has no bf16 kernels); the precision that ran is :attr:`Predictor.precision`;
- ``int8`` on OpenVINO quantizes with NNCF's post-training quantization on calibration images (a folder, or the
  training data named in a pitvit run checkpoint) and measures its top-1 agreement with fp32 on other images of
  the same set; on ONNX Runtime it is ONNX Runtime's dynamic quantization of the linear layers (``quantize_dynamic``;
  the convolutions stay fp32): int8 weights, activations quantized on the fly from their range over each call's
  batch (so an image's logits move slightly with the images batched with it), which needs no calibration data:
  images given there only measure the top-1 agreement with fp32 (without them it is not measured). The figure is
  logged and stored beside the quantized model.

Conversion happens in memory (PyTorch -> ONNX for ONNX Runtime, ``openvino.convert_model`` on the module for
OpenVINO; int8 then quantizes the converted graph) and the result is cached on disk under a key made of the
weights' content digest (``state_dict_digest``), the architecture, the backend and its version, the input size,
the batch, the precision and the output, so the second call skips the conversion. The cache folder is
``cache_dir``, else ``$XDG_CACHE_HOME/pitvit``, else ``~/.cache/pitvit`` (XDG's default); every write into it is
logged with its path, and ``cache_dir="none"`` converts in memory each time. A conversion that fails names the
operation and raises; nothing falls back to another backend.

Each backend runs ``threads`` threads (default :func:`pitvit.utils.cpus.usable_cpus`: the cores this process may
use), so backends are compared fairly and none oversubscribes a shared machine. An OpenVINO model of any batch
also compiles a copy fixed to batch 1 on the first batch of one and runs such batches on it (faster at batch 1
than the graph of any batch: about 10% on pit_ti, 2 threads, on one machine).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from pitvit.models import resolve_preprocessing
from pitvit.utils.device import cpu_bf16_support, resolve_device
from pitvit.utils.errors import CheckpointError, ConfigError
from pitvit.utils.extras import require
from pitvit.utils.io import write_files
from pitvit.utils.names import BACKEND_PRECISIONS, BACKENDS
from pitvit.utils.precision import amp_dtype, autocast, resolve_amp

from .export import convert_openvino, export_onnx, openvino_files
from .imagenet import class_names_for
from .loading import load_model

__all__ = ["BACKENDS", "BACKEND_PRECISIONS", "Predictor", "load_predictor", "resolve_precision", "backend_version",
           "cache_folder", "default_calibration", "OV_HINTS"]

log = logging.getLogger(__name__)

OV_HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: the layers NNCF leaves in float run in fp32
CALIBRATION_IMAGES = 300  # NNCF's default subset size
CHECK_IMAGES = 200  # images held out of calibration on which int8 is compared with fp32
ORT_INT8_OPS = ("MatMul", "Gemm")  # what ONNX Runtime's int8 quantizes (see _ort_quantize)


def backend_version(backend: str) -> str:
    """The installed version of a backend's library (part of the cache key)."""
    if backend == "torch":
        return torch.__version__
    mod = require(backend)
    return str(getattr(mod, "__version__", None) or mod.get_version())


# ---------------------------------------------------------------------------- precision
def _require_native_bf16(what: str) -> None:
    if cpu_bf16_support() is None:
        raise ConfigError(f"{what}: this CPU lacks AVX-512 BF16 (avx512_bf16) and AMX (amx_bf16), so bf16 would "
                          f"be emulated and slower than fp32; use --precision fp32 (or auto)")


def resolve_precision(name: str, backend: str = "torch", device: str | torch.device = "cpu") -> str:
    """The precision a backend runs for ``name`` (``auto``, ``fp32``/``none``, ``bf16``, ``fp16``, ``int8``);
    ``auto`` is resolved (and logged) as :func:`pitvit.utils.device.resolve_amp` resolves it.

    Raises:
        ConfigError: an unknown name or backend, or a precision the backend or device cannot run natively
            (bf16 on a CPU without AMX or AVX-512 BF16, fp16 on a CPU, int8 on torch).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    name = "fp32" if name == "none" else name
    if name not in BACKEND_PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of {', '.join(BACKEND_PRECISIONS)}")
    device = resolve_device(device) if backend == "torch" else torch.device("cpu")
    if name == "auto":
        if backend == "onnxruntime":
            log.info("precision auto on onnxruntime: fp32 (its CPU provider has no bf16 kernels)")
            return "fp32"
        return resolve_amp("auto", device)
    if name == "int8" and backend not in ("openvino", "onnxruntime"):
        raise ConfigError(f"--precision int8 runs on --backend openvino (NNCF post-training quantization) or "
                          f"onnxruntime (dynamic quantization), not on {backend}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device (--backend torch --device cuda); on the CPU "
                          "use bf16 or fp32")
    if name == "bf16":
        if backend == "onnxruntime":
            raise ConfigError("--precision bf16: onnxruntime's CPU provider has no bf16 kernels; use --backend "
                              "openvino or torch, or --precision fp32")
        if device.type == "cpu":
            _require_native_bf16("--precision bf16")
    return name


# ---------------------------------------------------------------------------- the predictor
@dataclass
class Predictor:
    """A model compiled for one backend and precision: ``predictor(images)`` -> fp32 logits (or features).

    Attributes:
        backend: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: what runs (never ``auto``).
        threads: threads the backend uses.
        input_size: (C, H, W) the model takes.
        output: ``logits`` or ``features``.
        model_name: the variant (``""`` when an exported file does not say).
        class_names: index -> name (empty for a headless model).
        preprocessing: ``pitvit.data.build_transform`` keyword arguments for evaluation.
        source: where the compiled model came from (``converted``, ``cache PATH``, ``file PATH``).
        info: facts stored with the model (int8: how it was quantized, and ``top1_agreement`` with fp32 and the
            images it was measured on, where there were images).
        setup_s: seconds from the call to a ready predictor.
        batch: the batch a graph was fixed to (``None``: any); other batches are cut or padded to it.
    """

    backend: str
    precision: str
    threads: int
    input_size: tuple[int, int, int]
    output: str
    model_name: str
    class_names: list[str]
    preprocessing: dict[str, Any]
    source: str
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    info: dict[str, Any] = field(default_factory=dict)
    setup_s: float = 0.0
    batch: int | None = None

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Logits (or features) for a batch of preprocessed images, as a CPU fp32 tensor."""
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float32).numpy()
        x = np.ascontiguousarray(images, dtype=np.float32)
        if self.batch is None or len(x) == self.batch:
            return torch.from_numpy(np.asarray(self.run(x), dtype=np.float32))
        outs = []
        for i in range(0, len(x), self.batch):  # a graph of fixed batch: whole batches, the last one padded
            part = x[i:i + self.batch]
            pad = np.zeros((self.batch - len(part),) + part.shape[1:], dtype=np.float32)
            outs.append(np.asarray(self.run(np.concatenate([part, pad]) if len(pad) else part))[:len(part)])
        return torch.from_numpy(np.concatenate(outs).astype(np.float32, copy=False))

    def as_module(self) -> nn.Module:
        """The predictor as an ``nn.Module`` (CPU tensors in and out), for loops written for modules."""
        return _AsModule(self)

    def describe(self) -> str:
        """One line: backend, precision, threads and where the model came from."""
        return f"{self.backend} {self.precision}, {self.threads} threads ({self.source})"


class _AsModule(nn.Module):
    def __init__(self, predictor: Predictor) -> None:
        super().__init__()
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(x)


class _Features(nn.Module):
    """The model up to the features its head reads (``forward_head(pre_logits=True)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # What an export's metadata reads: the same preprocessing, no classes.
        self.cfg, self.pretrained_cfg = model.cfg, model.pretrained_cfg
        self.model_name, self.num_classes = getattr(model, "model_name", ""), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """Where converted models are kept: ``cache_dir``, else ``$XDG_CACHE_HOME/pitvit``, else
    ``~/.cache/pitvit``; ``None`` for ``cache_dir="none"`` (convert in memory every time)."""
    if cache_dir is not None:
        return None if str(cache_dir) == "none" else Path(cache_dir)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "pitvit" if xdg else Path.home() / ".cache" / "pitvit"


def _cache_key(model: nn.Module, backend: str, precision: str, output: str, batch: int | None,
               calibration: str) -> str:
    from pitvit._version import __version__
    from pitvit.models import state_dict_digest

    parts = {"weights": state_dict_digest(model.state_dict()), "cfg": model.cfg.to_dict(), "backend": backend,
             "version": backend_version(backend), "input_size": list(resolve_preprocessing(model)["input_size"]),
             "batch": batch, "precision": precision, "output": output, "pitvit": __version__,
             "calibration": calibration}
    if backend == "openvino" and precision == "int8":
        parts["nncf"] = backend_version("nncf")
    if backend == "onnxruntime" and precision == "int8":
        parts["quantized_ops"] = ORT_INT8_OPS
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- conversions
def _onnx_bytes(module: nn.Module, batch: int | None) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        return export_onnx(module, Path(tmp) / "model.onnx", batch=batch).read_bytes()


def _ov_compile(ov_model: Any, precision: str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """A runner for an OpenVINO model on the CPU in ``precision``. A model of any batch also gets, on the first
    batch of one, a copy reshaped to batch 1 and compiled with the same settings, which runs batches of one
    (on one 2-core machine about 10% faster than the graph of any batch at batch 1); other batches run on the graph of any batch."""
    ov = require("openvino")
    config = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision], "INFERENCE_NUM_THREADS": threads,
              "PERFORMANCE_HINT": "LATENCY"}
    core = ov.Core()
    compiled = core.compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    any_batch = ov_model.input(0).get_partial_shape()[0].is_dynamic
    single: list[tuple[Any, Any]] = []  # (compiled, request) of the batch-1 copy, once compiled

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == 1 and any_batch:
            if not single:
                one = ov_model.clone()
                shape = one.input(0).get_partial_shape()
                shape[0] = 1
                one.reshape({one.input(0): shape})
                c = core.compile_model(one, "CPU", config)
                single.append((c, c.create_infer_request()))
            c, r = single[0]
            return r.infer({0: x})[c.output(0)].copy()
        return request.infer({0: x})[compiled.output(0)].copy()

    run.compiled = compiled  # type: ignore[attr-defined]  # tests read the hint back from it
    run.single = single  # type: ignore[attr-defined]
    return run


def _ort_session(model_bytes: bytes | str, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    run.session = session  # type: ignore[attr-defined]
    return run


def _torch_runner(module: nn.Module, precision: str, device: torch.device, threads: int,
                  compile: bool) -> Callable[[np.ndarray], np.ndarray]:
    if device.type == "cpu":
        torch.set_num_threads(threads)
    module = module.eval().to(device)
    fn = torch.compile(module) if compile else module
    dtype = amp_dtype(precision, device)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), autocast(device, dtype):
            return fn(torch.from_numpy(x).to(device)).float().cpu().numpy()

    return run


# ---------------------------------------------------------------------------- int8
def default_calibration(weights: Any) -> dict[str, Any] | None:
    """The training data a pitvit run checkpoint names (``{"path", "kind", "split"}``), or ``None``."""
    if not isinstance(weights, (str, os.PathLike)) or not Path(weights).is_file():
        return None
    from pitvit.models import read_checkpoint

    try:
        ckpt = read_checkpoint(weights)
    except CheckpointError:
        return None
    data = (ckpt.get("config") or {}).get("data") if isinstance(ckpt, dict) else None
    if not isinstance(data, dict) or "train_split" not in data:
        return None
    # "kind": the name data.format had in checkpoints written before it was renamed
    return {"path": data.get("path") or None, "kind": data.get("format", data.get("kind", "auto")),
            "split": data["train_split"]}


def _calibration_source(calibration: Any, weights: Any, required: bool = True) -> tuple[Any, str]:
    """The calibration images (a list of files, or a dataset spec) and a fingerprint of them for the cache key;
    ``(None, "")`` when there are none and they are not ``required``."""
    if calibration is None:
        calibration = default_calibration(weights)
    if calibration is None and not required:
        return None, ""
    if isinstance(calibration, dict):
        return calibration, json.dumps(calibration, sort_keys=True)
    if isinstance(calibration, np.ndarray):  # preprocessed images, (N, C, H, W)
        return calibration, hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()
    if calibration is not None:
        folder = Path(calibration)
        if not folder.is_dir():
            raise ConfigError(f"--calibration {calibration}: not a folder of images")
        from pitvit.data.images import is_image_file

        files = sorted(str(p) for p in folder.rglob("*") if p.is_file() and is_image_file(p.name))
        if not files:
            raise ConfigError(f"--calibration {calibration}: no images in this folder")
        stamp = hashlib.sha256("\n".join(f"{f}:{os.path.getsize(f)}" for f in files).encode()).hexdigest()
        return files, stamp
    raise ConfigError("--precision int8 on openvino needs calibration images: --calibration DIR (a few hundred "
                      "images like the ones to classify; a pitvit run checkpoint defaults to its own training "
                      "data), or --backend onnxruntime (dynamic quantization, no calibration)")


Checks = list[tuple[np.ndarray, "np.ndarray | None"]]  # check batches of images, with their labels where known


def _folder_labels(files: list[str], model: nn.Module) -> list[int] | None:
    """The labels of image files kept in class folders named after the model's classes (``DIR/CLASS/IMAGE``, the
    names a checkpoint stores), or ``None`` when any file's folder is not one of them."""
    index = {name: i for i, name in enumerate(getattr(model, "class_names", None) or [])}
    labels = [index.get(Path(f).parent.name) for f in files]
    return None if not labels or None in labels else labels  # type: ignore[return-value]


def _calibration_batches(source: Any, model: nn.Module,
                         calibrate: bool = True) -> tuple[list[np.ndarray], Checks]:
    """Calibration images (batches of one, as NNCF counts its samples) and held-out check batches with their
    labels where the source has them (a dataset; a folder of class folders named after the model's classes),
    drawn with a fixed seed from ``source``; ``calibrate=False`` (a quantization without calibration): only
    check batches."""
    from pitvit.data import build_dataset, build_transform
    from pitvit.data.images import SkippedSample, load_image

    transform = build_transform(False, **resolve_preprocessing(model), in_chans=model.cfg.in_chans)
    Item = Optional[tuple[torch.Tensor, Optional[int]]]
    if isinstance(source, np.ndarray):
        def get(i: int) -> Item:
            return torch.from_numpy(source[i]), None
        n = len(source)
    elif isinstance(source, list):
        labels = _folder_labels(source, model)

        def get(i: int) -> Item:
            img = load_image(source[i], strict=False)
            return None if isinstance(img, SkippedSample) else (transform(img), labels[i] if labels else None)
        n = len(source)
    else:
        dataset = build_dataset(source["path"], source["split"], kind=source["kind"], transform=transform)

        def get(i: int) -> Item:
            item = dataset[i]
            return None if isinstance(item, SkippedSample) else (item[0], int(item[1]))
        n = len(dataset)
    order = np.random.RandomState(0).permutation(n)[:(CALIBRATION_IMAGES if calibrate else 0) + CHECK_IMAGES]
    items = [t for t in (get(int(i)) for i in order) if t is not None]
    if not items:
        raise ConfigError("no readable calibration image")
    # Fewer images than both sets want: three fifths calibrate, the rest check.
    n_cal = 0 if not calibrate else (CALIBRATION_IMAGES if len(items) >= CALIBRATION_IMAGES + CHECK_IMAGES
                                     else max(1, len(items) * 3 // 5))
    cal = [torch.stack([items[i][0]]).numpy() for i in range(n_cal)]
    check: Checks = []
    for i in range(n_cal, len(items), 16):
        part = items[i:i + 16]
        labelled = all(label is not None for _, label in part)
        check.append((torch.stack([t for t, _ in part]).numpy(),
                      np.array([label for _, label in part]) if labelled else None))
    return cal, check


def _agreement(fp32_run: Callable, int8_run: Callable, check: Checks, what: str) -> dict[str, Any]:
    """The share of ``check`` images on which ``int8_run`` and ``fp32_run`` give the same top-1, and, where every
    image has its label, the top-1 accuracy of each (logged)."""
    same = total = right_fp32 = right_int8 = 0
    labelled = all(labels is not None for _, labels in check)
    for b, labels in check:
        top_fp32, top_int8 = fp32_run(b).argmax(-1), int8_run(b).argmax(-1)
        same += int((top_fp32 == top_int8).sum())
        total += len(b)
        if labelled:
            right_fp32 += int((np.asarray(top_fp32) == labels).sum())
            right_int8 += int((np.asarray(top_int8) == labels).sum())
    info: dict[str, Any] = {"top1_agreement": same / total, "agreement_images": total}
    log.info("int8: top-1 agreement with fp32 %.2f%% on %d images %s", 100 * same / total, total, what)
    if labelled:
        info.update(top1_fp32=right_fp32 / total, top1_int8=right_int8 / total)
        log.info("int8: top-1 accuracy on these labelled images: fp32 %.2f%%, int8 %.2f%%", 100 * right_fp32 / total,
                 100 * right_int8 / total)
    return info


def _quantize(ov_model: Any, model: nn.Module, source: Any, threads: int, fp32_run: Callable) -> tuple[Any, dict]:
    nncf = require("nncf")
    cal, check = _calibration_batches(source, model)
    n_cal = len(cal)
    log.info("int8: calibrating on %d images (NNCF post-training quantization)", n_cal)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout carries the results
        quantized = nncf.quantize(ov_model, nncf.Dataset(cal), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=n_cal)
    info: dict[str, Any] = {"quantization": "nncf post-training", "calibration_images": n_cal}
    if check:
        info.update(_agreement(fp32_run, _ov_compile(quantized, "int8", threads), check, "held out of calibration"))
    else:
        log.warning("int8: too few calibration images to hold any out; agreement with fp32 not measured")
    return quantized, info


def _ort_quantize(data: bytes, model: nn.Module, source: Any, threads: int,
                  fp32_run: Callable) -> tuple[bytes, Callable, dict]:
    """ONNX Runtime's dynamic quantization of an ONNX graph's matrix products (int8 weights; activations
    quantized in each call from their own range, so no calibration), a session for it, and its facts: the top-1
    agreement with ``fp32_run`` on images of ``source`` (not measured without images).

    Only MatMul and Gemm (the linear layers: attention, MLP, head) are quantized; the convolutions (patch
    embedding, pooling) stay fp32: ONNX Runtime's ConvInteger made pit_ti slower (2 threads: 23.9 ms at batch 1
    with it, 19.0 ms without, fp32 26.2 ms) and its logits further from fp32."""
    quantization = require("onnxruntime.quantization", "--precision int8 on onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(data)
        previous = logging.root.manager.disable
        logging.disable(logging.INFO)  # the quantizer logs a line per tensor on the root logger
        try:
            quantization.quant_pre_process(src, pre)  # shape inference and graph clean-up, as ONNX Runtime advises
            quantization.quantize_dynamic(pre, dst, weight_type=quantization.QuantType.QInt8,
                                          op_types_to_quantize=list(ORT_INT8_OPS))
        finally:
            logging.disable(previous)
        quantized = dst.read_bytes()
    run = _ort_session(quantized, threads)
    info: dict[str, Any] = {"quantization": f"onnxruntime dynamic (int8 weights of {', '.join(ORT_INT8_OPS)})"}
    if source is not None:
        info.update(_agreement(fp32_run, run, _calibration_batches(source, model, calibrate=False)[1],
                               "(dynamic quantization: none calibrated)"))
    else:
        log.warning("int8 on onnxruntime: no images given (--calibration DIR), agreement with fp32 not measured")
    return quantized, run, info


# ---------------------------------------------------------------------------- entry point
def _read_export(path: Path, backend: str, precision: str,
                 threads: int) -> tuple[Callable, dict[str, Any], int | None]:
    """A runner for a file ``pitvit export`` wrote, its metadata (model, preprocessing, class names), and the
    batch it was fixed to (``None``: any)."""
    if path.suffix == ".onnx":
        meta = {p.key: p.value for p in require("onnx").load(str(path), load_external_data=False).metadata_props}
    else:
        side = path.with_suffix(".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
    if backend == "torch":
        raise ConfigError(f"{path}: an exported file runs on --backend onnxruntime or openvino, not torch")
    if precision == "int8":
        raise ConfigError(f"{path}: int8 quantizes from the weights (--weights), not from an exported file")
    if backend == "onnxruntime":
        if path.suffix != ".onnx":
            raise ConfigError(f"{path}: onnxruntime reads .onnx files; run OpenVINO IR with --backend openvino")
        run = _ort_session(str(path), threads)
        first = run.session.get_inputs()[0].shape[0]  # type: ignore[attr-defined]
        return run, meta, first if isinstance(first, int) else None
    ov_model = require("openvino").Core().read_model(str(path))
    first = ov_model.input(0).get_partial_shape()[0]
    return _ov_compile(ov_model, precision, threads), meta, None if first.is_dynamic else first.get_length()


def load_predictor(source: nn.Module | str | os.PathLike | None = None, *, model_name: str | None = None,
                   backend: str = "torch", precision: str = "fp32", threads: int | None = None,
                   device: str | torch.device = "cpu", output: str = "logits", batch: int | None = None,
                   cache_dir: str | os.PathLike | None = None, calibration: str | os.PathLike | None = None,
                   ema: bool = False, compile: bool = False) -> Predictor:
    """A :class:`Predictor` for a model on a backend, in a precision.

    Args:
        source: a model (``pitvit.create_model``), weights (any file or folder ``pitvit.load_weights`` reads,
            or ``hf-hub:``), an ``.onnx`` or OpenVINO ``.xml`` from ``pitvit export``, or ``None`` (``model_name``
            with random weights).
        model_name: the registered variant (may be left out for weights that name their model).
        backend: ``torch``, ``onnxruntime`` or ``openvino``.
        precision: ``auto``, ``fp32`` (``none``), ``bf16``, ``fp16`` (CUDA) or ``int8`` (OpenVINO, ONNX Runtime).
        threads: threads the backend runs (default: the cores this process may use).
        device: for the torch backend (``auto``, ``cpu``, ``cuda``); the others run on the CPU.
        output: ``logits``, or ``features`` (what the head reads).
        batch: a fixed batch size for the converted graph (default: any batch).
        cache_dir: where converted models are kept (see :func:`cache_folder`); ``"none"``: no cache.
        calibration: folder of images for int8, a dataset spec from :func:`default_calibration`, or preprocessed
            images as an (N, C, H, W) array (default: the training data of a run checkpoint given as ``source``);
            OpenVINO calibrates on them and needs them, ONNX Runtime only measures its agreement with fp32 on them.
        ema: the EMA weights of a training checkpoint.
        compile: ``torch.compile`` the model (torch backend).

    Raises:
        ConfigError: an unknown backend or precision, one the hardware or backend cannot run, a missing extra
            (naming it), or a conversion the backend cannot do (naming the operation).
    """
    from pitvit.utils.cpus import usable_cpus

    started = time.perf_counter()
    precision = resolve_precision(precision, backend, device)
    if output not in ("logits", "features"):
        raise ConfigError(f"unknown output {output!r}; choose logits or features")
    if compile and backend != "torch":
        raise ConfigError("--compile is torch.compile: it applies to --backend torch only")
    threads = threads or usable_cpus()
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    if backend != "torch":
        require("onnxruntime" if backend == "onnxruntime" else "openvino")

    if isinstance(source, (str, os.PathLike)) and Path(source).suffix in (".onnx", ".xml"):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"exported model not found: {path}")
        if output != "logits":
            raise ConfigError(f"{path}: an exported file gives logits; features need the weights")
        run, meta, fixed = _read_export(path, backend, precision, threads)
        pre = json.loads(meta.get("pitvit_preprocessing", "null")) or {}
        return Predictor(backend, precision, threads, tuple(pre.get("input_size", ())), output,
                         meta.get("pitvit_model", ""), json.loads(meta.get("pitvit_class_names", "[]")), pre,
                         f"file {path}", run, setup_s=time.perf_counter() - started, batch=fixed)

    model = source if isinstance(source, nn.Module) else load_model(model_name, source, ema=ema)
    model = model.eval().float()
    name = str(getattr(model, "model_name", model_name) or "")
    pre = resolve_preprocessing(model)
    module: nn.Module = _Features(model) if output == "features" else model
    names = class_names_for(model) if output == "logits" else []

    def predictor(run: Callable, where: str, info: dict | None = None) -> Predictor:
        return Predictor(backend, precision, threads, tuple(pre["input_size"]), output, name, names, pre, where,
                         run, info or {}, setup_s=time.perf_counter() - started,
                         batch=batch if backend != "torch" else None)

    if backend == "torch":
        return predictor(_torch_runner(module, precision, resolve_device(device), threads, compile), "in memory")

    cal_source, cal_stamp = (_calibration_source(calibration, source, required=backend == "openvino")
                             if precision == "int8" else (None, ""))
    folder = cache_folder(cache_dir)
    entry = None
    if folder is not None:
        key = _cache_key(model, backend, precision, output, batch, cal_stamp)
        entry = folder / backend / f"{name or 'model'}-{key}"
    if entry is not None and (entry / "info.json").is_file():
        info = json.loads((entry / "info.json").read_text())
        if backend == "onnxruntime":
            run = _ort_session(str(entry / "model.onnx"), threads)
        else:
            run = _ov_compile(require("openvino").Core().read_model(str(entry / "model.xml")), precision, threads)
        log.info("%s %s: loaded from the cache %s", backend, precision, entry)
        return predictor(run, f"cache {entry}", info.get("facts", {}))

    model = model.cpu()
    info: dict[str, Any] = {}
    if backend == "onnxruntime":
        data = _onnx_bytes(module, batch)
        run = _ort_session(data, threads)
        if precision == "int8":
            data, run, info = _ort_quantize(data, model, cal_source, threads, run)
        files = {"model.onnx": data}
    else:
        ov_model = convert_openvino(module, batch=batch)
        if precision == "int8":
            ov_model, info = _quantize(ov_model, model, cal_source, threads, _ov_compile(ov_model, "fp32", threads))
        run, files = _ov_compile(ov_model, precision, threads), openvino_files(ov_model, "model")
    if entry is not None:
        files["info.json"] = json.dumps({"model": name, "backend": backend, "version": backend_version(backend),
                                         "precision": precision, "output": output, "batch": batch,
                                         "input_size": list(pre["input_size"]), "facts": info}, indent=1).encode()
        write_files({entry / k: v for k, v in files.items()})
        log.info("%s %s: converted and cached in %s", backend, precision, entry)
    return predictor(run, "converted", info)

