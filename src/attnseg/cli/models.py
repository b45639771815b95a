"""``attnseg models``: table of registered models."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts",
                       description="List registered models: name, family, dims, parameters at the "
                                   "documented default configuration, description.")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'panet*'")
    p.add_argument("--no-params", action="store_true", help="skip building models to count parameters")
    p.set_defaults(func=run)


def model_rows(pattern: str | None = None, with_params: bool = True) -> list[dict]:
    """One dict per registered model: name, family, dims, params (at the defaults), description."""
    from attnseg.models import MODELS, count_parameters

    rows = []
    for e in MODELS.entries(pattern):
        params = count_parameters(e.build()) if with_params else None
        rows.append({"name": e.name, "aliases": ",".join(e.aliases), "family": e.family,
                     "dims": "/".join(f"{d}D" for d in e.dims), "params": params,
                     "description": e.description})
    return rows


def run(args: argparse.Namespace) -> int:
    from attnseg.report.table import print_table

    rows = model_rows(args.pattern, not args.no_params)
    print_table(rows, ["name", "aliases", "family", "dims", "params", "description"],
                title="attnseg models")
    return 0
