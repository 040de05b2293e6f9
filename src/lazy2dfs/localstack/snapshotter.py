"""A ``lazy2dfs serve`` child process with a private root and socket."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import grpc

from lazy2dfs.api import snapshots_pb2_grpc
from lazy2dfs.fuse.session import detach_stale_mount
from lazy2dfs.localstack.process import ChildProcess, lazy2dfs_argv

START_TIMEOUT = 30.0


class LocalSnapshotter:
    """Starts the daemon on ``workdir/root`` and ``workdir/lazy2dfs.sock``, with ``config``
    (TOML) as its configuration file; stops it on exit.

    ``restart`` and ``kill`` let tests see what containerd sees across daemon restarts."""

    def __init__(self, workdir: Path, config: str = "", log_level: str = "info") -> None:
        self.workdir = workdir
        self.root = workdir / "root"
        self.address = workdir / "lazy2dfs.sock"
        self.config_path = workdir / "config.toml"
        self.config = config
        self.log_level = log_level
        self.process: ChildProcess | None = None

    def start(self) -> LocalSnapshotter:
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
        self.process = ChildProcess("lazy2dfs serve", argv, self.workdir / "lazy2dfs.log")
        self.process.wait_until(self.address.exists, START_TIMEOUT, "serving")
        return self

    def stop(self) -> int:
        """SIGTERM; also detaches the FUSE mount a killed daemon left behind."""
        code = 0
        if self.process is not None:
            code = self.process.stop()
            self.process = None
        detach_stale_mount(self.root / "fuse")
        return code

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix:{self.address}")

    def stub(self, channel: grpc.Channel) -> snapshots_pb2_grpc.SnapshotsStub:
        return snapshots_pb2_grpc.SnapshotsStub(channel)

    def __enter__(self) -> LocalSnapshotter:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
