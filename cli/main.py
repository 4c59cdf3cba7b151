"""``tradeflow <command>``: one entry point, one module per subcommand.

To add a subcommand, write ``cli/<name>.py`` with

- ``add_parser(subparsers)``: add its parser (``subparsers.add_parser("<name>", help=...)``,
  or ``command_parser`` for one whose ``--help`` shows the module's docstring);
- ``run(args) -> int``: do the work and return the exit code,

and list it in ``SUBCOMMANDS``. Modules are imported only when their command runs (``--help``
imports them all), so a slow import in one command does not slow the others down.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

#: subcommand name -> module that implements it.
SUBCOMMANDS: dict[str, str] = {
    "up": "cli.up",
    "migrate": "cli.migrate",
    "seed": "cli.seed",
    "courier-sim": "cli.courier_sim",
    "history": "cli.history",
    "check": "cli.check",
    "load": "cli.load",
    "repair": "cli.repair",
    "token": "cli.token",
    "events": "cli.events",
    "codec": "cli.codec",
}


def command_parser(
    subparsers: Subparsers, name: str, *, help: str, doc: str | None, **kwargs: Any
) -> argparse.ArgumentParser:
    """``tradeflow <name>``: listed with ``help``; its ``--help`` shows ``doc`` (the module's
    docstring) as it is written."""
    return subparsers.add_parser(
        name,
        help=help,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        **kwargs,
    )


def action_parsers(parser: argparse.ArgumentParser, name: str) -> Subparsers:
    """``tradeflow <name> <action>``: the chosen action lands in ``args.<name>_command``."""
    return parser.add_subparsers(dest=f"{name}_command", metavar="<action>", required=True)


def build_parser(names: Sequence[str] = tuple(SUBCOMMANDS)) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tradeflow", description="tradeflow: order-fulfilment engine on Temporal"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name in names:
        importlib.import_module(SUBCOMMANDS[name]).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # Import only the chosen command's module when the command is known; else build them all
    # so that argparse can print the full usage.
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    names = [chosen] if chosen in SUBCOMMANDS else list(SUBCOMMANDS)
    args = build_parser(names).parse_args(args_list)
    module = importlib.import_module(SUBCOMMANDS[args.command])
    return int(module.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
