"""`pitvit convert`: PiT weights from one published format to another."""
from __future__ import annotations

from pitvit.cli import add_allow_nonfinite, model_name
from pitvit.utils.names import CONVERT_FORMATS

DESCRIPTION = """\
Convert PiT weights between formats. The source format is detected:
  official .pth (naver-ai/pit), timm state dicts (<= 0.6 and >= 0.9 key layouts),
  PaddleViT / Paddle-reproduction .pdparams (read without Paddle, and without running code from the file),
  .safetensors, pitvit training checkpoints and save_pretrained directories.
The destination format follows DST's extension unless --format is given:
  .safetensors -> safetensors, .pth/.pt -> official, .pdparams -> paddle, no extension -> pretrained.

examples:
  pitvit convert pit_s_809.pth pit_s.pdparams --model pit_s
  pitvit convert Best_PiT-EMA.pdparams pit_ti.safetensors --model pit_ti
  pitvit convert runs/exp/best.pt exported/ --ema
"""


def add_parser(sub, formatter) -> None:
    p = sub.add_parser("convert", formatter_class=formatter, help="convert PiT weights between formats",
                       description=DESCRIPTION)
    p.add_argument("src", help="checkpoint file or save_pretrained directory to read")
    p.add_argument("dst", help="file to write (or directory, for the pretrained format)")
    p.add_argument("--model", metavar="NAME", type=model_name,
                   help="the registered variant the weights belong to (see `pitvit models`); needed unless SRC "
                        "says it (pitvit checkpoints, save_pretrained directories)")
    p.add_argument("--format", choices=CONVERT_FORMATS,
                   help="what to write: safetensors; official (torch .pth, official keys); timm (timm >= 0.9 "
                        "keys) or timm_legacy (timm <= 0.6 keys), safetensors for a .safetensors DST, torch "
                        "otherwise; paddle (.pdparams for PaddleViT's paddle.load); pretrained (a directory with "
                        "config.json and model.safetensors). Unset: from DST's extension")
    p.add_argument("--ema", action="store_true",
                   help="convert the EMA weights of a training checkpoint instead of the raw ones")
    add_allow_nonfinite(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from pitvit.tools.convert import convert

    out = convert(args.src, args.dst, model=args.model, format=args.format, ema=args.ema,
                  allow_nonfinite=args.allow_nonfinite)
    print(f"read   {out['src']}: {out['detected']}")
    print(f"wrote  {out['dst']}: {out['format']} format, model {out['model']}, {out['bytes'] / 1e6:.2f} MB")
    return 0
