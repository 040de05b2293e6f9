"""``lazy2dfs serve``: the daemon containerd registers as a proxy snapshotter."""

from __future__ import annotations

import argparse
from pathlib import Path

from lazy2dfs import logfmt
from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.locations import DEFAULT_CONFIG_PATH

LOG_LEVELS = ["debug", "info", "warning", "error"]


def register(subparsers: Subparsers) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the snapshotter daemon containerd talks to",
        description="Runs the lazy2dfs daemon: containerd's proxy snapshotter plugin dials its"
        " gRPC socket (--address), lazily served layers appear in one FUSE mount under --root,"
        " and `lazy2dfs status` and `lazy2dfs pull` ask it over its control socket beside the"
        " gRPC socket. Every flag can also be set in the configuration file or as a LAZY2DFS_*"
        " variable (`lazy2dfs config default` lists them). Stops on SIGTERM or SIGINT.",
    )
    serve.add_argument("--root", type=Path, help="state directory (default /var/lib/lazy2dfs)")
    serve.add_argument(
        "--address", type=Path, help="gRPC unix socket (default /run/lazy2dfs/lazy2dfs.sock)"
    )
    serve.add_argument(
        "--config", type=Path, help=f"TOML configuration (default {DEFAULT_CONFIG_PATH})"
    )
    serve.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /status there (default: off)",
    )
    serve.add_argument(
        "--mirror-address",
        metavar="HOST:PORT",
        help="serve 2DFS partition tags to containerd (hosts.toml) here; loopback only",
    )
    serve.add_argument("--log-level", choices=LOG_LEVELS, help="least severe level logged (info)")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    # Imported here: the daemon pulls in FUSE and gRPC, which no other command needs.
    from lazy2dfs import config
    from lazy2dfs.daemon import Daemon

    cfg = config.load(
        args.config,
        overrides={
            "root": args.root,
            "address": args.address,
            "metrics_address": args.metrics_address,
            "mirror_address": args.mirror_address,
            "log_level": args.log_level,
        },
    )
    logfmt.configure(cfg.log_level)
    return Daemon(cfg).run()
