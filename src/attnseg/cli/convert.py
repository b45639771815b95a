"""``attnseg convert-checkpoint``: turn a checkpoint of another code base into an attnseg checkpoint."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-checkpoint",
        help="convert a reference checkpoint (e.g. PANet's) into an attnseg checkpoint",
        description="Read a checkpoint written by another code base and write an attnseg checkpoint "
                    "(loads with weights_only=True; rebuild with attnseg's checkpoint loader). The model "
                    "configuration is read from the weights where possible; --set overrides it.",
    )
    p.add_argument("input", metavar="IN", help="source checkpoint file")
    p.add_argument("output", metavar="OUT", help="attnseg checkpoint to write (atomically)")
    p.add_argument("--from", dest="source", default="panet-reference",
                   help="source format (converter name; default panet-reference)")
    p.add_argument("--arch", default=None,
                   help="architecture: a reference name (panet-reference: unet, attention, enhanced, cascade, "
                        "panet/fuse) or a registered model name (default: panet)")
    p.add_argument("--head", choices=["fcn", "parallel"], default=None,
                   help="PANet prior head (default: read from the weights)")
    p.add_argument("--clean", action="store_true",
                   help="drop parameters the reference stores but never uses (reference_layout=False)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=JSON",
                   help="model keyword override, value as JSON, e.g. --set 'strides=[1,2,2,2,2]' (repeatable)")
    p.set_defaults(func=run)


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # bare strings such as norm=batch
    return out


def run(args: argparse.Namespace) -> int:
    from attnseg.models import count_parameters
    from attnseg.models.convert import convert_checkpoint
    from attnseg.report.table import print_table

    kwargs = _parse_overrides(args.overrides)
    if args.head:
        kwargs["head"] = args.head
    if args.clean:
        kwargs["reference_layout"] = False
    result = convert_checkpoint(args.source, args.input, args.output, arch=args.arch, **kwargs)
    model = result.build()
    rows = [{"key": "model", "value": result.model_name},
            {"key": "parameters", "value": f"{count_parameters(model):,}"},
            {"key": "tensors", "value": len(result.state_dict)},
            {"key": "dropped (never used)", "value": len(result.source.get("dropped_unused", []))},
            {"key": "written", "value": args.output}]
    rows += [{"key": k, "value": v} for k, v in result.model_kwargs.items()]
    print_table(rows, ["key", "value"], title=f"converted {args.input} ({args.source})")
    return 0
