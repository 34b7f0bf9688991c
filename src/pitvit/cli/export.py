"""`pitvit export`: ONNX or torch.export archive, checked against PyTorch."""
from __future__ import annotations

from pitvit.cli import add_model_args
from pitvit.utils.names import DEFAULT_OPSET, EXPORT_FORMATS


def add_parser(sub, formatter) -> None:
    p = sub.add_parser(
        "export", formatter_class=formatter, help="export to ONNX, OpenVINO IR or a torch.export archive (.pt2)",
        description="Export a model in eval mode (distilled models: the mean of both heads) with a dynamic\n"
                    "batch (or --batch N), run the file once (onnxruntime, OpenVINO in fp32, or\n"
                    "torch.export.load) and compare it with PyTorch; the file is kept only when it agrees within\n"
                    "--atol. Preprocessing and class names are stored in the file (OpenVINO: in MODEL.json\n"
                    "beside MODEL.xml and MODEL.bin). Run the result with `pitvit predict --weights FILE\n"
                    "--backend onnxruntime|openvino`.")
    add_model_args(p, "export")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx", help="output format")
    p.add_argument("--dynamic-hw", action="store_true",
                   help="make height and width dynamic too (the position embedding is resized in the graph)")
    p.add_argument("--batch", type=int, default=None,
                   help="fix the batch size (onnx, openvino; default: any batch)%(default).0s")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="largest accepted absolute difference between the export and PyTorch")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="output file (default: MODEL.onnx, MODEL.xml or MODEL.pt2 in the working "
                        "directory)%(default).0s")
    p.set_defaults(func=run)


def run(args) -> int:
    from pitvit.tools.export import export_model

    r = export_model(args.model, args.weights, format=args.format, out=args.out, dynamic_hw=args.dynamic_hw,
                     opset=args.opset, ema=args.ema, atol=args.atol, batch=args.batch,
                     allow_nonfinite=args.allow_nonfinite)
    c, h, w = r["input_size"]
    shape = f"{r['batch'] or 'N'} x {c} x " + ("H x W" if r["dynamic_hw"] else f"{h} x {w}")
    print(f"wrote {r['path']} ({r['format']}, input {shape}); max abs diff vs PyTorch {r['max_abs_diff']:.3g}")
    return 0
