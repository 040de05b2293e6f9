"""A private containerd 1.6+ on loopback: its own root, state, sockets and config.

It knows lazy2dfs as the proxy snapshotter ``lazy2dfs`` and keeps its built-in ``overlayfs`` so
that benchmarks can compare the two in one run. CRI and snapshotters that cannot run here are
disabled, which makes it start in well under a second.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from lazy2dfs.errors import UnavailableError
from lazy2dfs.localstack.process import ChildProcess

START_TIMEOUT = 30.0
CTR_TIMEOUT = 300.0

_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{address}"

[ttrpc]
  address = "{address}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/opt"

[proxy_plugins.lazy2dfs]
  type = "snapshot"
  address = "{snapshotter_address}"
"""


class LocalContainerd:
    """containerd with everything under ``workdir``; ``ctr`` runs against it."""

    def __init__(self, workdir: Path, snapshotter_address: Path) -> None:
        self.workdir = workdir
        self.address = workdir / "containerd.sock"
        self.config_path = workdir / "config.toml"
        self.snapshotter_address = snapshotter_address
        self.process: ChildProcess | None = None

    def start(self) -> LocalContainerd:
        binary = shutil.which("containerd")
        if binary is None:
            raise UnavailableError("containerd is not installed: run 'make deps'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            _CONFIG.format(
                root=self.workdir / "root",
                state=self.workdir / "state",
                address=self.address,
                snapshotter_address=self.snapshotter_address,
            )
        )
        self.address.unlink(missing_ok=True)
        self.process = ChildProcess(
            "containerd",
            [binary, "--config", str(self.config_path), "--log-level", "info"],
            self.workdir / "containerd.log",
        )
        self.process.wait_until(self._answers, START_TIMEOUT, "serving")
        return self

    def _answers(self) -> bool:
        if not self.address.exists():
            return False
        probe = subprocess.run(
            ["ctr", "--address", str(self.address), "version"], capture_output=True, timeout=10
        )
        return probe.returncode == 0

    def ctr(self, *args: str, namespace: str = "default", check: bool = True) -> str:
        """Runs ``ctr`` against this containerd and returns its standard output."""
        argv = ["ctr", "--address", str(self.address), "--namespace", namespace, *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=CTR_TIMEOUT)
        if check and done.returncode != 0:
            raise UnavailableError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}"
            )
        return done.stdout

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def __enter__(self) -> LocalContainerd:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
