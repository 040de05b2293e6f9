"""What every cold-start benchmark trial needs, so that their figures mean the same thing.

A trial runs on a fresh lazy2dfs daemon and containerd (empty content store, snapshots and
chunk cache) — and, for benchmarks that compare, a fresh upstream stargz or SOCI
snapshotter — after the page cache is dropped, and reaches the registry either on loopback or
through ``devstack.link`` (1 Gbit/s, 20 ms round trip). Bytes fetched are what the
registry's access log says it served (``devstack.registry.Served``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from devstack.containerd import LocalContainerd
from devstack.link import LinkEmulator
from devstack.node import local_node
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from devstack.soci import LocalSoci
from devstack.stargz import LocalStargz

LINK_MBIT, LINK_RTT_MS = 1000, 20
LOOPBACK, EMULATED = "loopback", "1 Gbit/s 20 ms"
LINK_BYTES_PER_SECOND = LINK_MBIT * 1e6 / 8


def drop_page_cache() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def page_cache_drops() -> int:
    """How often anyone dropped the page cache since boot: on a shared machine, other work's
    drops fall inside a measurement too, and this tells which."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        name, value = line.split()
        if name == "drop_pagecache":
            return int(value)
    return 0


def daemon_usage(pid: int) -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    status = Path(f"/proc/{pid}/status").read_text()
    peak_kib = next(
        int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
    )
    return cpu, peak_kib / 1024


@dataclass(frozen=True)
class ColdStack:
    daemon: LocalSnapshotter
    containerd: LocalContainerd
    stargz: LocalStargz | None  # upstream's snapshotter, "stargz" to containerd
    soci: LocalSoci | None = None  # the SOCI snapshotter, "soci" to containerd


@contextmanager
def cold_stack(
    work: Path,
    log_level: str = "warning",
    cri: bool = False,
    mirror_for: Collection[str] = (),
    stargz_binary: Path | None = None,
    soci: Callable[[Path], LocalSoci] | None = None,
    cri_snapshotter: str | None = None,
) -> Iterator[ColdStack]:
    """A fresh daemon and containerd under ``work`` (and the upstream stargz snapshotter, if
    its binary is given; the SOCI snapshotter, if ``soci`` makes one in a directory), after
    the page cache is dropped; ``work`` is removed afterwards, so no trial inherits another's
    content or chunks. ``cri``: with containerd's CRI plugin, pulling into ``cri_snapshotter``
    if given (else lazy2dfs); ``mirror_for``: registry hosts that containerd reaches through
    the daemon's partition mirror (the shipped hosts.toml)."""
    drop_page_cache()
    try:
        with ExitStack() as running:
            stargz = socid = None
            others = {}
            if stargz_binary is not None:
                stargz = running.enter_context(LocalStargz(stargz_binary, work / "sg"))
                others["stargz"] = stargz.address
            if soci is not None:
                socid = running.enter_context(soci(work / "soci"))
                others["soci"] = socid.address
            node = running.enter_context(
                local_node(
                    work,
                    log_level=log_level,
                    cri=cri,
                    mirror_for=mirror_for,
                    other_snapshotters=others,
                    cri_snapshotter=cri_snapshotter,
                )
            )
            yield ColdStack(node.daemon, node.containerd, stargz, socid)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def registry_host(registry: LocalRegistry, link: str) -> Iterator[str]:
    """The host to pull from to get ``link`` (``LOOPBACK`` or ``EMULATED``) to ``registry``."""
    if link == LOOPBACK:
        yield registry.host
        return
    with LinkEmulator(registry.host, LINK_MBIT, LINK_RTT_MS) as emulated:
        yield emulated.host
