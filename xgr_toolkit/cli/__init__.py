"""The ``xgr`` command: one subcommand a module, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys

from . import import_hf, recommend

__all__ = ["main"]

COMMANDS = {"import-hf": import_hf, "recommend": recommend}


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


if __name__ == "__main__":
    sys.exit(main())
