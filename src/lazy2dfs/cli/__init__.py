"""The ``lazy2dfs`` command line: one module per command, each with a ``register`` that adds
its subparser. Library errors (``Lazy2dfsError``) are printed here, one line, exit status 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lazy2dfs import __version__
from lazy2dfs.cli import config, convert, pull, serve, status, tdfs
from lazy2dfs.errors import Lazy2dfsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazy2dfs",
        description="containerd remote snapshotter that lazily loads ML model weights (2DFS).",
    )
    parser.add_argument("--version", action="version", version=f"lazy2dfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in (serve, pull, status, config, tdfs, convert):
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except Lazy2dfsError as exc:
        print(f"lazy2dfs: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
