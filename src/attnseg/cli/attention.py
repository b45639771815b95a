"""``attnseg attention``: table of registered attention modules."""

from __future__ import annotations

import argparse

# nominal feature-map size used to size the fixed-form slice modules in the table
NOMINAL_SIZE = (32, 32, 32)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="list registered attention modules with parameter counts",
                       description="List attention modules: name, aliases, family, 2D/3D support, parameters "
                                   "at --channels channels (3D; fixed-form slice modules sized for a "
                                   f"{'x'.join(map(str, NOMINAL_SIZE))} feature map), description.")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'slice*'")
    p.add_argument("--channels", type=int, default=32, help="channels for the parameter count (default 32)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.set_defaults(func=run)


def attention_rows(pattern: str | None = None, channels: int = 32) -> list[dict]:
    """One dict per registered module: name, aliases, family, dims, gated, params, description."""
    import inspect

    from attnseg.attention import ATTENTION

    if channels < 1:
        raise ValueError(f"--channels must be >= 1, got {channels}")
    rows = []
    for e in ATTENTION.entries(pattern):
        kw = {}
        params = inspect.signature(e.fn).parameters
        if "spatial_size" in params:
            kw["spatial_size"] = NOMINAL_SIZE
        if e.tags.get("gated"):
            kw["gate_channels"] = 2 * channels
        module = e.build(channels=channels, spatial_dims=3, **kw)
        rows.append({"name": e.name, "aliases": ",".join(e.aliases), "family": e.family,
                     "dims": "/".join(f"{d}D" for d in e.dims), "gated": "yes" if e.tags.get("gated") else "",
                     "params": sum(p.numel() for p in module.parameters()), "description": e.description})
    return rows


def run(args: argparse.Namespace) -> int:
    from attnseg.report.table import markdown_table, print_table

    rows = attention_rows(args.pattern, args.channels)
    if not rows:
        raise ValueError(f"no attention module matches {args.pattern!r}")
    cols = ["name", "aliases", "family", "dims", "gated", "params", "description"]
    if args.markdown:
        print(markdown_table(rows, cols), end="")
    else:
        print_table(rows, cols, title=f"attnseg attention modules (params at {args.channels} channels, 3D)")
    return 0
