"""A node as a user sets it up: the lazy2dfs daemon and containerd, wired together, with the
daemon's partition mirror in front of chosen registries (the shipped hosts.toml)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.containerd import CONTAINERD_1_6, HOSTS_DIR, LocalContainerd, Release
from devstack.network import PrivateNetwork
from devstack.registry import free_port
from devstack.snapshotter import LocalSnapshotter


@dataclass(frozen=True)
class LocalNode:
    daemon: LocalSnapshotter
    containerd: LocalContainerd
    mirror: str | None  # host:port of the daemon's partition mirror, when it runs


@contextmanager
def local_node(
    work: Path,
    config: str = "",
    log_level: str = "info",
    cri: bool = False,
    release: Release = CONTAINERD_1_6,
    sandbox_image: str | None = None,
    mirror_for: Collection[str] = (),
    network: PrivateNetwork | None = None,
    other_snapshotters: Mapping[str, Path] | None = None,
    cri_snapshotter: str | None = None,
) -> Iterator[LocalNode]:
    """The daemon under ``work/s`` with ``config`` (TOML), and containerd ``release`` under
    ``work/c`` (``cri``: with its CRI plugin, ``sandbox_image`` its pause image). With
    ``mirror_for`` (registry hosts), the daemon serves
    its partition mirror on a free loopback port, reads containerd's hosts.toml directory,
    and each of those registries gets the shipped hosts.toml naming the mirror. With
    ``network``, the daemon runs in that namespace; ``other_snapshotters``: more proxy
    snapshotters containerd knows, by name and socket, ``cri_snapshotter`` the one CRI pulls
    into instead of lazy2dfs."""
    hosts_dir = work / "c" / HOSTS_DIR
    mirror = f"127.0.0.1:{free_port()}" if mirror_for else None
    if mirror is not None:
        config = f'mirror_address = "{mirror}"\n{config}\n[registry]\nhosts_dir = "{hosts_dir}"\n'
    daemon = LocalSnapshotter(work / "s", config=config, log_level=log_level, network=network)
    with daemon:
        containerd = LocalContainerd(
            work / "c",
            daemon.address,
            cri=cri,
            release=release,
            snapshotter_root=daemon.root,
            sandbox_image=sandbox_image,
            snapshotter_config=daemon.config_path,
            other_snapshotters=other_snapshotters,
            cri_snapshotter=cri_snapshotter,
        )
        for registry in mirror_for:
            assert mirror is not None
            containerd.route_through_mirror(registry, mirror)
        with containerd:
            yield LocalNode(daemon, containerd, mirror)
