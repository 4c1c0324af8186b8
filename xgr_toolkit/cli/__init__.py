"""The ``xgr`` command: one subcommand a module, each with ``add_parser`` and ``run``.

Bad input never ends in a traceback: a value out of range is refused by argparse before any work starts
(:mod:`.options`), and the project's own validation errors (``ValueError`` and its subclasses ConfigError,
DataError, CatalogError, RequestError, ...; ``OSError`` for files) become one line and exit status 2.
Anything else is a bug and keeps its traceback; ``xgr --debug ...`` or ``XGR_DEBUG=1`` shows the traceback
of the validation errors too.
"""

from __future__ import annotations

import os
import sys

from . import bench, eval, export, import_hf, load, package, recommend, sid, train
from .options import Parser

__all__ = ["build_parser", "main"]

COMMANDS = {"bench": bench, "export": export, "import-hf": import_hf, "load": load, "package": package,
            "recommend": recommend, "sid": sid, "train": train, "eval": eval}
INPUT_ERRORS = (ValueError, OSError)  # what the project raises for bad values, files and data
CONVENTIONS = ("Every subcommand's --help shows its defaults. A count (--limit-users, --max-history, --k, ...) is an "
               "integer >= 1: 0 and negative numbers are refused, and an option left out means what its help says "
               "(all users, no limit, the model's config.yaml). Bad input is one line naming the option and exit "
               "status 2; --debug (or XGR_DEBUG=1) shows the traceback.")


def build_parser() -> Parser:
    parser = Parser(prog="xgr", description="Generative-recommendation serving toolkit.", epilog=CONVENTIONS)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an input error too (or set XGR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        doc = module.__doc__.splitlines()[0]
        module.add_parser(sub.add_parser(name, help=doc, description=doc))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit:  # --help, or a value refused: argparse has printed it
        return exit.code
    try:
        return COMMANDS[args.command].run(args) or 0
    except INPUT_ERRORS as err:
        if args.debug or os.environ.get("XGR_DEBUG", "") not in ("", "0"):
            raise
        command = " ".join(filter(None, (args.command, getattr(args, "sid_command", None))))
        print(f"xgr {command}: error: " + " ".join(str(err).splitlines()), file=sys.stderr)
        return 2
