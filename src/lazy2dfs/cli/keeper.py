"""``lazy2dfs keeper``: the FUSE keeper of a root, in the foreground, for ``fuse.keeper =
external`` (e.g. a container of its own beside the daemon's, which kubelet restarts on its
own)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from lazy2dfs.cli.parser import Subparsers
from lazy2dfs.locations import DEFAULT_CONFIG_PATH


def register(subparsers: Subparsers) -> None:
    keeper = subparsers.add_parser(
        "keeper",
        help="hold the FUSE mount of a root, for a daemon with fuse.keeper = external",
        description="Mounts <root>/fuse and relays its requests to whichever daemon of that"
        " root is connected, holding them while none is (fuse.restart_grace_seconds). Runs in"
        " the foreground until SIGTERM or until the mount is unmounted; one per root, as root."
        " The daemon starts one itself unless its configuration says fuse.keeper = external.",
    )
    keeper.add_argument("--root", type=Path, help="the daemon's root (default /var/lib/lazy2dfs)")
    keeper.add_argument(
        "--config", type=Path, help=f"TOML configuration (default {DEFAULT_CONFIG_PATH})"
    )
    keeper.set_defaults(func=_keep)


def _keep(args: argparse.Namespace) -> int:
    # Imported here: FUSE, which no other command but serve needs.
    from lazy2dfs import config
    from lazy2dfs.fuse.session import Keeper

    cfg = config.load(args.config, overrides={"root": args.root})
    cfg.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    keeper = Keeper(cfg.root, cfg.fuse.restart_grace_seconds, external=True)
    keeper.prepare_mountpoint()
    argv = keeper.argv()
    # Replaced by the bare keeper: what holds the mount for the node's lifetime loads no
    # configuration model or CLI, and gets the signals sent to this process.
    os.execv(argv[0], argv)
