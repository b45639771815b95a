"""Entry point of the ``attnseg`` command.

Each sub-command lives in its own module ``attnseg.cli.<module>`` exposing
``add_parser(subparsers)`` (which registers the parser and sets ``func``) and is listed
in :data:`COMMANDS`. Modules are imported when the parser is built; heavy imports belong
inside each command's ``run`` function so that ``attnseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from attnseg import __version__
from attnseg.runtime.errors import FaultError
from attnseg.runtime.fs import is_disk_full
from attnseg.runtime.optional import MissingExtraError

# command module names, in the order shown by --help
COMMANDS: tuple[str, ...] = (
    "models",
    "attention",
    "zoo",
    "convert",
    "data",
    "plan",
    "train",
    "predict",
    "evaluate",
    "report",
    "view",
    "cam",
    "export",
    "demo",
    "ablate",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attnseg",
        description="Attention-based segmentation of 2D and 3D medical images.",
    )
    parser.add_argument("--version", action="version", version=f"attnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"attnseg.cli.{name}")
        except ModuleNotFoundError as exc:  # command not built yet
            if exc.name == f"attnseg.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (ValueError, FileNotFoundError, KeyError, FaultError, MissingExtraError) as exc:
        # user errors, faults of the environment (disk full, folder locked, ...) and a missing extra: one clear
        # line, no traceback
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"attnseg {args.command}: error: {msg}", file=sys.stderr)
        return 1
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        # any other write that met a full disk (logs, metrics, configs): one line naming the file
        print(f"attnseg {args.command}: error: {exc.filename or '?'}: {exc.strerror} (disk full, quota or "
              f"ulimit -f); free space, then rerun (train: with --resume)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: no traceback (train prints how to resume before this)
        print(f"attnseg {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
