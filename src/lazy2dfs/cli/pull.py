"""``lazy2dfs pull``: a lazy pull through containerd's own API (``lazy2dfs.containerd``).

Its flags follow ctr's: ``-a/--address`` and ``-n/--namespace``, defaulting to
``CONTAINERD_ADDRESS`` and ``CONTAINERD_NAMESPACE``. It finds the daemon, and how the daemon
reaches registries, through the daemon's configuration (``--config``, ``LAZY2DFS_*``), and
reaches the registry the same way: plain HTTP for the daemon's ``registry.plain_http`` hosts
(and with ``--plain-http``), mirrors from the same ``registry.hosts_dir``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lazy2dfs import config, logfmt
from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.cli.serve import LOG_LEVELS

DEFAULT_CONTAINERD = "/run/containerd/containerd.sock"


def register(subparsers: Subparsers) -> None:
    pull = subparsers.add_parser(
        "pull",
        help="pull an image into containerd lazily (layers mount on first read)",
        description="Pulls REF into containerd: manifest and config are stored, each eStargz"
        " or zstd:chunked layer is mounted lazily by the lazy2dfs daemon, other layers are"
        " downloaded (and the pull says why, and how to make them lazy). Afterwards"
        " `ctr run --snapshotter lazy2dfs REF …` runs it. Refuses, before anything is"
        " stored, when the daemon is not running or would not reach the registry as this pull"
        " does (plain HTTP, mirrors, credentials).\n\n"
        "REF may name a 2DFS partition: host/model:v1--X1.Y1.X2.Y2 takes rows X1..X2 and"
        " columns Y1..Y2 of the image's field; several suffixes take their union, e.g."
        " model:v1--1.0.2.0--3.0.3.0.",
    )
    pull.add_argument("reference", metavar="REF", help="image reference, e.g. host/model:v1")
    pull.add_argument(
        "-a",
        "--address",
        "--containerd-address",
        dest="containerd_address",
        metavar="ADDRESS",
        type=Path,
        default=Path(os.environ.get("CONTAINERD_ADDRESS") or DEFAULT_CONTAINERD),
        help=f"containerd's socket (default $CONTAINERD_ADDRESS or {DEFAULT_CONTAINERD})",
    )
    pull.add_argument(
        "-n",
        "--namespace",
        default=os.environ.get("CONTAINERD_NAMESPACE") or "default",
        help="containerd namespace (default $CONTAINERD_NAMESPACE or default; CRI uses k8s.io)",
    )
    pull.add_argument("--snapshotter", default="lazy2dfs", help="proxy plugin name (lazy2dfs)")
    pull.add_argument(
        "--plain-http", action="store_true", help="reach the registry over HTTP (not TLS)"
    )
    pull.add_argument(
        "--hosts-dir",
        type=Path,
        help="containerd hosts.toml directory: mirrors and pull-through caches to fetch the"
        " manifest and config through, as the daemon does for layers (default: the daemon's"
        " registry.hosts_dir, /etc/containerd/certs.d unless configured)",
    )
    pull.add_argument(
        "--config",
        type=Path,
        help="the daemon's configuration, for its socket and registry settings"
        f" (default {config.DEFAULT_CONFIG_PATH})",
    )
    pull.add_argument("--json", action="store_true", help="print the pull report as JSON")
    pull.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    pull.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    # Imported here: the gRPC stubs are not needed by other commands.
    from lazy2dfs.containerd.client import ContainerdClient
    from lazy2dfs.containerd.pull import Puller
    from lazy2dfs.progress import Progress
    from lazy2dfs.registry_client import SyncRegistryClient, parse_reference
    from lazy2dfs.status import ControlClient

    logfmt.configure(args.log_level)
    daemon_config = config.load(args.config)
    plain_http = list(daemon_config.registry.plain_http)
    if args.plain_http:
        plain_http.append(parse_reference(args.reference).registry)
    hosts_dir = args.hosts_dir or daemon_config.registry.hosts_dir
    registry = SyncRegistryClient(hosts_dir=hosts_dir, plain_http=plain_http)
    containerd = ContainerdClient(args.containerd_address, args.namespace)
    try:
        report = Puller(
            containerd,
            registry,
            ControlClient(daemon_config.control_address),
            args.snapshotter,
            Progress(),
            str(args.config or config.DEFAULT_CONFIG_PATH),
        ).pull(args.reference)
    finally:
        containerd.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        print()
    return 0
