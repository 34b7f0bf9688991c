"""Optional dependencies: importing one, or a one-line error naming the extra that installs it.

pitvit's extras (``pyproject.toml``): ``plot`` (matplotlib: ``pitvit plot``, ``curves.png``), ``onnx`` (onnx and
onnxruntime: ``export --format onnx``, ``--backend onnxruntime``), ``openvino`` (openvino and nncf:
``--backend openvino``, ``--precision int8``, ``export --format openvino``), ``parquet`` (pyarrow), ``imagenet``
(scipy, for the devkit's ``meta.mat``), ``tensorboard`` (``log.tensorboard=true``).
"""
from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

from .errors import MissingExtraError

__all__ = ["EXTRAS", "require"]

# top-level module -> the extra that installs it
EXTRAS = {"matplotlib": "plot", "onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino",
          "pyarrow": "parquet", "scipy": "imagenet", "tensorboard": "tensorboard"}



def _quiet_onnxruntime() -> None:
    # onnxruntime's telemetry writes a device id under ~/.cache ($XDG_CACHE_HOME) when it is imported: off,
    # unless the user set the variable
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


def _quiet_openvino() -> None:
    # openvino's converter and nncf send usage telemetry through openvino_telemetry, which writes an id and
    # counters under ~/intel; both fall back to a stub when that package cannot be imported, and pitvit never
    # asks for it (a program that imported it already keeps it)
    sys.modules.setdefault("openvino_telemetry", None)


# what to do before importing a module, so that it writes nothing the user did not ask for
_BEFORE_IMPORT = {"onnxruntime": _quiet_onnxruntime, "openvino": _quiet_openvino, "nncf": _quiet_openvino}


def require(module: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` (dotted names too), or refuse on one line naming the extra to install.

    Args:
        module: what to import, e.g. ``"matplotlib.pyplot"``.
        purpose: what needs it, for the message (``"pitvit plot"``); default: "this".

    Raises:
        MissingExtraError: the module (or one it needs) is not installed; a ConfigError and an ImportError.
    """
    top = module.split(".")[0]
    if top in _BEFORE_IMPORT:
        _BEFORE_IMPORT[top]()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(top)
        how = f"pip install 'pitvit[{extra}]'" if extra else f"pip install {top}"
        missing = getattr(e, "name", None) or top
        raise MissingExtraError(f"{purpose or 'this'} needs {top}, which cannot be imported (no module "
                                f"{missing!r}): {how}") from None
