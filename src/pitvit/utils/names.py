"""The names the command line offers as choices, in a module that imports nothing, so that ``pitvit --help``
and argument errors answer at once instead of after importing torch and timm.

Each table has its one home here; the modules that act on the names (:mod:`pitvit.utils.device`,
:mod:`pitvit.models.serialization`, the tools) import them from here.
"""
from __future__ import annotations

__all__ = ["DEVICE_CHOICES", "PRECISIONS", "PRECISION_ALIASES", "AMP_CHOICES", "SAVE_FORMATS", "CONVERT_FORMATS",
           "EXPORT_FORMATS", "DEFAULT_OPSET", "PREDICT_FORMATS", "ZOO_FORMATS", "INFO_FORMATS", "DATASET_KINDS",
           "DATA_PIPELINES", "OPTIMIZERS", "DISTILL_MODES", "PROGRESS_BARS", "BACKENDS", "BACKEND_PRECISIONS",
           "DATA_FORMATS", "PACK_FORMATS", "SHUFFLE_CHOICES"]

DEVICE_CHOICES = ("auto", "cpu", "cuda")
# The precisions a model runs in, by name: the dtype autocast computes in (torch's name; None: no autocast) and
# the device types that compute it. One line per precision; pitvit.utils.precision acts on this table.
PRECISIONS = {
    "fp32": (None, ("cpu", "cuda")),
    "bf16": ("bfloat16", ("cpu", "cuda")),
    "fp16": ("float16", ("cuda",)),
}
PRECISION_ALIASES = {"none": "fp32"}  # the older spelling of fp32, still accepted
# auto: bf16 where the device computes it natively, else fp32
AMP_CHOICES = ("auto", *PRECISIONS, *PRECISION_ALIASES)
SAVE_FORMATS = ("safetensors", "official", "timm", "timm_legacy", "paddle")  # weight files pitvit writes
CONVERT_FORMATS = SAVE_FORMATS + ("pretrained",)  # and a save_pretrained folder
EXPORT_FORMATS = ("onnx", "pt2", "openvino")
BACKENDS = ("torch", "onnxruntime", "openvino")  # inference engines of predict, eval and benchmark
# The inference precisions: the vocabulary above, and int8 (OpenVINO: NNCF post-training quantization; ONNX
# Runtime: dynamic quantization).
BACKEND_PRECISIONS = AMP_CHOICES + ("int8",)
DEFAULT_OPSET = 17  # the first ONNX opset with LayerNormalization; onnxruntime >= 1.14 runs it
PREDICT_FORMATS = ("table", "json", "csv")
ZOO_FORMATS = ("table", "markdown", "json")
DATA_FORMATS = ("imagenet", "wds", "parquet")  # datasets read in place from archives, shards, Parquet files
# what a dataset folder holds: data.format, --data-format of eval, predict and pack (auto: detected)
DATASET_KINDS = ("auto", "imagefolder", "list", "fashion_mnist") + DATA_FORMATS
DATA_PIPELINES = ("cpu", "gpu", "memory")  # data.pipeline: where images are decoded and augmented
OPTIMIZERS = ("adamw", "adamp")  # optim.name
DISTILL_MODES = ("none", "hard", "soft")  # distill.mode
PROGRESS_BARS = ("auto", "on", "off")  # log.progress_bar
INFO_FORMATS = ("text", "json")
PACK_FORMATS = ("wds", "parquet")  # what `pitvit pack` writes
SHUFFLE_CHOICES = ("global", "shards")  # data.shuffle
