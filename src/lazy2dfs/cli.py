"""The ``lazy2dfs`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lazy2dfs import __version__, config, config_docs, convert, logfmt, tdfs_cli
from lazy2dfs.errors import Lazy2dfsError
from lazy2dfs.status import register as register_status

LOG_LEVELS = ["debug", "info", "warning", "error"]


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


def _pull(args: argparse.Namespace) -> int:
    from lazy2dfs.containerd.client import ContainerdClient
    from lazy2dfs.containerd.pull import Puller
    from lazy2dfs.registry_client import SyncRegistryClient, parse_reference

    logfmt.configure(args.log_level)
    plain_http = [parse_reference(args.reference).registry] if args.plain_http else False
    containerd = ContainerdClient(args.containerd_address, args.namespace)
    try:
        Puller(containerd, SyncRegistryClient(plain_http=plain_http), args.snapshotter).pull(
            args.reference
        )
    finally:
        containerd.close()
    return 0


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
    serve.add_argument("--log-level", choices=LOG_LEVELS)
    serve.set_defaults(func=_serve)

    pull = commands.add_parser(
        "pull",
        help="pull an image into containerd lazily (layers mount on first read)",
        description="Pulls REF into containerd: manifest and config are stored, each eStargz"
        " layer is mounted lazily by the lazy2dfs snapshotter, other layers are downloaded."
        " Afterwards `ctr run --snapshotter lazy2dfs REF …` runs it.",
    )
    pull.add_argument("reference", metavar="REF", help="image reference, e.g. host/model:v1")
    pull.add_argument(
        "--containerd-address",
        type=Path,
        default=Path("/run/containerd/containerd.sock"),
        help="containerd's socket (default /run/containerd/containerd.sock)",
    )
    pull.add_argument("--namespace", default="default", help="containerd namespace (default)")
    pull.add_argument("--snapshotter", default="lazy2dfs", help="proxy plugin name (lazy2dfs)")
    pull.add_argument(
        "--plain-http", action="store_true", help="reach the registry over HTTP (not TLS)"
    )
    pull.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    pull.set_defaults(func=_pull)
    register_status(commands)
    config_docs.register(commands)
    tdfs_cli.register(commands)
    convert.register(commands)
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
