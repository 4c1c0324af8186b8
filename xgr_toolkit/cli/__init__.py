"""The ``xgr`` command: one subcommand a module, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

from . import bench, eval, export, import_hf, load, package, recommend, sid, train

__all__ = ["main"]

COMMANDS = {"bench": bench, "export": export, "import-hf": import_hf, "load": load, "package": package,
            "recommend": recommend, "sid": sid, "train": train, "eval": eval}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xgr", description="Generative-recommendation serving toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.__doc__.splitlines()[0]))
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, FileNotFoundError) as err:  # our validation errors: a message, not a traceback
        print(f"xgr {args.command}: error: {err}", file=sys.stderr)
        return 2


