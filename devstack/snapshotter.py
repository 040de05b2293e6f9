"""A ``lazy2dfs serve`` child process with a private root and socket."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

import grpc

from devstack.network import PrivateNetwork
from devstack.process import ChildProcess, lazy2dfs_argv
from devstack.service import Service
from lazy2dfs.api import snapshots_pb2_grpc
from lazy2dfs.fuse.session import detach_stale_mount

START_TIMEOUT = 30.0
KEEPER_EXIT_TIMEOUT = 10.0


def keeper_pids(root: Path) -> list[int]:
    """Processes running the FUSE keeper of ``root``."""
    needle = os.fsencode(root / "fuse-keeper.sock")
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if b"lazy2dfs.fuse.keeper" in argv and needle in argv:
            pids.append(int(entry.name))
    return pids


def end_keeper(root: Path) -> None:
    """Ends the FUSE keeper of ``root`` and its mount, which outlive daemons on purpose:
    teardown for tests and the demo, whatever state a test left them in."""
    for pid in keeper_pids(root):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    detach_stale_mount(root / "fuse")
    deadline = time.monotonic() + KEEPER_EXIT_TIMEOUT
    while keeper_pids(root) and time.monotonic() < deadline:
        time.sleep(0.05)


class LocalSnapshotter(Service):
    """Starts the daemon on ``workdir/root`` and ``workdir/lazy2dfs.sock``, with ``config``
    (TOML) as its configuration file; stops it on exit.

    ``restart`` and ``kill`` let tests see what containerd sees across daemon restarts."""

    def __init__(
        self,
        workdir: Path,
        config: str = "",
        log_level: str = "info",
        network: PrivateNetwork | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """``network``: run the daemon in that namespace (its registries are not on
        loopback); its sockets and mounts are everyone's as usual. ``env``: its environment
        (default: this process's), e.g. ``DOCKER_CONFIG`` for its registry credentials."""
        self.network = network
        self.env = env
        self.workdir = workdir
        self.root = workdir / "root"
        self.address = workdir / "lazy2dfs.sock"
        self.config_path = workdir / "config.toml"
        self.config = config
        self.log_level = log_level
        self.process: ChildProcess | None = None

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A killed daemon leaves its socket; readiness is the new daemon's socket appearing.
        self.address.unlink(missing_ok=True)
        self.config_path.write_text(self.config)
        argv = [
            *lazy2dfs_argv(),
            "serve",
            "--root",
            str(self.root),
            "--address",
            str(self.address),
            "--config",
            str(self.config_path),
            "--log-level",
            self.log_level,
        ]
        if self.network is not None:
            argv = self.network.argv(*argv)
        self.process = ChildProcess("lazy2dfs serve", argv, self.workdir / "lazy2dfs.log", self.env)
        self.process.wait_until(self.address.exists, START_TIMEOUT, "serving")
        return self

    def stop(self) -> int:
        """SIGTERM, then ends what outlives a daemon on purpose: the FUSE keeper and its
        mount (kept while containers use it); returns the daemon's exit code."""
        code = self.stop_daemon()
        end_keeper(self.root)
        return code

    def stop_daemon(self) -> int:
        """SIGTERM to the daemon only, as ``systemctl restart`` does (the keeper stays)."""
        code = 0
        if self.process is not None:
            code = self.process.stop()
            self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL to the daemon only, as a crash would (the keeper stays)."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def restart(self) -> None:
        self.stop_daemon()
        self.start()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.address}")

    def stub(self, channel: grpc.Channel) -> snapshots_pb2_grpc.SnapshotsStub:
        return snapshots_pb2_grpc.SnapshotsStub(channel)
