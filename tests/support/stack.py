"""A private registry, lazy2dfs daemon and containerd (1.6 or 2.1) for the end-to-end tests,
always torn down; images are built by the tests and pushed over loopback.

A module fixture with ``params=devstack.containerd.RELEASES, ids=release_id`` runs its tests
once per containerd release, each against its own stack."""

import functools
import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.containerd import CONTAINERD_1_6, CRI_NAMESPACE, LocalContainerd, Release
from devstack.faults import FaultProxy
from devstack.images import BuiltImage, Stock2dfsImage
from devstack.kubelet import Kubelet
from devstack.network import PrivateNetwork
from devstack.node import local_node
from devstack.process import lazy2dfs_argv
from devstack.registry import LocalRegistry
from devstack.snapshotter import LocalSnapshotter
from lazy2dfs.errors import UnavailableError

RECONNECT_TIMEOUT = 30.0


def release_id(release: Release) -> str:
    return f"containerd-{release.name}"


@dataclass
class Stack:
    registry: LocalRegistry
    snapshotter: LocalSnapshotter
    containerd: LocalContainerd
    proxy: FaultProxy | None = None  # in front of the registry, if the test asked for one
    mirror: str | None = None  # the daemon's partition mirror (host:port), if asked for

    def push(self, name: str, image: BuiltImage | Stock2dfsImage) -> str:
        return self.registry.push(name, image)

    def blob_gets(self, digest: str) -> list[int]:
        """Status codes of GET requests the registry served for one blob."""
        return [
            r.status
            for r in self.registry.requests()
            if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")
        ]

    def ctr(self, *args: str) -> str:
        return self.containerd.ctr(*args)

    def run(self, ref: str, name: str, script: str, namespace: str = "default") -> str:
        """A container of ``ref`` on lazy2dfs runs ``script``; its standard output (CRI pulls
        images into ``k8s.io``)."""
        return self.run_command(ref, name, ["/bin/sh", "-c", script], namespace)

    def run_command(
        self,
        ref: str,
        name: str,
        command: Sequence[str],
        namespace: str = "default",
        options: Sequence[str] = (),
    ) -> str:
        """``ctr run`` with ``options`` (mounts, environment) of ``command``; its output."""
        argv = ["run", "--rm", "--snapshotter", "lazy2dfs", *options, ref, name, *command]
        return self.containerd.ctr(*argv, namespace=namespace)

    def cri_pull(self, ref: str) -> str:
        """PullImage as kubelet (and ``crictl pull``) calls it; the image ID CRI answers."""
        with Kubelet(self.containerd.address, self.containerd.workdir / "pods") as kubelet:
            return kubelet.pull_image(ref)

    def restart_snapshotter(self, crash: bool) -> None:
        """Restarts the daemon (``crash``: kill -9 first) and waits until containerd has
        reconnected: its gRPC channel retries with a backoff of about a second. The probe is a
        snapshot prepared and removed: containerd answers a listing from its own database,
        without the daemon, so a listing that succeeds proves nothing."""
        if crash:
            self.snapshotter.kill()
            self.snapshotter.start()
        else:
            self.snapshotter.restart()
        deadline = time.monotonic() + RECONNECT_TIMEOUT
        probe = f"reconnect-probe-{uuid.uuid4().hex[:12]}"
        while True:
            try:
                self.ctr("snapshots", "--snapshotter", "lazy2dfs", "prepare", probe, "")
                break
            except UnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.ctr("snapshots", "--snapshotter", "lazy2dfs", "rm", probe)

    def status(self, *flags: str) -> subprocess.CompletedProcess[str]:
        """``lazy2dfs status``, as a user runs it on the node."""
        return subprocess.run(
            [*lazy2dfs_argv(), "status", "--config", str(self.snapshotter.config_path), *flags],
            capture_output=True,
            text=True,
            timeout=60,
            env=self.containerd.pull_env(),
        )

    def status_json(self) -> dict[str, Any]:
        """``lazy2dfs status --json``, parsed."""
        done = self.status("--json")
        if done.returncode != 0:
            raise UnavailableError(f"lazy2dfs status failed:\n{done.stderr}")
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def remove_containers(self) -> None:
        """Kills what a failed ``ctr run --rm`` or pod may have left: shims outlive containerd,
        and hold their containers' overlay mounts on lazy2dfs's layers."""
        for namespace in (CRI_NAMESPACE, "default"):
            ctr = functools.partial(self.containerd.ctr, namespace=namespace, check=False)
            for task in ctr("tasks", "ls", "--quiet").split():
                ctr("tasks", "rm", "--force", task)
            for container in ctr("containers", "ls", "--quiet").split():
                ctr("containers", "rm", container)

    def daemon_events(self, event: str) -> list[str]:
        """The daemon's log lines for ``event`` (e.g. ``layer mounted lazily``)."""
        log = (self.snapshotter.workdir / "lazy2dfs.log").read_text(errors="replace")
        return [line for line in log.splitlines() if f'event="{event}"' in line]

    def snapshot_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.snapshotter.root / "snapshots").iterdir())


@contextmanager
def private_stack(
    work: Path,
    config: str = "",
    log_level: str = "info",
    proxy: bool = False,
    cri: bool = False,
    release: Release = CONTAINERD_1_6,
    sandbox: BuiltImage | None = None,
    network: PrivateNetwork | None = None,
    mirror: bool = False,
) -> Iterator[Stack]:
    """A stack under ``work`` (keep it short: unix socket names are limited to 108 bytes),
    ``config`` for the daemon; with ``proxy``, a fault proxy in front of the registry (images
    pulled through ``proxy.host`` go through it); with ``cri``, containerd's CRI plugin on;
    ``release``: which containerd; ``sandbox``: CRI's pause image, pushed to the registry and
    named in containerd's config (nothing is pulled from outside); with ``network``, registry
    and daemon in that namespace, the registry not on loopback; with ``mirror``, the
    daemon's partition mirror on, named in containerd's hosts.toml for the registry as
    documented, and the daemon reading the same hosts.toml directory."""
    with ExitStack() as running:
        registry = running.enter_context(LocalRegistry(work / "r", network=network))
        front = running.enter_context(FaultProxy(registry.host)) if proxy else None
        pause = registry.push("k8s/pause:local", sandbox) if sandbox is not None else None
        node = running.enter_context(
            local_node(
                work,
                config,
                log_level,
                cri=cri,
                release=release,
                sandbox_image=pause,
                mirror_for=[registry.host] if mirror else [],
                network=network,
            )
        )
        yield Stack(registry, node.daemon, node.containerd, front, node.mirror)


@contextmanager
def cri_mirror_stack(
    work: Path, release: Release = CONTAINERD_1_6, sandbox: BuiltImage | None = None
) -> Iterator[Stack]:
    """CRI and the partition mirror on; background fetch off, so that every blob GET in the
    registry's log is containerd downloading it or a read fetching a chunk. Containers a
    failed test left are removed."""
    config = "[fetch]\nbackground = false\n"
    with private_stack(
        work, config=config, cri=True, release=release, sandbox=sandbox, mirror=True
    ) as stack:
        try:
            yield stack
        finally:
            stack.remove_containers()
