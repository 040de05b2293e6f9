"""The shipped containerd configs take nothing away: containerd (1.6 and 2.1, on this machine)
loads with them every plugin it loads without lazy2dfs's settings, and lazy2dfs besides.

containerd does not refuse a config that breaks a plugin: it logs a warning and boots without
the plugin. That is how ``linux/arm64`` unpack entries without a differ turned off 2.1's
transfer service, CRI, pod sandboxes and restart monitor on amd64 nodes."""

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from devstack.containerd import (
    CONTAINERD_1_6,
    CONTAINERD_2_1,
    RELEASES,
    SNAPSHOTTER,
    LocalContainerd,
    Release,
    load_shipped,
    local_config,
)
from lazy2dfs.errors import UnavailableError
from tests.support.stack import release_id

TRANSFER = "io.containerd.transfer.v1.local"
# What a node needs from containerd besides lazy2dfs: lazy2dfs must not cost any of them.
NEEDED = {
    CONTAINERD_1_6: {
        ("io.containerd.grpc.v1", "cri"),
        ("io.containerd.snapshotter.v1", "overlayfs"),
    },
    CONTAINERD_2_1: {
        ("io.containerd.snapshotter.v1", "overlayfs"),
        ("io.containerd.transfer.v1", "local"),
        ("io.containerd.grpc.v1", "transfer"),
        ("io.containerd.cri.v1", "images"),
        ("io.containerd.cri.v1", "runtime"),
        ("io.containerd.podsandbox.controller.v1", "podsandbox"),
        ("io.containerd.grpc.v1", "sandbox-controllers"),
        ("io.containerd.monitor.container.v1", "restart"),
        ("io.containerd.grpc.v1", "cri"),
    },
}


def private(release: Release, work: Path) -> dict[str, Any]:
    """The shipped config made private, with CRI on (only plugins that cannot run on this
    machine, such as btrfs and devmapper, are off)."""
    return local_config(
        load_shipped(release), work, work / "containerd.sock", work / "lazy2dfs.sock", cri=True
    )


def without(config: dict[str, Any], settings: Mapping[str, Any]) -> None:
    """Removes from ``config`` every setting ``settings`` makes (tables emptied go too)."""
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            without(config[key], value)
            if config[key]:
                continue
        config.pop(key, None)


def plugin_status(config: Mapping[str, Any], release: Release, work: Path) -> dict[str, str]:
    """``ctr plugins ls``: TYPE ID → STATUS (ok, skip or error)."""
    with LocalContainerd(
        work, work / "lazy2dfs.sock", cri=True, release=release, config=config
    ) as containerd:
        out = containerd.ctr("plugins", "ls")
    rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
    return {f"{row[0]} {row[1]}": row[-1] for row in rows}


@pytest.mark.parametrize("release", RELEASES, ids=release_id)
def test_the_shipped_config_loads_every_plugin_containerd_loads_without_it(
    release: Release, tmp_path: Path
) -> None:
    shipped = load_shipped(release)
    with_lazy2dfs = private(release, tmp_path / "with")
    baseline = private(release, tmp_path / "without")
    without(baseline, {"proxy_plugins": shipped["proxy_plugins"], "plugins": shipped["plugins"]})
    assert SNAPSHOTTER not in str(baseline)

    before = plugin_status(baseline, release, tmp_path / "without")
    after = plugin_status(with_lazy2dfs, release, tmp_path / "with")

    loaded = {plugin for plugin, status in before.items() if status == "ok"}
    assert {" ".join(p) for p in NEEDED[release]} <= loaded
    assert after == {**before, f"io.containerd.snapshotter.v1 {SNAPSHOTTER}": "ok"}
    assert "error" not in before.values()


def test_2_1_refuses_an_unpack_entry_for_a_foreign_platform_without_a_differ(
    tmp_path: Path,
) -> None:
    """The bug the shipped 2.x file had: every entry there names its differ. Without one,
    the entry for the platform this machine is not (amd64 or arm64) breaks the transfer
    service, and the stack refuses to start, quoting containerd."""
    config = private(CONTAINERD_2_1, tmp_path)
    entries = config["plugins"][TRANSFER]["unpack_config"]
    assert entries and all(entry["differ"] == "walking" for entry in entries)
    platforms = {entry["platform"] for entry in entries}
    assert platforms == {"linux/amd64", "linux/arm64"}
    broken = copy.deepcopy(config)
    for entry in broken["plugins"][TRANSFER]["unpack_config"]:
        del entry["differ"]
    with pytest.raises(UnavailableError, match="no matching diff plugins"):
        plugin_status(broken, CONTAINERD_2_1, tmp_path)
