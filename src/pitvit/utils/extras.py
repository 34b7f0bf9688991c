"""Optional dependencies: import one, or say in one line which pitvit extra installs it."""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError

__all__ = ["EXTRAS", "require"]

EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino",
          "matplotlib": "plot"}  # module -> the extra of pyproject.toml that installs it


def require(module: str) -> Any:
    """Import an optional dependency, or raise a one-line :class:`ConfigError` naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module, module)
        raise ConfigError(f"this needs {module}, which is not installed: pip install 'pitvit[{extra}]'") from None
