"""The ``lazy2dfs`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lazy2dfs import __version__, config, logfmt
from lazy2dfs.errors import Lazy2dfsError


def _serve(args: argparse.Namespace) -> int:
    from lazy2dfs.daemon import Daemon

    cfg = config.load(
        args.config,
        overrides={
            "root": args.root,
            "address": args.address,
            "metrics_address": args.metrics_address,
            "log_level": args.log_level,
        },
    )
    logfmt.configure(cfg.log_level)
    return Daemon(cfg).run()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lazy2dfs",
        description="containerd remote snapshotter that lazily loads ML model weights (2DFS).",
    )
    parser.add_argument("--version", action="version", version=f"lazy2dfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the snapshotter daemon containerd talks to")
    serve.add_argument("--root", type=Path, help="state directory (default /var/lib/lazy2dfs)")
    serve.add_argument(
        "--address", type=Path, help="gRPC unix socket (default /run/lazy2dfs/lazy2dfs.sock)"
    )
    serve.add_argument(
        "--config", type=Path, help=f"TOML configuration (default {config.DEFAULT_CONFIG_PATH})"
    )
    serve.add_argument("--metrics-address", help="HOST:PORT serving Prometheus /metrics")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.set_defaults(func=_serve)
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
