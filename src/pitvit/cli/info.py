"""`pitvit info`: what a weight file or checkpoint holds, without building a model."""
from __future__ import annotations

from pitvit.utils.names import INFO_FORMATS

DESCRIPTION = """\
Print what a weight file or training checkpoint holds, without building a model: its format and key
layout, the registered variant its shapes match, its classes and input size, for a training checkpoint
the epochs done and the last metrics, where it came from (pitvit version, git commit, torch/timm/Python
versions, command, device, processes), and whether its content hashes were verified.

examples:
  pitvit info runs/pit_ti/last.pt
  pitvit info pit_ti.safetensors --format json
  pitvit info pit_ti_730.pth
"""


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("info", formatter_class=formatter, help="what a weight file or checkpoint holds",
                       description=DESCRIPTION)
    p.add_argument("file", help="a weight file (.pth, .pt, .safetensors, .pdparams), a training checkpoint "
                                "or a save_pretrained directory")
    p.add_argument("--format", default="text", choices=INFO_FORMATS, help="how to print it")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from pitvit.tools.info import describe_file, format_info

    d = describe_file(args.file)
    print(json.dumps(d, indent=2) if args.format == "json" else format_info(d))
    return 0
