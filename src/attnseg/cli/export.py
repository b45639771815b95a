"""``attnseg export``: write a checkpoint's inference path as ONNX or TorchScript, verified against PyTorch."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript (checked against PyTorch)",
        description="Export the eval-mode inference path (input image → 'out' logits) of an attnseg checkpoint. "
                    "The exported file is loaded back (onnxruntime / torch.jit.load), run on the example input "
                    "and compared with PyTorch; the max abs difference is printed and the command fails if it "
                    "exceeds the tolerance.")
    p.add_argument("--checkpoint", "-c", required=True, help="attnseg checkpoint (.pt)")
    p.add_argument("--format", "-f", dest="fmt", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", "-o", default=None,
                   help="output file (default: next to the checkpoint, .onnx or .ts.pt)")
    p.add_argument("--dynamic", action="store_true",
                   help="dynamic batch and spatial axes (checked on a second input size too)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="spatial size of the example input, e.g. 128 128 128 (default: the training patch size "
                        "stored in the checkpoint, else the smallest size the model accepts)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the example input")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument("--exporter", choices=("auto", "legacy", "dynamo"), default="auto",
                   help="ONNX exporter: TorchScript-based 'legacy', torch.export-based 'dynamo', or 'auto' "
                        "(legacy, then dynamo if it fails)")
    p.add_argument("--atol", type=float, default=1e-4,
                   help="tolerance of the parity check, scaled by max(1, max |logit|)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnseg.infer.export import export_checkpoint

    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    res = export_checkpoint(args.checkpoint, fmt=args.fmt, out=args.out, input_size=args.input_size,
                            dynamic=args.dynamic, opset=args.opset, exporter=args.exporter,
                            batch_size=args.batch_size, check=not args.no_check, atol=args.atol)
    print(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {res.fmt} via {res.exporter}"
          f"{', dynamic batch/spatial axes' if res.dynamic else ''})")
    print(f"input {list(res.input_shape)} -> logits {list(res.output_shape)}")
    if res.max_abs_diff is not None:
        shapes = ", ".join("x".join(map(str, s)) for s in res.checked_shapes)
        print(f"parity with PyTorch: max abs diff {res.max_abs_diff:.3g} on inputs {shapes}")
    for note in res.notes:
        print(f"note: {note}")
    return 0
