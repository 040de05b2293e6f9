"""``lazy2dfs pull``: a lazy pull through containerd's own API (``lazy2dfs.containerd``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lazy2dfs import logfmt
from lazy2dfs.cli.serve import LOG_LEVELS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pull = subparsers.add_parser(
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
    pull.add_argument(
        "--hosts-dir",
        type=Path,
        default=Path("/etc/containerd/certs.d"),
        help="containerd hosts.toml directory: mirrors and pull-through caches to fetch the"
        " manifest and config through, as the daemon's registry.hosts_dir does for layers"
        " (default /etc/containerd/certs.d)",
    )
    pull.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    pull.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    # Imported here: the gRPC stubs are not needed by other commands.
    from lazy2dfs.containerd.client import ContainerdClient
    from lazy2dfs.containerd.pull import Puller
    from lazy2dfs.registry_client import SyncRegistryClient, parse_reference

    logfmt.configure(args.log_level)
    plain_http = [parse_reference(args.reference).registry] if args.plain_http else False
    containerd = ContainerdClient(args.containerd_address, args.namespace)
    try:
        registry = SyncRegistryClient(hosts_dir=args.hosts_dir, plain_http=plain_http)
        Puller(containerd, registry, args.snapshotter).pull(args.reference)
    finally:
        containerd.close()
    return 0
