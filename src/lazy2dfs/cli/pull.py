"""``lazy2dfs pull``: a lazy pull through containerd's own API, done by the daemon.

Its flags follow ctr's: ``-a/--address`` and ``-n/--namespace``, defaulting to
``CONTAINERD_ADDRESS`` and ``CONTAINERD_NAMESPACE``. It finds the daemon through the daemon's
configuration (``--config``, ``LAZY2DFS_*``) and asks it, over its control socket, to pull
(``lazy2dfs.containerd.pull_service``): the daemon reaches the registry with its own settings
and credentials, plus ``--plain-http`` and ``--hosts-dir`` when given (and refuses, with the
fix, when its layer reads would not reach the registry that way). This command prints the
daemon's progress and report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lazy2dfs import logfmt
from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.cli.serve import LOG_LEVELS
from lazy2dfs.locations import DEFAULT_CONFIG_PATH, daemon_control_address

DEFAULT_CONTAINERD = "/run/containerd/containerd.sock"


def register(subparsers: Subparsers) -> None:
    pull = subparsers.add_parser(
        "pull",
        help="pull an image into containerd lazily (layers mount on first read)",
        description="Pulls REF into containerd: manifest and config are stored, each eStargz"
        " or zstd:chunked layer is mounted lazily by the lazy2dfs daemon, other layers are"
        " downloaded (and the pull says why, and how to make them lazy). Afterwards"
        " `ctr run --snapshotter lazy2dfs REF …` runs it. The daemon does the pull, with its"
        " registry settings and credentials. Refuses, before anything is stored, when the"
        " daemon is not running, cannot fetch the image, or would not read its layers as"
        " --plain-http or --hosts-dir ask.\n\n"
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
        f" (default {DEFAULT_CONFIG_PATH})",
    )
    pull.add_argument("--json", action="store_true", help="print the pull report as JSON")
    pull.add_argument("--log-level", default="warning", choices=LOG_LEVELS)
    pull.set_defaults(func=_pull)


def _pull(args: argparse.Namespace) -> int:
    # Only what asking the daemon takes: the daemon does the pull (``containerd.pull_service``).
    from lazy2dfs.progress import Progress
    from lazy2dfs.status import ControlClient, PullRequest

    logfmt.configure(args.log_level)
    request = PullRequest(
        reference=args.reference,
        containerd_address=str(args.containerd_address.absolute()),
        namespace=args.namespace,
        snapshotter=args.snapshotter,
        plain_http=args.plain_http,
        hosts_dir=str(args.hosts_dir.absolute()) if args.hosts_dir else "",
        config_path=str(args.config or DEFAULT_CONFIG_PATH),
    )
    report = ControlClient(daemon_control_address(args.config)).pull(request, Progress())
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    return 0
