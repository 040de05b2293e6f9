"""The ``lazy2dfs`` command line: one module per command, each with a ``register`` that adds
its subparser. Library errors (``Lazy2dfsError``) are printed here, one line, exit status 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lazy2dfs import __version__
from lazy2dfs.cli import config, convert, keeper, pull, serve, status, tdfs
from lazy2dfs.cli.parser import CommandParser, register_completion
from lazy2dfs.errors import Lazy2dfsError


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog="lazy2dfs",
        description="containerd remote snapshotter that lazily loads ML model weights (2DFS)."
        " `lazy2dfs COMMAND --help` describes each command.",
    )
    parser.add_argument("--version", action="version", version=f"lazy2dfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (serve, keeper, pull, status, config, tdfs, convert):
        command.register(commands)
    register_completion(commands, parser)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parses ``argv``; an unknown argument is reported with the usage of the command it was
    given to (argparse alone reports it with the top-level usage)."""
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        parser: argparse.ArgumentParser = args.command_parser
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    try:
        return int(args.func(args))
    except Lazy2dfsError as exc:
        print(f"lazy2dfs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
