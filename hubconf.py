"""torch.hub entry points for pitvit, one per registered PiT variant.

From a local clone::

    model = torch.hub.load("/path/to/pitvit", "pit_ti", source="local")                   # random init
    model = torch.hub.load("/path/to/pitvit", "pit_s", source="local", weights="pit_s.pth")

``weights`` takes any checkpoint or ``save_pretrained`` folder that ``pitvit`` reads (official, timm,
Paddle, pitvit) or an ``hf-hub:`` reference; other keyword arguments go to ``pitvit.create_model``
(``num_classes``, ``img_size``, ``pretrained``, ...). Nothing is downloaded unless asked for (``pretrained=True``
or an ``hf-hub:`` reference). The clone's ``src`` folder goes first on ``sys.path``, so the clone's code is the
code that runs even where another pitvit is installed.
"""
import os as _os
import sys as _sys

dependencies = ["torch"]

_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from pitvit.models import create_model as _create_model  # noqa: E402
from pitvit.models import get_pretrained_cfg as _get_pretrained_cfg  # noqa: E402
from pitvit.models import list_models as _list_models  # noqa: E402


def _entry_point(name):
    def entry(weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    pre = _get_pretrained_cfg(name)
    paper = f" Paper ImageNet top-1: {pre.paper_top1}%." if pre.paper_top1 else ""
    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (f"PiT variant {name} (input {'x'.join(map(str, pre.input_size))}).{paper}\n\n"
                     "Args:\n    weights: a checkpoint file, save_pretrained folder or hf-hub: reference (default: random init).\n"
                     "    **kwargs: pitvit.create_model options (num_classes, img_size, drop_path_rate, ...).")
    return entry


# torch.hub finds entry points among the module's public callables: define one per variant.
for _name in _list_models():
    globals()[_name] = _entry_point(_name)
del _name
