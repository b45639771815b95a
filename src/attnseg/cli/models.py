"""``attnseg models``: table of registered models, or one model's settings (``--show``)."""

from __future__ import annotations

import argparse
import fnmatch
import inspect
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list registered models with parameter counts; --show NAME: its settings",
                       description="List registered models: name, aliases, family, dims, parameters at the "
                                   "documented default configuration, description. PATTERN matches names and "
                                   "aliases (shell-style; a plain word matches anywhere in them). With --show, "
                                   "print the constructor settings of the model named PATTERN and their defaults.")
    p.add_argument("pattern", nargs="?", default=None, help="name, alias or shell-style filter, e.g. 'panet*'")
    p.add_argument("--show", action="store_true", help="print the settings (keyword arguments) of one model")
    p.add_argument("--no-params", action="store_true", help="skip building models to count parameters")
    p.set_defaults(func=run)


def matching_entries(pattern: str | None) -> list[Any]:
    """Registered model entries whose name or an alias matches ``pattern`` (a plain word: anywhere)."""
    from attnseg.models import MODELS

    entries = MODELS.entries()
    if not pattern:
        return entries
    pat = pattern.lower() if any(c in pattern for c in "*?[") else f"*{pattern.lower()}*"
    return [e for e in entries if any(fnmatch.fnmatchcase(n.lower(), pat) for n in (e.name, *e.aliases))]


def model_rows(pattern: str | None = None, with_params: bool = True) -> list[dict]:
    """One dict per matching model: name, aliases, family, dims, params (at the defaults), description."""
    from attnseg.models import count_parameters

    rows = []
    for e in matching_entries(pattern):
        params = count_parameters(e.build()) if with_params else None
        rows.append({"name": e.name, "aliases": ",".join(e.aliases), "family": e.family,
                     "dims": "/".join(f"{d}D" for d in e.dims), "params": params,
                     "description": e.description})
    return rows


def model_settings(name: str) -> tuple[Any, list[dict[str, str]]]:
    """``(entry, rows)``: every keyword the model's constructor takes, with the default the
    registry applies (``registry``) or the constructor's own (``constructor``) and its type."""
    import typing

    from attnseg.models import get_model_entry

    entry = get_model_entry(name)
    fn = entry.fn
    target: Any = fn
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        try:  # a factory forwarding **kwargs: the settings are those of the class it builds
            cls = typing.get_type_hints(fn).get("return")
        except Exception:  # unresolvable annotations: fall back to the factory's own signature
            cls = None
        if isinstance(cls, type):
            target = cls.__init__
    rows = []
    seen = set()
    for pname, p in inspect.signature(target).parameters.items():
        if pname == "self" or p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        seen.add(pname)
        if pname in entry.defaults:
            default, src = entry.defaults[pname], "registry"
        elif p.default is not inspect.Parameter.empty:
            default, src = p.default, "constructor"
        else:
            default, src = "(required)", "constructor"
        ann = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        rows.append({"setting": pname, "default": repr(default) if src != "constructor" or
                     default != "(required)" else default, "type": str(ann or ""), "from": src})
    for k, v in entry.defaults.items():
        if k not in seen:
            rows.append({"setting": k, "default": repr(v), "type": "", "from": "registry"})
    return entry, rows


def run(args: argparse.Namespace) -> int:
    import sys

    from attnseg.report.table import print_table

    if args.show:
        if not args.pattern:
            raise ValueError("--show needs a model name, e.g. attnseg models unet --show")
        entry, rows = model_settings(args.pattern)
        alias = f" (alias {args.pattern})" if args.pattern != entry.name else ""
        print_table(rows, ["setting", "default", "type", "from"],
                    title=f"{entry.name}{alias}: {entry.description}")
        print(f"set them with: attnseg train --model {entry.name} --set model.kwargs.SETTING=VALUE")
        return 0
    rows = model_rows(args.pattern, not args.no_params)
    if not rows:
        from attnseg.attention import list_attention

        att = [a for a in list_attention() if fnmatch.fnmatchcase(a, args.pattern)
               or args.pattern.strip("*?") in a]
        hint = (f"; attention module(s) {', '.join(att)} match it (see `attnseg attention`; use them with "
                f"--attention on any backbone)" if att else "; `attnseg models` lists them all")
        print(f"attnseg models: no model matches {args.pattern!r}{hint}", file=sys.stderr)
        return 1
    print_table(rows, ["name", "aliases", "family", "dims", "params", "description"],
                title="attnseg models")
    return 0
