"""A fleet on one machine: N nodes, each its own containerd and ``lazy2dfs serve`` with private
state, all pulling through one pull-through mirror from an origin registry behind an emulated
link.

    node 1..N ──loopback──▶ mirror (docker-registry, proxy mode) ──1 Gbit/s, 20 ms──▶ origin

Every node reads one ``hosts.toml`` directory, as a DaemonSet would ship it: the origin is the
``server``, the mirror its one ``host`` (pull, resolve); containerd (``ctr --hosts-dir``), the
daemon (``registry.hosts_dir``) and ``lazy2dfs pull --hosts-dir`` all use it. The nodes reach
the mirror on loopback, the zone's LAN; only the origin is far. The origin is the caller's (it
holds the pushed images across trials); the mirror, the link and the nodes are new for each
fleet, so every fleet starts cold. Bytes leaving the origin and the mirror come from their
access logs (``bytes_sent``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from threading import Lock
from types import TracebackType
from typing import TypeVar

from devstack.containerd import LocalContainerd
from devstack.link import LinkEmulator
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter

T = TypeVar("T")
R = TypeVar("R")


def write_hosts_dir(directory: Path, origin: str, mirror: str | None) -> Path:
    """``<directory>/<origin>/hosts.toml``: ``origin`` (``host:port``) reached through
    ``mirror`` first (if any), then directly; all plain HTTP (loopback). Returns
    ``directory``."""
    host_dir = directory / origin
    host_dir.mkdir(parents=True, exist_ok=True)
    text = f'server = "http://{origin}"\n'
    if mirror is not None:
        text += f'\n[host."http://{mirror}"]\n  capabilities = ["pull", "resolve"]\n'
    (host_dir / "hosts.toml").write_text(text)
    return directory


@dataclass(frozen=True)
class Node:
    """``name`` is unique in the fleet: containers need names no other node uses, because
    runc keeps their state in one directory of the machine (``/run/containerd/runc``)."""

    name: str
    snapshotter: LocalSnapshotter
    containerd: LocalContainerd


class Fleet:
    """``nodes`` nodes under ``workdir`` pulling ``origin``'s images through a new mirror
    (``mirror=False``: straight from the origin, over the same link); ``link`` is (Mbit/s,
    round trip ms) in front of the origin, None for loopback; ``daemon_config`` is added to
    each daemon's configuration file."""

    def __init__(
        self,
        workdir: Path,
        origin: LocalRegistry,
        nodes: int,
        link: tuple[float, float] | None = (1000, 20),
        daemon_config: str = "",
        log_level: str = "warning",
        mirror: bool = True,
    ) -> None:
        self.workdir = workdir
        self.with_mirror = mirror
        self.origin = origin
        self.count = nodes
        self.link = link
        self.daemon_config = daemon_config
        self.log_level = log_level
        self.hosts_dir = workdir / "certs.d"
        self.nodes: list[Node] = []
        self.mirror: LocalRegistry | None = None
        self.emulator: LinkEmulator | None = None
        self._running = ExitStack()
        self._started: list[LocalSnapshotter | LocalContainerd] = []
        self._lock = Lock()

    def __enter__(self) -> Fleet:
        try:
            upstream = self.origin.host
            if self.link is not None:
                mbit, rtt = self.link
                self.emulator = self._running.enter_context(LinkEmulator(upstream, mbit, rtt))
                upstream = self.emulator.host
            if self.with_mirror:
                self.mirror = self._running.enter_context(
                    LocalRegistry(self.workdir / "mirror", proxy_remote=f"http://{upstream}")
                )
                write_hosts_dir(self.hosts_dir, self.origin.host, self.mirror.host)
            else:
                # containerd 1.6 refuses a hosts.toml with a server and no host ("invalid
                # `host` tree") and goes straight to the origin: the link is a host.
                write_hosts_dir(self.hosts_dir, self.origin.host, upstream)
            config = f'[registry]\nhosts_dir = "{self.hosts_dir}"\n{self.daemon_config}'
            self.nodes = self.each(lambda i: self._start_node(f"n{i}", config), range(self.count))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_node(self, name: str, config: str) -> Node:
        where = self.workdir / name
        snapshotter = LocalSnapshotter(where / "s", config=config, log_level=self.log_level)
        with self._lock:
            self._started.append(snapshotter)
        snapshotter.start()
        containerd = LocalContainerd(where / "c", snapshotter.address)
        with self._lock:
            self._started.append(containerd)
        containerd.start()
        return Node(f"{self.workdir.name}-{name}", snapshotter, containerd)

    def each(self, call: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """``call`` on every item at once (one thread each), results in order; the first
        failure is raised once all are done."""
        with ThreadPoolExecutor(max(1, len(items))) as pool:
            return list(pool.map(call, items))

    def stop_mirror(self) -> None:
        """The mirror goes down (its process ends): nodes must go on from the origin."""
        assert self.mirror is not None
        self.mirror.stop()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stops every containerd, then every daemon (at once: a daemon's stop waits for its
        FUSE keeper), then the mirror and the link."""
        try:
            containerds = [p for p in self._started if isinstance(p, LocalContainerd)]
            self.each(lambda c: c.stop(), containerds)
            daemons = [p for p in self._started if isinstance(p, LocalSnapshotter)]
            self.each(lambda d: d.stop(), daemons)
        finally:
            self._running.close()
