"""``lazy2dfs config``: print the default configuration or its reference, check a file.

What is printed is generated from ``config.Config`` by ``config_docs``, imported when the
command runs: every command's parser is built at each start, and the configuration model
(pydantic) is what ``lazy2dfs pull`` and ``lazy2dfs status --health`` need not load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.locations import DEFAULT_CONFIG_PATH


def _default(args: argparse.Namespace) -> int:
    from lazy2dfs.cli.config_docs import default_toml

    print(default_toml(), end="")
    return 0


def _check(args: argparse.Namespace) -> int:
    # The environment is left out: the question is whether the file is valid, and a
    # LAZY2DFS_* variable in this shell must neither hide nor cause a problem in it.
    from lazy2dfs import config

    config.load(args.file, env={})
    print(f"{args.file}: valid")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from lazy2dfs.cli.config_docs import markdown

    print(markdown(), end="")
    return 0


def register(subparsers: Subparsers) -> None:
    """Adds ``lazy2dfs config`` to the command line."""
    parser = subparsers.add_parser(
        "config",
        help="print the default configuration, or check a configuration file",
        description=f"The daemon's configuration ({DEFAULT_CONFIG_PATH}, or `serve"
        " --config`): print it with every option described, or check a file.",
    )
    commands = parser.add_subparsers(dest="config_command", required=True, metavar="COMMAND")
    default = commands.add_parser(
        "default",
        help="print the full default configuration as TOML, with every option's help",
        description="Prints every option with its description, type, default and environment"
        f" variable, as TOML: `lazy2dfs config default > {DEFAULT_CONFIG_PATH}` is a"
        " valid starting point.",
    )
    default.set_defaults(func=_default)
    check = commands.add_parser(
        "check",
        help="validate a configuration file (exit status 1)",
        description="Validates FILE as the daemon would read it (LAZY2DFS_* variables left"
        " out) and names every problem; exit status 1 if there is one.",
    )
    check.add_argument("file", metavar="FILE", type=Path, help="TOML file, e.g. /etc/lazy2dfs/…")
    check.set_defaults(func=_check)
    docs = commands.add_parser(
        "docs",
        help="print docs/configuration.md (Markdown)",
        description="Prints the configuration reference (docs/configuration.md) as Markdown.",
    )
    docs.set_defaults(func=_docs)
